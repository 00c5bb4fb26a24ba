"""Argument checks of the TrainLoop: a clear error naming the argument, before any work."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch.utils.data import BatchSampler, DataLoader
from torch.utils.data._utils.collate import default_collate, default_convert

from aitoolbox.torchtrain.multi_loss_optim import MultiOptimizer, check_optimizer_like
from aitoolbox.torchtrain.train_loop.components.amp_handler import check_amp_device, validate_use_amp


def validate_init_args(model, train_loader, validation_loader, test_loader, optimizer, criterion,
                       end_auto_eval, use_amp, torch_compile, flags: Optional[Dict[str, Any]] = None) -> None:
    """Check the TrainLoop constructor's arguments.

    ``train_loader`` and ``optimizer`` may be None (a loop built for prediction / evaluation only,
    as in the original aitoolbox); :func:`validate_fit_args` requires them. ``flags``: the
    arguments that must be True or False, by name (``'no'`` would silently count as True).

    Raises:
        TypeError, ValueError: naming the offending argument and the fix.
    """
    if optimizer is not None and not isinstance(optimizer, MultiOptimizer):
        check_optimizer_like(optimizer, "optimizer")
    if isinstance(end_auto_eval, bool):
        pass
    elif not isinstance(end_auto_eval, int) or end_auto_eval < 1:
        raise ValueError(f"end_auto_eval must be True, False or an int >= 1 (evaluate every n-th "
                         f"epoch), got {end_auto_eval!r}.")
    validate_use_amp(use_amp)
    if not torch.cuda.is_available():  # every mode then trains on the CPU, where float16 AMP is refused
        check_amp_device(use_amp, "cpu")
    if not isinstance(torch_compile, (bool, dict)):
        raise TypeError(f"torch_compile must be True/False or a dict of torch.compile arguments, got "
                        f"{type(torch_compile).__name__}.")
    for name, value in (flags or {}).items():
        require_bool(value, name)


def require_bool(value: Any, arg_name: str) -> None:
    """Raise a clear error when a True/False argument got anything else (e.g. ``'no'``, 0)."""
    if not isinstance(value, bool):
        raise TypeError(f"{arg_name} must be True or False, got {value!r} ({type(value).__name__}).")


def _check_loaders(train_loader, validation_loader, test_loader) -> None:
    """Loaders are checked when first used (``fit``, evaluation, prediction), not at construction:
    aitoolbox 1.8 let a TrainLoop hold any object there, and its users' tests build loops that way."""
    for name, loader in (("train_loader", train_loader), ("validation_loader", validation_loader),
                         ("test_loader", test_loader)):
        _check_iterable(loader, name)


def _check_iterable(loader, name: str) -> None:
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
    _check_loaders(loop.train_loader, loop.validation_loader, loop.test_loader)
    _check_can_train(loop.train_loader, loop.optimizer)
    _check_train_length(loop.train_loader)
    _check_eval_lengths(loop.validation_loader, loop.test_loader)
    _check_criterion(loop)
    _check_optimizer_params(loop)


def _check_can_train(train_loader, optimizer) -> None:
    """A loop built for prediction only (no train_loader / optimizer) cannot be fitted."""
    if train_loader is None:
        raise ValueError("train_loader is None: fit() needs a DataLoader of the training set. Pass "
                         "train_loader=DataLoader(...) to the TrainLoop (None is fine for prediction only).")
    if optimizer is None:
        raise ValueError("optimizer is None: fit() needs a torch.optim.Optimizer or a MultiOptimizer. Pass "
                         "optimizer=... to the TrainLoop (None is fine for prediction only).")


def _check_train_length(train_loader) -> None:
    """An empty train loader is refused; one without a length (a stream) is checked per epoch."""
    try:
        num_batches = len(train_loader)
    except TypeError:
        return  # a stream: an epoch is one pass until exhaustion (components/streams.py)
    if num_batches == 0:
        raise ValueError("train_loader yields no batches (empty dataset, or drop_last=True with fewer "
                         "samples than batch_size).")


def require_loader(loader, dataset: str) -> None:
    """Raise a clear error when the loader for ``dataset`` was not given or is not a loader."""
    arg = {"train": "train_loader", "validation": "validation_loader", "test": "test_loader"}[dataset]
    if loader is None:
        raise ValueError(f"No {dataset} data: {arg} is None. Pass {arg}=DataLoader(...) to the "
                         "TrainLoop to evaluate or predict on this set.")
    _check_iterable(loader, arg)


def require_samples(num_samples: int, dataset_info: Optional[dict]) -> None:
    """Raise a clear error when an evaluation saw no samples (the loss would be 0/0)."""
    if num_samples == 0:
        name = (dataset_info or {}).get("type", "given")
        raise ValueError(f"The {name} data loader yielded no samples: cannot compute a loss.")


def is_data_loader(obj) -> bool:
    """Whether ``obj`` is a ``torch.utils.data.DataLoader``."""
    return isinstance(obj, DataLoader)


def _check_eval_lengths(validation_loader, test_loader) -> None:
    """An empty validation / test set would be found only at the first evaluation (0 / 0)."""
    for name, loader in (("validation_loader", validation_loader), ("test_loader", test_loader)):
        if loader is None:
            continue
        dataset = getattr(loader, "dataset", None)
        num_samples = _len_or_none(dataset) if dataset is not None else None
        if num_samples == 0 or _len_or_none(loader) == 0:
            raise ValueError(f"{name} is empty ({'0 samples' if num_samples == 0 else 'no batches'}): "
                             f"evaluating on it would fail after the first epoch. Pass a loader of a "
                             f"non-empty data set, or {name}=None.")


def _len_or_none(obj) -> Optional[int]:
    try:
        return len(obj)
    except TypeError:  # no __len__ (an IterableDataset): nothing to check up front
        return None


def _check_criterion(loop) -> None:
    """``criterion=None`` with a model whose loss is ``criterion(model(*inputs), target)``.

    Only the feeds of aitoolbox are judged (a plain ``nn.Module``, ``TTBasicModel``,
    ``MultiGPUModelWrap``, ``ModelWrap`` with ``BasicModelFeedDefinition``): a ``TTModel`` or a
    feed definition of one's own may compute its loss without the criterion.
    """
    if loop.criterion is not None or not _loss_uses_criterion(loop.model, loop.feed_def):
        return
    raise ValueError(f"criterion is None, but the model ({type(loop.model).__name__}) computes its loss as "
                     "criterion(model(*inputs), target): pass criterion=... to the TrainLoop (e.g. "
                     "nn.CrossEntropyLoss()), or use a TTModel whose get_loss computes the loss itself.")


def _loss_uses_criterion(model, feed_def) -> bool:
    from aitoolbox.torchtrain.data.batch_model_feed_defs import BasicModelFeedDefinition
    from aitoolbox.torchtrain.model import MultiGPUModelWrap, TTBasicModel, TTBasicMultiGPUModel

    if feed_def is not None:
        return type(feed_def).get_loss is BasicModelFeedDefinition.get_loss
    model_type = type(model)
    if isinstance(model, MultiGPUModelWrap):
        return (model_type.get_loss is TTBasicMultiGPUModel.get_loss
                and model_type.forward is MultiGPUModelWrap.forward)
    return isinstance(model, TTBasicModel) and model_type.get_loss is TTBasicModel.get_loss


def _check_optimizer_params(loop) -> None:
    """Every optimizer must update some of the model's (or the criterion's) parameters.

    A partial overlap (fine-tuning a subset) is fine; an optimizer built on another model's
    parameters (e.g. a model re-created after its optimizer) would train nothing.
    """
    owned = {id(p) for p in loop.module.parameters()}
    if isinstance(loop.criterion, torch.nn.Module):
        owned.update(id(p) for p in loop.criterion.parameters())
    for idx, optimizer in enumerate(loop.optimizers):
        params = [p for group in getattr(optimizer, "param_groups", ()) for p in group["params"]]
        if params and not any(id(p) in owned for p in params):
            which = "optimizer" if len(loop.optimizers) == 1 else f"optimizer (MultiOptimizer entry {idx})"
            raise ValueError(f"{which} updates {len(params)} parameter tensor(s), none of which belongs to the "
                             f"model ({type(loop.module).__name__}) or the criterion: it was built on other "
                             "parameters (another model, or a model re-created after the optimizer), so "
                             "training would change nothing. Build it on this model, e.g. "
                             f"{type(optimizer).__name__}(model.parameters(), ...).")


def validate_strategy_kwargs(gpu_mode: str, kwargs: Mapping[str, Any], use_amp: Any = False) -> None:
    """Check the device arguments of ``fit`` that the strategies would take silently.

    Args:
        gpu_mode: the TrainLoop's ``gpu_mode``.
        kwargs: ``fit``'s strategy keyword arguments.
        use_amp: the TrainLoop's ``use_amp`` (float16 cannot run on the CPU ranks of ``on_gpu=False``).

    Raises:
        TypeError, ValueError: ``on_gpu`` not a bool; DataParallel device ids that do not exist;
            float16 AMP on CPU ranks.
    """
    if gpu_mode in ("ddp", "fsdp") and "on_gpu" in kwargs:
        require_bool(kwargs["on_gpu"], "on_gpu")
        if not kwargs["on_gpu"]:
            check_amp_device(use_amp, "cpu", f"the CPU (gpu_mode={gpu_mode!r} with on_gpu=False)")
    if gpu_mode == "dp" and kwargs.get("dp_model_args") is not None:
        dp_args = kwargs["dp_model_args"]
        if not isinstance(dp_args, Mapping):
            raise TypeError(f"dp_model_args must be a dict of nn.DataParallel arguments (device_ids, "
                            f"output_device, dim), got {type(dp_args).__name__}.")
        devices = list(dp_args.get("device_ids") or [])
        if dp_args.get("output_device") is not None:
            devices.append(dp_args["output_device"])
        check_cuda_devices(devices, "dp_model_args")


def check_cuda_devices(devices: Sequence, arg_name: str) -> None:
    """Raise when a CUDA device index (or ``torch.device``) in ``devices`` is not visible."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for device in devices:
        index = device.index if isinstance(device, torch.device) else device
        is_cuda = not isinstance(device, torch.device) or device.type == "cuda"
        if isinstance(index, bool) or not isinstance(index, int) or (is_cuda and not 0 <= index < count):
            raise ValueError(f"{arg_name} names CUDA device {device!r}, but {count} CUDA device(s) are "
                             f"visible (indices 0..{count - 1}): pass existing device ids"
                             f"{'' if count else ', or no dp_model_args on a machine without GPUs'}.")


def may_yield_empty_batches(loader) -> bool:
    """Whether ``loader`` can yield a batch of 0 samples (checked per batch then).

    A DataLoader batching with torch's own BatchSampler (or batching an IterableDataset) and the
    default collate never does, so the usual loader costs no check per step.
    """
    if not isinstance(loader, DataLoader) or loader.collate_fn not in (default_collate, default_convert):
        return True
    batch_sampler = loader.batch_sampler
    if batch_sampler is None:
        return loader.batch_size is None  # unbatched: the dataset's items are the batches
    return type(batch_sampler) is not BatchSampler


def first_tensor(batch: Any) -> Optional[torch.Tensor]:
    """The first tensor of a (nested) batch, or None."""
    if isinstance(batch, torch.Tensor):
        return batch
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        found = first_tensor(item)
        if found is not None:
            return found
    return None


def require_batch_samples(batch: Any, loader_name: str, batch_idx: int, epoch: Optional[int] = None) -> None:
    """Raise a clear error for a batch of 0 samples (its mean loss would be a silent NaN).

    Args:
        batch: the batch.
        loader_name: e.g. ``'train_loader'``.
        batch_idx: index of the batch (in its epoch).
        epoch: index of the epoch, for training batches.
    """
    tensor = first_tensor(batch)
    if tensor is not None and tensor.dim() > 0 and tensor.shape[0] == 0:
        where = f"batch {batch_idx}" + ("" if epoch is None else f" of epoch {epoch + 1}")
        raise ValueError(f"{loader_name} yielded an empty batch ({where} has 0 samples): its loss would be "
                         "NaN. Check the batch sampler / collate_fn, which must not produce empty batches.")


def explain_batch_error(feed_def, batch: Any, error: BaseException) -> None:
    """Raise a clear error when a batch's shape cannot fit the model's feed, else return.

    Called only when computing a batch's loss raised: a dict batch fed to a plain ``nn.Module``
    (fed as ``(*inputs, target)``) fails deep inside the model (``linear()`` gets the keys).
    """
    from aitoolbox.torchtrain.data.batch_model_feed_defs import BasicModelFeedDefinition

    if isinstance(batch, Mapping) and isinstance(feed_def, BasicModelFeedDefinition):
        raise TypeError(f"The batch is a dict (keys {list(batch)[:5]}), but the model is a plain nn.Module, "
                        "fed (*inputs, target) batches: yield (inputs, target) tuples from the loader, or "
                        "make the model a TTModel (or a ModelWrap with a feed definition) whose get_loss / "
                        "get_predictions read the dict.") from error


def check_callbacks(loop, callbacks: Sequence) -> List:
    """Check a run's callbacks before training: no instance twice, watched metrics produced.

    Returns:
        The watched metrics that can only be confirmed after the first epoch (see
        :func:`aitoolbox.torchtrain.callbacks.metric_watch.check_monitored_metrics`).

    Raises:
        ValueError: a callback registered twice, or one watching a metric nothing writes.
    """
    from aitoolbox.torchtrain.callbacks.metric_watch import check_monitored_metrics
    from aitoolbox.torchtrain.train_loop.components.callback_handler import check_no_duplicates

    check_no_duplicates(callbacks)
    return check_monitored_metrics(loop, callbacks)
