"""Training of PyTorch models: the TrainLoop, the model contract, callbacks and schedulers.

Re-exports, as the original aitoolbox did, the TrainLoops, the models, the parallel wrappers,
``MultiLoss`` / ``MultiOptimizer`` and ``BasicDataset``; each is imported on first use.
"""
from aitoolbox.utils.lazy_import import exports, lazy_module_attributes

_EXPORTS = exports({
    "aitoolbox.torchtrain.model": ["TTModel", "TTBasicModel", "TTBasicMultiGPUModel", "ModelWrap",
                                   "MultiGPUModelWrap"],
    "aitoolbox.torchtrain.parallel": ["TTDataParallel", "TTDistributedDataParallel"],
    "aitoolbox.torchtrain.train_loop.train_loop": ["TrainLoop"],
    "aitoolbox.torchtrain.train_loop.train_loop_tracking": ["TrainLoopCheckpoint", "TrainLoopEndSave",
                                                            "TrainLoopCheckpointEndSave"],
    "aitoolbox.torchtrain.data.batch_model_feed_defs": ["AbstractModelFeedDefinition"],
    "aitoolbox.torchtrain.multi_loss_optim": ["MultiLoss", "MultiOptimizer"],
    "aitoolbox.torchtrain.loss_sum": ["LossSum"],
    "aitoolbox.torchtrain.data.dataset": ["BasicDataset", "ListDataset"],
})

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_module_attributes(globals(), _EXPORTS)
