"""Data loading under ``gpu_mode='ddp'``: sharded training loaders and exact evaluation loaders.

Training: each ``DataLoader`` is copied with a ``DistributedSampler`` (every other setting kept),
shuffled iff the original sampler was a ``RandomSampler``, seeded like the original; a loader
generator of its own gives each rank's copy a generator of the rank's own (workers' seeds).

Evaluation: rank ``r`` reads the samples ``r, r + world_size, ...`` in order, *without* the padding
duplicates that ``DistributedSampler`` adds; the results are put back into data-set order with
:func:`dataset_order`.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, List, NamedTuple, Optional, Sequence

import torch
from torch.utils.data import (DataLoader, DistributedSampler, IterableDataset, RandomSampler, Sampler,
                              SequentialSampler)

from aitoolbox.torchtrain.data.sharded_stream import ShardedIterable
from aitoolbox.torchtrain.train_loop.components.reproducibility import rank_stream_seed
from aitoolbox.torchtrain.train_loop.components.data_loading import (
    copy_loader, eval_loader, has_custom_batch_sampler)

logger = logging.getLogger("aitoolbox")


def _shardable(loader) -> bool:
    """Whether ``loader`` is a DataLoader whose samples the strategy can split across ranks."""
    return (isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset)
            and not has_custom_batch_sampler(loader) and hasattr(loader.dataset, "__len__"))


def sampler_seed(loader) -> int:
    """The seed of the generator shuffling ``loader`` (sampler's or loader's), else torch's initial seed."""
    for gen in (getattr(getattr(loader, "sampler", None), "generator", None), getattr(loader, "generator", None)):
        if isinstance(gen, torch.Generator):
            return gen.initial_seed()
    return torch.initial_seed()


def distributed_train_loader(loader, rank: int, world_size: int, seed: int):
    """A copy of the training ``loader`` that yields this rank's share of every epoch.

    A ``SequentialSampler`` / ``RandomSampler`` becomes a ``DistributedSampler`` (shuffled iff it
    was random, with ``seed``); any other sampler is wrapped in :class:`ShardedSampler`. A loader
    that already has a ``DistributedSampler``, a custom ``batch_sampler`` or an iterable data set is
    returned unchanged (it must shard by rank itself).
    """
    if isinstance(getattr(loader, "sampler", None), DistributedSampler):
        return loader
    if isinstance(getattr(loader, "dataset", None), ShardedIterable):
        loader.dataset.set_rank(rank, world_size)  # split by the wrapper, in each worker
        return loader
    if isinstance(getattr(loader, "dataset", None), IterableDataset):
        logger.warning("gpu_mode='ddp': the train loader reads an IterableDataset (%s) that is not split across "
                       "the ranks: every rank trains on the same items. Wrap it to split it across ranks and "
                       "workers: DataLoader(aitoolbox.torchtrain.data.sharded_stream.ShardedIterable(dataset), "
                       "...), or split it by torch.distributed.get_rank() in its __iter__.",
                       type(loader.dataset).__name__)
        return loader
    if not _shardable(loader):
        logger.warning("gpu_mode='ddp': the train loader (%s) cannot be sharded automatically (custom "
                       "batch_sampler or iterable data set); every rank uses it as it is.", type(loader).__name__)
        return loader
    sampler = loader.sampler
    if isinstance(sampler, (RandomSampler, SequentialSampler)):
        if isinstance(sampler, RandomSampler) and (sampler.replacement or sampler._num_samples is not None):
            logger.warning("gpu_mode='ddp': RandomSampler(replacement / num_samples) is replaced by a "
                           "DistributedSampler that shuffles the whole data set once per epoch.")
        shard = DistributedSampler(loader.dataset, num_replicas=world_size, rank=rank,
                                   shuffle=isinstance(sampler, RandomSampler), seed=seed)
    else:
        shard = ShardedSampler(sampler, rank, world_size)
    copy = copy_loader(loader, shard)
    copy.generator = rank_generator(loader.generator, rank)
    return copy


def rank_generator(generator: Optional[torch.Generator], rank: int) -> Optional[torch.Generator]:
    """The generator of rank ``rank``'s copy of a training loader whose generator is ``generator``.

    A DataLoader draws its workers' base seed from its generator at every epoch; the same
    generator on every rank would give every rank's workers the same seeds (the same random
    augmentations). Rank 0 keeps ``generator``; rank ``r > 0`` gets a new one seeded from its
    initial seed and ``r`` (``rank_stream_seed``). The sampler of the copy (``DistributedSampler``
    with the broadcast seed, or the original sampler inside :class:`ShardedSampler`) does not
    draw from it, so the shuffling order stays the same on every rank. Its state is saved with
    the rank's random states and restored into the copy on resume (``DDPStrategy``).
    """
    if rank == 0 or not isinstance(generator, torch.Generator):
        return generator
    own = torch.Generator(device=generator.device)
    own.manual_seed(rank_stream_seed(generator.initial_seed(), rank))
    return own


class ShardedSampler(Sampler):
    """Rank ``rank``'s share of the indices another sampler yields (padded to equal length).

    The wrapped sampler must yield the same sequence on every rank, e.g. by giving it a seeded
    generator. ``set_epoch`` is passed on to it.

    Args:
        sampler: the original sampler.
        rank: this process's rank.
        world_size: number of ranks.
    """

    def __init__(self, sampler: Sampler, rank: int, world_size: int):
        self.sampler, self.rank, self.world_size = sampler, rank, world_size

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.world_size)

    def __iter__(self):
        indices = list(self.sampler)
        total = len(self) * self.world_size
        if indices and len(indices) < total:
            indices = (indices * math.ceil(total / len(indices)))[:total]
        return iter(indices[self.rank:total:self.world_size])

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch on to the wrapped sampler when it takes one."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class ExactShardSampler(Sampler):
    """Evaluation indices of one rank: every ``world_size``-th, in order, no padding.

    Args:
        base: the loader's own sampler when it is a custom one (its sequence is split), else None
            (the indices ``0 .. num_samples - 1`` are split).
        num_samples: number of indices in the whole sequence.
        rank: this process's rank.
        world_size: number of ranks.
        solo: returns True while this rank evaluates alone; it then yields every index.
    """

    def __init__(self, base: Optional[Sampler], num_samples: int, rank: int, world_size: int,
                 solo: Callable[[], bool]):
        self.base, self.num_samples = base, num_samples
        self.rank, self.world_size, self.solo = rank, world_size, solo

    def _indices(self) -> Sequence[int]:
        indices = range(self.num_samples) if self.base is None else list(self.base)
        return indices if self.solo() else indices[self.rank::self.world_size]

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        if self.solo():
            return self.num_samples
        return len(range(self.rank, self.num_samples, self.world_size))


class EvalPlan(NamedTuple):
    """How one evaluation's results combine across ranks."""

    #: the ranks read disjoint shares (results are reduced / gathered), else each read everything
    sharded: bool
    #: size of the evaluated sequence (None when unknown)
    num_samples: Optional[int]


class PlannedEvalLoader:
    """An evaluation loader that reports its :class:`EvalPlan` to the strategy when iterated.

    Exposes ``dataset``, ``sampler``, ``generator`` and ``len()`` of the loader it wraps.
    """

    def __init__(self, loader, plan: EvalPlan, report: Callable[[EvalPlan], None]):
        self.loader, self.plan, self._report = loader, plan, report

    def __iter__(self):
        self._report(self.plan)
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def dataset(self):
        return getattr(self.loader, "dataset", None)

    @property
    def sampler(self):
        return getattr(self.loader, "sampler", None)

    @property
    def generator(self):
        return getattr(self.loader, "generator", None)


class SplitStreamEvalLoader(PlannedEvalLoader):
    """The evaluation loader of a ``ShardedIterable``: split, except while the rank works alone."""

    def __init__(self, loader, plan: EvalPlan, report: Callable[[EvalPlan], None], solo: Callable[[], bool]):
        super().__init__(loader, plan, report)
        self._solo = solo

    def __iter__(self):
        self.loader.dataset.split = not self._solo()  # read by the workers started just below
        return super().__iter__()


def exact_eval_loader(loader, rank: int, world_size: int, solo: Callable[[], bool],
                      report: Callable[[EvalPlan], None]) -> PlannedEvalLoader:
    """The loader to evaluate ``loader`` with on this rank.

    Shardable loaders with at least ``world_size`` samples are split exactly across the ranks, and
    so is a stream wrapped in ``ShardedIterable`` (the loss sums and sample counts of the ranks
    are added up); any other loader is read whole by every rank (a replicated evaluation, no
    collectives).
    """
    if isinstance(getattr(loader, "dataset", None), ShardedIterable):
        loader.dataset.set_rank(rank, world_size)
        return SplitStreamEvalLoader(loader, EvalPlan(True, None), report, solo)
    if _shardable(loader):
        custom = not isinstance(loader.sampler, (RandomSampler, SequentialSampler, DistributedSampler))
        base = loader.sampler if custom else None
        num_samples = len(base) if custom else len(loader.dataset)
        if num_samples >= world_size:
            sampler = ExactShardSampler(base, num_samples, rank, world_size, solo)
            return PlannedEvalLoader(copy_loader(loader, sampler, drop_last=False),
                                     EvalPlan(True, num_samples), report)
    whole = eval_loader(loader) if isinstance(loader, DataLoader) else loader
    dataset = getattr(whole, "dataset", None)
    return PlannedEvalLoader(whole, EvalPlan(False, len(dataset) if hasattr(dataset, "__len__") else None),
                             report)


def shard_counts(num_samples: int, world_size: int) -> List[int]:
    """Number of evaluation samples of each rank under :class:`ExactShardSampler`."""
    return [len(range(rank, num_samples, world_size)) for rank in range(world_size)]


def dataset_order(counts: Sequence[int]) -> List[int]:
    """Positions, in the rank-by-rank concatenation of the results, of samples ``0, 1, 2, ...``.

    Sample ``j`` was read by rank ``j % world_size`` as its ``j // world_size``-th sample.
    """
    world_size = len(counts)
    offsets = [sum(counts[:rank]) for rank in range(world_size)]
    return [offsets[j % world_size] + j // world_size for j in range(sum(counts))]


def padding_batches(loader, plan: EvalPlan, rank: int, world_size: int) -> int:
    """How many batches this rank's exact share (``loader``) has fewer than the longest share.

    Under FSDP every forward pass is a collective, so every rank must run as many evaluation
    batches as the others: the shorter shares make up the difference with batches whose results
    are discarded. 0 when the evaluation is not sharded (every rank reads everything).
    """
    batch_size = getattr(loader, "batch_size", None)
    if not plan.sharded or not batch_size:
        return 0
    counts = shard_counts(plan.num_samples, world_size)
    return math.ceil(max(counts) / batch_size) - math.ceil(counts[rank] / batch_size)
