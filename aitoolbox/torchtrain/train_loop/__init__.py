"""The TrainLoop and its experiment-tracking variants."""
from aitoolbox.torchtrain.train_loop.train_loop import TrainLoop
from aitoolbox.torchtrain.train_loop.train_loop_tracking import (
    TrainLoopCheckpoint, TrainLoopCheckpointEndSave, TrainLoopEndSave)

__all__ = ["TrainLoop", "TrainLoopCheckpoint", "TrainLoopEndSave", "TrainLoopCheckpointEndSave"]
