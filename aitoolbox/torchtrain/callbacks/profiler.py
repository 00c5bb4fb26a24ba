"""``ProfilerCallback``: ``torch.profiler`` over a window of training steps.

The window is ``torch.profiler.schedule(wait, warmup, active, repeat)`` counted in training
batches from the start of ``fit``: ``wait`` batches untouched, ``warmup`` profiled and thrown
away, ``active`` recorded; ``repeat`` such cycles. Each recorded cycle writes

- ``<folder>/trace_rank<r>_step<n>.json``: a Chrome trace (``chrome://tracing``, Perfetto), and
- ``<folder>/tensorboard/rank<r>.<time>.pt.trace.json``: the same in the file layout of the
  TensorBoard profiler plugin (``tensorboard --logdir <folder>/tensorboard``),

where ``<folder>`` is ``save_dir`` or ``profiler/`` in the experiment folder. Only the main process
profiles (``ranks='main'``) or every rank (``ranks='all'``, one file per rank).
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Iterable, List, Optional

import torch

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.utils.io import atomic_write_path


class ProfilerCallback(AbstractCallback):
    """Profile a window of training steps with ``torch.profiler``.

    Args:
        wait: batches skipped before each cycle.
        warmup: batches profiled but discarded (the profiler's own start-up).
        active: batches recorded.
        repeat: number of cycles.
        save_dir: folder of the traces; None: ``profiler/`` in the TrainLoop's experiment folder.
        ranks: ``'main'`` (rank 0 only) or ``'all'``.
        activities: ``torch.profiler.ProfilerActivity`` values; None: CPU, plus CUDA when training on CUDA.
        record_shapes, profile_memory, with_stack: as in ``torch.profiler.profile``.

    Attributes:
        trace_files: the Chrome trace files written so far.
        profiler: the ``torch.profiler.profile`` while it runs.

    Raises:
        ValueError: bad window or ``ranks`` (at construction); no folder to write to (at the start
            of training).
    """

    def __init__(self, wait: int = 1, warmup: int = 1, active: int = 3, repeat: int = 1,
                 save_dir: Optional[str] = None, ranks: str = "main",
                 activities: Optional[Iterable] = None, record_shapes: bool = False,
                 profile_memory: bool = False, with_stack: bool = False):
        if ranks not in ("main", "all"):
            raise ValueError(f"ranks must be 'main' (rank 0 only) or 'all', got {ranks!r}.")
        super().__init__("ProfilerCallback", execution_order=1050, device_idx_execution=0 if ranks == "main" else None)
        bounds = (("wait", wait, 0), ("warmup", warmup, 0), ("active", active, 1), ("repeat", repeat, 1))
        for name, value, low in bounds:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")
        self.wait, self.warmup, self.active, self.repeat = wait, warmup, active, repeat
        self.save_dir = None if save_dir is None else os.path.expanduser(os.fspath(save_dir))
        self.ranks = ranks
        self.activities = None if activities is None else list(activities)
        self.profile_kwargs = dict(record_shapes=record_shapes, profile_memory=profile_memory, with_stack=with_stack)
        self.trace_files: List[str] = []
        self.profiler = None
        self.folder: Optional[str] = None
        self._steps_left = 0

    def on_train_begin(self):
        loop = self.train_loop_obj
        store = getattr(loop, "experiment_store", None)
        if self.save_dir is None and store is None:
            raise ValueError("ProfilerCallback has no folder for its traces: pass save_dir=..., or use a tracking "
                             "TrainLoop (TrainLoopCheckpoint / TrainLoopEndSave / TrainLoopCheckpointEndSave).")
        self.folder = self.save_dir or os.path.join(store.ensure_created(), "profiler")
        os.makedirs(os.path.join(self.folder, "tensorboard"), exist_ok=True)
        self._rank = getattr(loop.strategy, "rank", 0)
        activities = self.activities or [torch.profiler.ProfilerActivity.CPU] + (
            [torch.profiler.ProfilerActivity.CUDA] if loop.device.type == "cuda" else [])
        schedule = torch.profiler.schedule(wait=self.wait, warmup=self.warmup, active=self.active, repeat=self.repeat)
        self.profiler = torch.profiler.profile(activities=activities, schedule=schedule,
                                               on_trace_ready=self._write_trace, **self.profile_kwargs)
        self._steps_left = (self.wait + self.warmup + self.active) * self.repeat
        self.profiler.start()

    def _write_trace(self, prof) -> None:
        path = os.path.join(self.folder, f"trace_rank{self._rank}_step{prof.step_num}.json")
        with atomic_write_path(path) as tmp_path:
            prof.export_chrome_trace(tmp_path)
        self.trace_files.append(path)
        # a profile is exported once: the plugin's copy is the same file under the plugin's naming
        plugin_name = f"rank{self._rank}.{time.time_ns() // 1_000_000}.pt.trace.json"
        plugin_path = os.path.join(self.folder, "tensorboard", plugin_name)
        with atomic_write_path(plugin_path) as tmp_path:
            shutil.copyfile(path, tmp_path)

    def on_batch_end(self):
        if self.profiler is None:
            return
        self.profiler.step()
        self._steps_left -= 1
        if self._steps_left <= 0:
            self._stop()

    def _stop(self) -> None:
        profiler, self.profiler = self.profiler, None
        if profiler is not None:
            profiler.stop()

    def on_train_end(self):
        self._stop()

    def on_train_crash(self, exception: BaseException):
        try:
            self._stop()
        except Exception:  # must not hide the training error
            pass


__all__ = ["ProfilerCallback"]
