"""The TrainLoop and its experiment-tracking variants (imported on first use).

Lazy, so that importing one of the loop's components (e.g. the callback handler, which every
callback module needs) does not import the whole TrainLoop and the callbacks it uses.
"""
from aitoolbox.utils.lazy_import import exports, lazy_module_attributes

_EXPORTS = exports({
    "aitoolbox.torchtrain.train_loop.train_loop": ["TrainLoop"],
    "aitoolbox.torchtrain.train_loop.train_loop_tracking": ["TrainLoopCheckpoint", "TrainLoopEndSave",
                                                            "TrainLoopCheckpointEndSave"],
})

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_module_attributes(globals(), _EXPORTS)
