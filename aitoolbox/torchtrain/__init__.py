"""Training of PyTorch models: the TrainLoop, the model contract, callbacks and schedulers."""
