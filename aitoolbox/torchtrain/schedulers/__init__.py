"""Learning-rate schedulers as TrainLoop callbacks."""
