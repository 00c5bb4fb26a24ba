"""Import of optional dependencies with an error that names the extra to install.

Every module that needs an optional package (boto3, matplotlib, tensorboard, wandb,
google-cloud-storage, torchmetrics, evaluate ...) imports it through :func:`import_optional`
inside the code that needs it, so that ``import aitoolbox`` stays lean and a missing package
fails with the command that fixes it.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional


def missing_extra_message(module: str, extra: str, feature: Optional[str] = None) -> str:
    """The message of the ImportError raised when ``module`` (from ``extra``) is missing."""
    user = f"{feature} needs" if feature else "This feature needs"
    return (f"{user} the optional package '{module.split('.')[0]}', which is not installed: "
            f'pip install "aitoolbox[{extra}]"')


def import_optional(module: str, extra: str, feature: Optional[str] = None) -> ModuleType:
    """Import ``module``, or raise an ImportError naming ``pip install "aitoolbox[<extra>]"``.

    Args:
        module: the module to import, e.g. ``'wandb'`` or ``'torch.utils.tensorboard'``.
        extra: the aitoolbox extra that installs it, e.g. ``'wandb'``.
        feature: what needs it (e.g. the class name), for the message.

    Returns:
        The imported module.

    Raises:
        ImportError: ``module`` (or something it imports) is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(missing_extra_message(module, extra, feature)) from error
