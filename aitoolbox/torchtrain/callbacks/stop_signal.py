"""Stop training cleanly on SIGTERM / SIGINT / SIGUSR1: exact checkpoint, bounded upload wait.

See ``docs/fault_tolerance.md``. The checkpoint callbacks (``ModelCheckpoint`` and the
tracking TrainLoops that checkpoint) add a :class:`StopOnSignal` with the defaults to every
``fit`` unless one is given; pass your own to change its settings.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from typing import Any, Optional, Sequence

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.train_loop.components.preemption import (
    FORCE_STOP_MIN_INTERVAL_S, TrainingStopped, signal_name)

logger = logging.getLogger("aitoolbox")

#: runs after the savers (1000): it reports what they wrote and uploaded
STOP_ORDER = 2000


def _signal_number(value: Any) -> int:
    """``signal.SIGTERM`` for ``'SIGTERM'`` / ``'TERM'`` / 15 / ``signal.SIGTERM``.

    Raises:
        ValueError: not a signal of this platform.
    """
    if isinstance(value, str):
        name = value.upper() if value.upper().startswith("SIG") else "SIG" + value.upper()
        number = getattr(signal, name, None)
        if not isinstance(number, int):
            raise ValueError(f"StopOnSignal: signals has {value!r}, which is no signal on this platform; "
                             "use names like 'SIGTERM', 'SIGINT', 'SIGUSR1'.")
        return int(number)
    if isinstance(value, int) and not isinstance(value, bool):
        signal.Signals(value)  # ValueError for an unknown number
        return int(value)
    raise ValueError(f"StopOnSignal: signals must hold signal names or numbers, got {value!r}.")


class StopOnSignal(AbstractCallback):
    """On a stop signal, finish the current batch, write an exact checkpoint and exit.

    The signal handler only records the signal. At the next batch boundary (under DDP: the same
    batch on every rank, agreed by one small all-reduce per batch on a CPU group) ``fit`` raises
    :class:`~aitoolbox.torchtrain.train_loop.components.preemption.TrainingStopped`; on its way
    out the callbacks' ``on_train_crash`` hooks run: the checkpoint callbacks write a checkpoint
    with the content of a mid-epoch iteration checkpoint (a bit-exact resume point) and wait for
    pending cloud uploads at most ``upload_timeout`` seconds, the other callbacks close their
    files. Then one line is logged (signal, position, checkpoint, uploads not done, exit status)
    and, with ``slurm_requeue=True`` under SLURM, the job is requeued. ``TrainingStopped`` is a
    ``SystemExit``: uncaught, the script exits with ``exit_code`` (default ``128 + signal``: 143
    for SIGTERM, 130 for SIGINT, 138 for SIGUSR1).

    A second signal, at least 1 s after the first, stops at once: it raises ``KeyboardInterrupt``
    where the run is (the local crash checkpoint is still written, uploads are not waited for), so
    the script ends as on a Ctrl-C (exit status 130). A second delivery within 1 s is taken as the
    same event (a terminal's Ctrl-C reaches a DDP parent and its ranks, and the parent forwards it).

    Args:
        signals: the signals that stop training (names or numbers).
        upload_timeout: seconds the stop waits at most for pending cloud uploads.
        slurm_requeue: run ``scontrol requeue $SLURM_JOB_ID`` after the checkpoint (only when
            ``SLURM_JOB_ID`` is set and ``scontrol`` exists; main process only).
        exit_code: the exit status of the stopped script; None: ``128 + signal number``.

    Raises:
        ValueError: an unknown signal, or a negative ``upload_timeout``.
    """

    def __init__(self, signals: Sequence = ("SIGTERM", "SIGINT"), upload_timeout: float = 20.0,
                 slurm_requeue: bool = False, exit_code: Optional[int] = None):
        super().__init__("Stop on signal", execution_order=STOP_ORDER)
        if isinstance(signals, (str, int)):
            signals = (signals,)
        self.signals = tuple(dict.fromkeys(_signal_number(s) for s in signals))
        if isinstance(upload_timeout, bool) or not isinstance(upload_timeout, (int, float)) or upload_timeout < 0:
            raise ValueError(f"StopOnSignal: upload_timeout must be a number of seconds >= 0, got {upload_timeout!r}.")
        if exit_code is not None and (isinstance(exit_code, bool) or not isinstance(exit_code, int)
                                      or not 0 <= exit_code <= 255):
            raise ValueError(f"StopOnSignal: exit_code must be None or an int in 0..255, got {exit_code!r}.")
        self.upload_timeout = float(upload_timeout)
        self.slurm_requeue = bool(slurm_requeue)
        self.exit_code = exit_code
        #: the signal received and not acted on yet (None: none)
        self.requested: Optional[int] = None
        #: a second signal arrived: the run stops at once (KeyboardInterrupt)
        self.forced = False
        self._first_signal_at = 0.0
        self._previous: dict = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_previous"] = {}  # handlers of the parent process do not travel to DDP ranks
        return state

    # ------------------------------------------------------------------ hooks
    def on_train_loop_registration(self):
        self.train_loop_obj._stop_control = self

    def on_train_begin(self):
        self.requested, self.forced = None, False
        self._install()

    def on_train_end(self):
        self._restore()

    def on_train_crash(self, exception: BaseException):
        self._restore()
        if isinstance(exception, TrainingStopped) and self.train_loop_obj.is_main_process():
            self._report(exception)
            if self.slurm_requeue:
                requeue_slurm_job()

    # ------------------------------------------------------------------ signal handling
    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.debug("StopOnSignal: fit runs outside the main thread; signal handlers cannot be installed.")
            return
        for signum in self.signals:
            if signum not in self._previous:
                self._previous[signum] = signal.signal(signum, self._handle)

    def _restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        now = time.monotonic()
        if self.requested is not None:
            if now - self._first_signal_at >= FORCE_STOP_MIN_INTERVAL_S:
                self._restore()
                self.forced = True  # the checkpoint callbacks then wait for no upload
                raise KeyboardInterrupt(f"second {signal_name(signum)}: stopping at once")
            return  # the same event delivered twice (see FORCE_STOP_MIN_INTERVAL_S)
        self.requested, self._first_signal_at = signum, now
        loop = self.train_loop_obj
        if loop is not None and loop.strategy.world_size == 1:
            # One process: nothing to agree on, and the loop checks early_stop after every batch already.
            loop._stop_request = signum
            loop.early_stop = True
        # Under DDP the strategy's per-batch all-reduce turns ``requested`` into the agreed stop.

    # ------------------------------------------------------------------ report
    def _report(self, stop: TrainingStopped) -> None:
        loop = self.train_loop_obj
        epoch, iteration, total = stop.position or (loop.epoch, loop.iteration, loop.total_iteration_idx)
        try:
            epoch_len = len(loop.train_loader)
        except TypeError:
            epoch_len = "?"
        where = f"epoch {epoch + 1}, batch {iteration}/{epoch_len} ({total} batches in all)"
        saved = (f"checkpoint {stop.checkpoint}" if stop.checkpoint else
                 "no checkpoint written (no checkpoint callback: add ModelCheckpoint or use TrainLoopCheckpoint)")
        uploads = (f"{len(stop.not_uploaded)} upload(s) NOT done within {stop.upload_timeout:g}s: "
                   f"{stop.not_uploaded}" if stop.not_uploaded else "no upload pending")
        logger.warning("Stopped by %s at %s: %s; %s; exit status %s.", stop.signal_name, where, saved,
                       uploads, stop.code)


def with_default_stop(callbacks: Optional[Sequence], handler=None) -> list:
    """``callbacks`` plus a default :class:`StopOnSignal` when a callback asks for one.

    Checkpoint callbacks set ``stop_on_signal = True``; a StopOnSignal already given (in
    ``callbacks`` or the handler's cache) is used instead of the default.
    """
    callbacks = list(callbacks or [])
    every = callbacks + list(getattr(handler, "callbacks_cache", ()) or ())
    if any(isinstance(cb, StopOnSignal) for cb in every):
        return callbacks
    if any(getattr(cb, "stop_on_signal", False) is True for cb in every):
        callbacks.append(StopOnSignal())
    return callbacks


def requeue_slurm_job() -> bool:
    """``scontrol requeue $SLURM_JOB_ID`` when running under SLURM; True when it succeeded."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        logger.info("slurm_requeue=True but SLURM_JOB_ID is not set: not running under SLURM, nothing requeued.")
        return False
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        logger.error("slurm_requeue=True but scontrol is not on PATH: job %s not requeued.", job_id)
        return False
    try:
        result = subprocess.run([scontrol, "requeue", job_id], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        logger.error("scontrol requeue %s failed: %s", job_id, error)
        return False
    if result.returncode != 0:
        logger.error("scontrol requeue %s failed (status %d): %s", job_id, result.returncode,
                     (result.stderr or result.stdout).strip())
        return False
    logger.warning("SLURM job %s requeued.", job_id)
    return True


__all__ = ["StopOnSignal", "TrainingStopped", "requeue_slurm_job", "with_default_stop"]
