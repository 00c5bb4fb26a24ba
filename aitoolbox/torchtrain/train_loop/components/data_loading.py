"""Copies of DataLoaders with another sampler, keeping every other setting of the original."""
from __future__ import annotations

import inspect
from typing import Optional

import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler

_LOADER_ARGS = [p for p in inspect.signature(DataLoader.__init__).parameters
                if p not in ("self", "dataset", "batch_size", "shuffle", "sampler", "batch_sampler",
                             "drop_last")]


def loader_kwargs(loader: DataLoader) -> dict:
    """The settings of ``loader`` (workers, collate_fn, pin_memory, generator, ...) as kwargs.

    ``batch_size``, ``drop_last``, ``shuffle`` and the samplers are left out: the copy decides them.
    """
    kwargs = {name: getattr(loader, name) for name in _LOADER_ARGS if hasattr(loader, name)}
    if kwargs.get("num_workers", 0) == 0:
        # These settings are only valid (and only kept by DataLoader) with worker processes.
        kwargs.pop("prefetch_factor", None)
        kwargs["persistent_workers"] = False
        kwargs.pop("multiprocessing_context", None)
    return kwargs


def loader_batch_size(loader: DataLoader) -> Optional[int]:
    """The loader's batch size, also when it was given through a ``BatchSampler``."""
    if loader.batch_size is not None:
        return loader.batch_size
    return getattr(loader.batch_sampler, "batch_size", None)


def copy_loader(loader: DataLoader, sampler, drop_last: Optional[bool] = None) -> DataLoader:
    """A copy of ``loader`` that draws indices from ``sampler``.

    Args:
        loader: the original loader.
        sampler: the index sampler of the copy.
        drop_last: override the original's ``drop_last``.

    Returns:
        A new DataLoader with the same dataset, batch size and settings.
    """
    batch_sampler = loader.batch_sampler
    drop = loader.drop_last if drop_last is None else drop_last
    return DataLoader(loader.dataset, batch_size=loader_batch_size(loader), sampler=sampler,
                      drop_last=drop if batch_sampler is not None else False, **loader_kwargs(loader))


def has_custom_batch_sampler(loader: DataLoader) -> bool:
    """Whether ``loader`` got a user-defined ``batch_sampler`` (which cannot be re-created)."""
    from torch.utils.data import BatchSampler
    return loader.batch_sampler is not None and type(loader.batch_sampler) is not BatchSampler


def eval_loader(loader: DataLoader) -> DataLoader:
    """The loader to evaluate / predict with: the data set in order, nothing dropped.

    A shuffled (``RandomSampler``) or ``drop_last`` loader is copied with a ``SequentialSampler``;
    any other loader is used as it is.
    """
    if not isinstance(loader, DataLoader) or has_custom_batch_sampler(loader):
        return loader
    if isinstance(loader.sampler, RandomSampler) or loader.drop_last:
        return copy_loader(loader, SequentialSampler(loader.dataset), drop_last=False)
    return loader


def _generators(loader) -> list:
    return [getattr(getattr(loader, "sampler", None), "generator", None), getattr(loader, "generator", None)]


def loader_generator_states(loader) -> list:
    """States of the generators that shuffle ``loader`` and seed its workers (None: global RNG)."""
    return [g.get_state() if isinstance(g, torch.Generator) else None for g in _generators(loader)]


def set_loader_generator_states(loader, states: list) -> None:
    """Restore the states returned by :func:`loader_generator_states`."""
    for gen, state in zip(_generators(loader), states):
        if isinstance(gen, torch.Generator) and state is not None:
            gen.set_state(state)


def expected_num_samples(loader) -> Optional[int]:
    """Number of samples one pass over ``loader`` is expected to yield, or None when unknown.

    The length of its sampler (a sharded evaluation loader's sampler counts this rank's share),
    else of its data set. None for an iterable data set, whose ``__len__`` is at best a hint, and
    for a DataLoader without automatic batching (``batch_size=None``: its items may be batches).
    An estimate for preallocating results: a custom batch sampler or a data set whose
    ``__len__`` is wrong can make the real number differ.
    """
    dataset = getattr(loader, "dataset", None)
    unbatched = isinstance(loader, DataLoader) and loader.batch_sampler is None
    if unbatched or isinstance(dataset, IterableDataset):
        return None
    for source in (getattr(loader, "sampler", None), dataset):
        try:
            return len(source)
        except (TypeError, NotImplementedError):  # None, or no usable __len__
            continue
    return None
