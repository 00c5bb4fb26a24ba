"""The TrainLoop's collaborators: one concern each (device strategy, AMP, callbacks, caching, ...)."""
