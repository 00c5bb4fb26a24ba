"""``ShardedIterable``: an ``IterableDataset`` split across DDP ranks and DataLoader workers.

A map-style data set is split across the ranks by the DDP strategy's ``DistributedSampler``. A
stream has no indices to split, so every rank (and every worker process of a rank's loader) would
read the same items: a duplicate of the data on every rank. Wrap the stream to split it::

    train_loader = DataLoader(ShardedIterable(MyStream()), batch_size=32, num_workers=2)

Item ``i`` of the stream (in the order one pass yields them) goes to shard ``i % num_shards``,
where the shards are ``rank * num_workers + worker_id`` over ``world_size * num_workers``: every
item is read by exactly one worker of one rank, and with ``num_workers=0`` rank ``r`` reads items
``r, r + world_size, ...`` (the order in which evaluation results are put back together). Each
reader still iterates the whole stream and skips the items of the others; a stream that can seek
(shards of files) is faster split in its own ``__iter__`` - then it needs no wrapper.

The DDP strategy tells the wrapper its rank (``set_rank``) in every rank; outside a DDP run (or
while a rank evaluates alone) it yields every item. A mid-epoch resume replays the stream's start
(the wrapper has no ``state_dict()``: a saved position would not keep the shards aligned).
"""
from __future__ import annotations

import itertools
from typing import Iterator

from torch.utils.data import IterableDataset, get_worker_info


class ShardedIterable(IterableDataset):
    """Split ``dataset`` across ranks and workers, without duplicates.

    Args:
        dataset: any iterable data set (``IterableDataset``, or an object with ``__iter__``).
    """

    def __init__(self, dataset):
        self.dataset = dataset
        self.rank, self.world_size = 0, 1
        #: False: yield every item (set while a rank evaluates a data set alone)
        self.split = True

    def set_rank(self, rank: int, world_size: int) -> None:
        """This process's rank and the number of ranks (the DDP strategy calls it in every rank)."""
        self.rank, self.world_size = rank, world_size

    def shard(self) -> tuple:
        """``(index, count)`` of the shard this reader (rank, worker) takes."""
        info = get_worker_info()
        num_workers, worker_id = (info.num_workers, info.id) if info is not None else (1, 0)
        if not self.split:
            return worker_id, num_workers
        return self.rank * num_workers + worker_id, self.world_size * num_workers

    def __iter__(self) -> Iterator:
        index, count = self.shard()
        items = iter(self.dataset)
        return items if count == 1 else itertools.islice(items, index, None, count)
