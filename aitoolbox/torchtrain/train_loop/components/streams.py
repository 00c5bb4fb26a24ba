"""Training from a loader without a length: an ``IterableDataset``, a generator, a stream.

The loop chooses this path once per ``fit`` (only when ``len(train_loader)`` fails); a loader
with a length keeps the plain per-batch path. An epoch is one pass until the loader is
exhausted. The end of the epoch is known one batch ahead: :meth:`StreamState.batches` holds the
next batch while the current one trains, so that the last accumulation window closes on the
last batch, as with a known-length loader.

Resuming a checkpoint taken in the middle of a stream's epoch:

* a loader with ``state_dict()`` / ``load_state_dict()`` (e.g. torchdata's
  ``StatefulDataLoader``), or a data set with them read in the main process
  (``num_workers=0``), is put back at the saved position: nothing is replayed;
* any other stream is opened again and the batches already trained on are read and skipped,
  which resumes exactly when the stream yields the same batches in the same order each pass.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Dict, Iterator, Optional

#: marks the end of the loader's iterator
_END = object()


def has_length(loader) -> bool:
    """Whether ``len(loader)`` works (a DataLoader over an ``IterableDataset`` may not have one)."""
    try:
        len(loader)
    except TypeError:
        return False
    return True


def state_source(loader) -> Optional[Any]:
    """What holds the stream's position: the loader, or its data set when read in-process; or None.

    A data set read by worker processes lives in copies in the workers: its ``state_dict()`` in
    the main process does not move, so only a loader-level state (torchdata's
    ``StatefulDataLoader``) counts then.
    """
    if _stateful(loader):
        return loader
    dataset = getattr(loader, "dataset", None)
    if _stateful(dataset) and getattr(loader, "num_workers", 0) == 0:
        return dataset
    return None


def _stateful(obj) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


class StreamState:
    """The state of the current epoch's pass over a length-less loader.

    Args:
        loader: the training loader.
    """

    def __init__(self, loader):
        self.source = state_source(loader)
        #: whether the loader ran out in this epoch (else ``num_iterations`` cut the epoch short)
        self.exhausted = False
        #: positions (batches consumed) -> the source's ``state_dict()`` there; the last two only
        self._positions: Dict[int, Any] = {}
        #: a saved position to resume from, set by a checkpoint load: ``(iteration, state)``
        self.pending: Optional[tuple] = None
        self._agree = None  # under DDP / FSDP: the strategy's all_ranks(flag)

    def batches(self, loop, batches: Iterator, cap: float = math.inf) -> Iterator:
        """Yield at most ``cap`` batches of ``batches``, knowing the last one before it trains.

        Before the last batch of the epoch is yielded, ``loop._epoch_len`` is set to its index
        + 1, so that ``should_execute_optimizer_update`` closes the accumulation window on it.
        At most one batch beyond the current one is held.

        Under DDP / FSDP the ranks agree, for every batch, whether all of them still have one
        (one small all-reduce): the epoch ends on every rank with the shortest rank's last batch,
        so no rank waits in a gradient all-reduce that the others never enter. The batches that
        longer ranks hold beyond it are not trained on in that epoch.
        """
        self.exhausted = False
        self._agree = loop.strategy.all_ranks if loop.strategy.world_size > 1 else None
        first = loop.iteration
        current = self._next(batches, loop.iteration)
        if current is _END:
            self._check_not_empty(loop, first)
            return
        while True:
            following = self._next(batches, loop.iteration + 1)
            if following is _END or loop.iteration + 1 - first >= cap:
                del following  # peeked only to learn whether the pass ended
                loop._epoch_len = loop.iteration + 1
                yield current
                return
            yield current
            current = following

    def _next(self, batches: Iterator, consumed: int) -> Any:
        """The next batch, or ``_END`` when this loader (under DDP: any rank's) has no more."""
        self._remember(consumed)
        batch = next(batches, _END)
        ended = batch is _END if self._agree is None else not self._agree(batch is not _END)
        if ended:
            self.exhausted = True
            return _END
        return batch

    def _check_not_empty(self, loop, first: int) -> None:
        if first == 0:  # an empty pass would repeat forever under num_iterations
            raise ValueError(f"train_loader yielded no batches in epoch {loop.epoch + 1}"
                             f"{'' if self._agree is None else ' on some rank'}: a stream must yield at least "
                             "one batch per pass (check the data set's __iter__; an iterator object can be read "
                             "only once - give a re-iterable loader).")

    def _remember(self, consumed: int) -> None:
        if self.source is None:
            return
        self._positions = {k: v for k, v in self._positions.items() if k >= consumed - 1}
        self._positions[consumed] = copy.deepcopy(self.source.state_dict())

    def position_state(self, iteration: int) -> Optional[Any]:
        """The source's state after ``iteration`` batches of this epoch, if it was recorded."""
        return self._positions.get(iteration)

    def resume(self, loop) -> Optional[Iterator]:
        """A fresh iterator at the saved position of a loaded checkpoint, or None (then replay)."""
        pending, self.pending = self.pending, None
        if pending is None or self.source is None or pending[0] != loop.iteration:
            return None
        self.source.load_state_dict(pending[1])
        return iter(loop.train_loader)
