"""The TrainLoop and its experiment-tracking variants."""
from aitoolbox.torchtrain.train_loop.train_loop import TrainLoop

__all__ = ["TrainLoop"]
