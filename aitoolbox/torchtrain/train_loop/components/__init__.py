"""The TrainLoop's collaborators: one concern each (AMP, callbacks, caching, ...);
the device strategies are in :mod:`aitoolbox.torchtrain.train_loop.strategies`."""
