"""aitoolbox: a PyTorch training loop that is exact, fast and complete.

The main entry point is :class:`~aitoolbox.torchtrain.train_loop.train_loop.TrainLoop`.
As in the original aitoolbox, this package re-exports the public names of
:mod:`aitoolbox.torchtrain`, :mod:`aitoolbox.torchtrain.callbacks` and :mod:`aitoolbox.experiment`.
Each name is imported on first use, so ``import aitoolbox`` loads no optional dependency (boto3,
matplotlib, tensorboard, wandb, google-cloud-storage, torchmetrics) and not even torch.
"""
from aitoolbox.utils.lazy_import import lazy_module_attributes

__version__ = "0.1.0"


def _collect_exports() -> dict:
    import aitoolbox.experiment as experiment
    import aitoolbox.torchtrain as torchtrain
    import aitoolbox.torchtrain.callbacks as callbacks

    names = {}
    for package in (torchtrain, callbacks, experiment):
        names.update(package._EXPORTS)
    return names


_EXPORTS = _collect_exports()

__all__ = list(_EXPORTS) + ["__version__"]

__getattr__, __dir__ = lazy_module_attributes(globals(), _EXPORTS)
