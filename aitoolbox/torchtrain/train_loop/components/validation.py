"""Argument checks of the TrainLoop: a clear error naming the argument, before any work."""
from __future__ import annotations

from typing import Optional

import torch
from torch.utils.data import DataLoader

from aitoolbox.torchtrain.multi_loss_optim import MultiOptimizer
from aitoolbox.torchtrain.train_loop.components.amp_handler import validate_use_amp


def validate_init_args(model, train_loader, validation_loader, test_loader, optimizer, criterion,
                       end_auto_eval, use_amp, torch_compile) -> None:
    """Check the TrainLoop constructor's arguments.

    ``train_loader`` and ``optimizer`` may be None (a loop built for prediction / evaluation only,
    as in the original aitoolbox); :func:`validate_fit_args` requires them.

    Raises:
        TypeError, ValueError: naming the offending argument and the fix.
    """
    _check_loaders(train_loader, validation_loader, test_loader)
    if optimizer is not None and not isinstance(optimizer, (torch.optim.Optimizer, MultiOptimizer)):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or a MultiOptimizer, got "
                        f"{type(optimizer).__name__}.")
    if isinstance(end_auto_eval, bool):
        pass
    elif not isinstance(end_auto_eval, int) or end_auto_eval < 1:
        raise ValueError(f"end_auto_eval must be True, False or an int >= 1 (evaluate every n-th "
                         f"epoch), got {end_auto_eval!r}.")
    validate_use_amp(use_amp)
    if not isinstance(torch_compile, (bool, dict)):
        raise TypeError(f"torch_compile must be True/False or a dict of torch.compile arguments, got "
                        f"{type(torch_compile).__name__}.")


def _check_loaders(train_loader, validation_loader, test_loader) -> None:
    for name, loader in (("train_loader", train_loader), ("validation_loader", validation_loader),
                         ("test_loader", test_loader)):
        if loader is not None and not hasattr(loader, "__iter__"):
            raise TypeError(f"{name} must be a torch.utils.data.DataLoader (or an iterable of "
                            f"batches), got {type(loader).__name__}.")


def validate_fit_args(loop, num_epochs, num_iterations, callbacks, grad_accumulation) -> None:
    """Check ``fit``'s arguments against the loop.

    Raises:
        TypeError, ValueError: naming the offending argument and the fix.
    """
    for name, value in (("num_epochs", num_epochs), ("num_iterations", num_iterations)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}.")
    if (num_epochs > 0) == (num_iterations > 0):
        raise ValueError("Give exactly one of num_epochs and num_iterations (a positive int), got "
                         f"num_epochs={num_epochs}, num_iterations={num_iterations}.")
    if not isinstance(grad_accumulation, int) or isinstance(grad_accumulation, bool) or grad_accumulation < 1:
        raise ValueError(f"grad_accumulation must be an int >= 1, got {grad_accumulation!r}.")
    if callbacks is not None and not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"callbacks must be a list of AbstractCallback objects, got "
                        f"{type(callbacks).__name__}.")
    _check_can_train(loop.train_loader, loop.optimizer)
    _check_train_length(loop.train_loader)


def _check_can_train(train_loader, optimizer) -> None:
    """A loop built for prediction only (no train_loader / optimizer) cannot be fitted."""
    if train_loader is None:
        raise ValueError("train_loader is None: fit() needs a DataLoader of the training set. Pass "
                         "train_loader=DataLoader(...) to the TrainLoop (None is fine for prediction only).")
    if optimizer is None:
        raise ValueError("optimizer is None: fit() needs a torch.optim.Optimizer or a MultiOptimizer. Pass "
                         "optimizer=... to the TrainLoop (None is fine for prediction only).")


def _check_train_length(train_loader) -> None:
    try:
        num_batches = len(train_loader)
    except TypeError:
        raise ValueError("train_loader has no length (len(train_loader) fails, e.g. an "
                         "IterableDataset without __len__): define __len__ on the dataset so that "
                         "epochs and accumulation windows are known.") from None
    if num_batches == 0:
        raise ValueError("train_loader yields no batches (empty dataset, or drop_last=True with fewer "
                         "samples than batch_size).")


def require_loader(loader, dataset: str) -> None:
    """Raise a clear error when the loader for ``dataset`` was not given."""
    if loader is None:
        arg = {"train": "train_loader", "validation": "validation_loader", "test": "test_loader"}[dataset]
        raise ValueError(f"No {dataset} data: {arg} is None. Pass {arg}=DataLoader(...) to the "
                         "TrainLoop to evaluate or predict on this set.")


def require_samples(num_samples: int, dataset_info: Optional[dict]) -> None:
    """Raise a clear error when an evaluation saw no samples (the loss would be 0/0)."""
    if num_samples == 0:
        name = (dataset_info or {}).get("type", "given")
        raise ValueError(f"The {name} data loader yielded no samples: cannot compute a loss.")


def is_data_loader(obj) -> bool:
    """Whether ``obj`` is a ``torch.utils.data.DataLoader``."""
    return isinstance(obj, DataLoader)
