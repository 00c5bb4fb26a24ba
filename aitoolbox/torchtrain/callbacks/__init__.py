"""TrainLoop callbacks: hook in at fixed points of the training loop."""
