"""aitoolbox: a PyTorch training loop that is exact, fast and complete.

The main entry point is :class:`~aitoolbox.torchtrain.train_loop.train_loop.TrainLoop`.
Optional dependencies (boto3 for S3, matplotlib for plots, tensorboard) are imported only by the
code that needs them.
"""
from aitoolbox.torchtrain.model import ModelWrap, TTBasicModel, TTModel
from aitoolbox.torchtrain.multi_loss_optim import MultiLoss, MultiOptimizer
from aitoolbox.torchtrain.train_loop import TrainLoop

__version__ = "0.1.0"

__all__ = ["TrainLoop", "TTModel", "TTBasicModel", "ModelWrap", "MultiLoss", "MultiOptimizer",
           "__version__"]
