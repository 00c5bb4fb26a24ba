"""Stopping a run on a signal (preemption): the request, the exception, and the exit status.

A signal handler may run between any two bytecodes of the training loop, so it only records the
request (see :class:`~aitoolbox.torchtrain.callbacks.stop_signal.StopOnSignal`). The loop acts on
it at the next batch boundary: it raises :class:`TrainingStopped` there, so that the callbacks'
``on_train_crash`` hooks run with a state that is exact (the batch is complete): the checkpoint
callbacks write an exact checkpoint instead of a crash checkpoint and wait for the uploads for
a bounded time. ``TrainingStopped`` is a ``SystemExit``: a script that does not catch it ends with
the documented exit status (``128 + signal number``, as a shell reports a process killed by that
signal: 143 for SIGTERM, 130 for SIGINT, 138 for SIGUSR1).

Nothing here imports ``torch.distributed``: the DDP strategy agrees on the request across ranks.
"""
from __future__ import annotations

import signal
from typing import List, Optional

#: a second signal at least this many seconds after the first stops at once. Shorter gaps are one
#: event delivered twice (a terminal Ctrl-C reaches the DDP parent and its ranks, and the parent
#: forwards it to them too).
FORCE_STOP_MIN_INTERVAL_S = 1.0


def signal_name(signum: int) -> str:
    """``'SIGTERM'`` for 15, and so on (the number as text for an unknown signal)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def default_exit_code(signum: int) -> int:
    """``128 + signum``: the status a shell reports for a process killed by that signal."""
    return 128 + int(signum)


class TrainingStopped(SystemExit):
    """Training stopped at a batch boundary because the process received a stop signal.

    Raised by ``fit`` after the exact checkpoint was written and the uploads were waited for.
    It is a ``SystemExit``, so that an uncaught one ends the script with :attr:`code` (by default
    ``128 + signal number``) without a traceback; catch it to do something else.

    Attributes:
        code: the exit status.
        signum: the signal's number; ``signal_name`` its name (``'SIGTERM'``).
        upload_timeout: seconds the stop waits at most for pending cloud uploads.
        checkpoint: local path of the checkpoint written at the stop (None: no checkpoint callback).
        not_uploaded: cloud keys whose upload had not completed when the wait ended.
        position: ``(epoch, batches done in it, total batches done)`` at the stop.
    """

    def __init__(self, signum: int, exit_code: Optional[int] = None, upload_timeout: float = 20.0):
        code = default_exit_code(signum) if exit_code is None else int(exit_code)
        super().__init__(code)
        self.signum = int(signum)
        self.signal_name = signal_name(signum)
        self.upload_timeout = float(upload_timeout)
        self.checkpoint: Optional[str] = None
        self.not_uploaded: List[str] = []
        self.position: Optional[tuple] = None

    def __str__(self) -> str:
        return f"training stopped by {self.signal_name} (exit status {self.code})"

    def __reduce__(self):
        # Travels from a DDP rank to the parent: keep what the parent reports.
        return _rebuild_stopped, (self.signum, self.code, self.upload_timeout, self.checkpoint,
                                  list(self.not_uploaded), self.position)


def _rebuild_stopped(signum, code, upload_timeout, checkpoint, not_uploaded, position) -> TrainingStopped:
    stop = TrainingStopped(signum, code, upload_timeout)
    stop.checkpoint, stop.not_uploaded, stop.position = checkpoint, not_uploaded, position
    return stop


def stop_exception(loop) -> TrainingStopped:
    """The :class:`TrainingStopped` for the request that ``loop`` agreed on (``loop._stop_request``)."""
    control = getattr(loop, "_stop_control", None)
    exit_code = getattr(control, "exit_code", None)
    upload_timeout = getattr(control, "upload_timeout", 20.0)
    stop = TrainingStopped(loop._stop_request, exit_code, upload_timeout)
    stop.position = (loop.epoch, loop.iteration, loop.total_iteration_idx)
    return stop
