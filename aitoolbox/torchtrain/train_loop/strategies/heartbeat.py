"""Which rank stopped answering when a collective times out.

A collective that times out raises on the ranks that waited, not on the rank that kept them
waiting: with rank 1 stopped (``SIGSTOP``, a debugger, a machine swapping, a hung data-loader
worker), rank 0 raises gloo's ``Timed out waiting 5000ms for recv operation`` and the run's error
is rank 0's. To name the rank at fault, every rank of a DDP / FSDP run keeps a heartbeat in the
run's rendezvous store: a daemon thread writes ``<count> <epoch> <iteration>`` under
``aitoolbox/heartbeat/<rank>`` every :func:`beat_interval` seconds. A rank that waits inside a
collective keeps beating (the collective releases the GIL); a stopped, frozen or vanished process
does not.

When a rank's collective times out, :meth:`Heartbeat.diagnose` reads every rank's heartbeat
twice, :data:`WATCH_BEATS` intervals apart, and :func:`explain_timeout` turns the result into the
error: the ranks whose count did not move are named as not responding; when every rank still
beats, the error says so (a rank works longer than ``timeout`` alone, or the ranks wait in
different places) with the position of each rank.

The heartbeat costs one small store write per rank every few seconds, from a thread, and nothing
per training step. Under NCCL a timed-out collective usually ends the process from NCCL's
watchdog instead of raising in Python; such a run is not diagnosed here.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

logger = logging.getLogger("aitoolbox")

KEY = "aitoolbox/heartbeat/{}"
#: intervals between the two reads of :meth:`Heartbeat.diagnose`
WATCH_BEATS = 2.5
#: seconds a read of the store may take during a diagnosis (its host may be the frozen rank)
READ_LIMIT_S = 5.0

Position = Callable[[], Tuple[int, int]]


def beat_interval(timeout: float) -> float:
    """Seconds between beats: a tenth of the collective ``timeout``, from 0.5 to 5 s."""
    return min(5.0, max(0.5, timeout / 10.0))


def is_collective_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective (or store) operation that waited past the process group's timeout."""
    text = str(exc).lower()
    return (isinstance(exc, RuntimeError) and not isinstance(exc, RankTimeoutError)
            and any(marker in text for marker in ("timed out", "socket timeout", "wait timeout")))


class RankTimeoutError(RuntimeError):
    """A collective timed out; the message names the ranks that stopped answering."""


class Heartbeat:
    """This rank's heartbeat in ``store``, and the reading of everyone's.

    Args:
        store: the run's ``torch.distributed`` store (every rank's keys are visible to every rank).
        rank: this process's global rank.
        world_size: number of ranks.
        interval: seconds between beats.
        position: returns this rank's ``(epoch, iteration)`` for the beat.
    """

    def __init__(self, store, rank: int, world_size: int, interval: float, position: Position):
        self.store, self.rank, self.world_size, self.interval = store, rank, world_size, interval
        self.position = position
        self._count = 0
        self._stopped = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "Heartbeat":
        """Write the first beat now (the key exists before training starts), then beat from a thread."""
        self._beat()
        self._thread = threading.Thread(target=self._run, name=f"aitoolbox-heartbeat-{self.rank}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating (the thread ends within one interval; it is a daemon in any case)."""
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self._beat()
            except Exception:  # pylint: disable=broad-except  # the store's host is gone: the run is ending
                logger.debug("rank %d: heartbeat write failed", self.rank, exc_info=True)
                return

    def _beat(self) -> None:
        self._count += 1
        epoch, iteration = self.position()
        self.store.set(KEY.format(self.rank), f"{self._count} {epoch} {iteration}")

    def read(self) -> Optional[Dict[int, Tuple[int, int, int]]]:
        """Every rank's last beat ``(count, epoch, iteration)`` (ranks without a beat left out).

        None when the store does not answer within :data:`READ_LIMIT_S`.
        """
        result: List[Optional[dict]] = [None]

        def read_all():
            beats = {}
            for rank in range(self.world_size):
                key = KEY.format(rank)
                if self.store.check([key]):
                    count, epoch, iteration = (int(v) for v in self.store.get(key).decode().split())
                    beats[rank] = (count, epoch, iteration)
            result[0] = beats

        reader = threading.Thread(target=read_all, name="aitoolbox-heartbeat-read", daemon=True)
        reader.start()
        reader.join(READ_LIMIT_S)
        return result[0]

    def diagnose(self) -> Tuple[Optional[List[int]], Dict[int, Tuple[int, int]]]:
        """``(ranks that did not beat over WATCH_BEATS intervals, {rank: (epoch, iteration)})``.

        The first item is None when the store did not answer (its host is then the likely culprit).
        """
        first = self.read()
        if first is None:
            return None, {}
        time.sleep(WATCH_BEATS * self.interval)
        second = self.read()
        if second is None:
            return None, {}
        silent = [r for r in range(self.world_size) if r != self.rank and (r not in second or second[r] == first.get(r))]
        return silent, {r: beat[1:] for r, beat in second.items()}


def explain_timeout(heartbeat: Heartbeat, timeout: float, mode: str) -> str:
    """The error of a collective that timed out on this rank, naming the ranks that stopped answering."""
    me = heartbeat.rank
    head = f"gpu_mode='{mode}': a cross-rank operation on rank {me} waited longer than timeout={timeout:g} s."
    silent, positions = heartbeat.diagnose()
    where = "; ".join(f"rank {r} at epoch {e}, iteration {i}" for r, (e, i) in sorted(positions.items()))
    if silent is None:
        return (f"{head} The run's rendezvous store did not answer either, so the process that hosts it has "
                "stopped: with the default env:// set-up that is rank 0 (or the launcher: the parent process, "
                "torchrun's agent).")
    watched = f"{WATCH_BEATS * heartbeat.interval:g} s"
    if silent:
        names = ", ".join(str(r) for r in silent)
        plural = "s" if len(silent) > 1 else ""
        return (f"{head} Rank{plural} {names} stopped answering: {'their' if plural else 'its'} heartbeat did "
                f"not move in {watched} of watching (every rank beats every {heartbeat.interval:g} s), so the "
                "process is stopped (SIGSTOP, a debugger), frozen (swapping, a hung data-loader worker, a C call "
                f"holding the GIL) or gone; rank {me} only waited for {'them' if plural else 'it'}. Positions at the last heartbeats: {where}.")
    return (f"{head} Every rank is alive (all heartbeats moved in {watched}), so none is frozen: one rank "
            "worked alone for longer than the timeout (raise fit(..., timeout=) for long single-rank work such "
            f"as saving or evaluating on rank 0), or the ranks wait in different operations. Positions: {where}.")
