"""``ThroughputMonitor``: samples / batches / tokens per second, FLOPs per batch and MFU.

At every epoch end it writes into the training history (so the epoch's summary line shows them
and a ``LoggerCallback`` sends them to the loggers):

- ``samples_per_s``, ``batches_per_s`` (batches of all ranks; steps per second are
  ``batches_per_s`` / number of ranks) and, with ``count_tokens``, ``tokens_per_s``: global (all
  ranks): under DDP / FSDP each rank trains an equal share (``DistributedSampler``), so the
  global rate is this rank's times the number of ranks; no collective is needed;
- ``flops_per_batch``: the floating-point operations of one training step (forward, backward,
  optimizer) of this process, counted once, on the first batch, with
  ``torch.utils.flop_counter.FlopCounterMode`` (matrix multiplications and convolutions; that
  batch is left out of the timing, as counting slows it down);
- ``mfu``: model FLOPs utilisation, ``flops_per_batch * batches per second per device / peak``,
  when the device's peak is given (``peak_flops``) or known (a few CUDA devices, dense bf16).

The time of an epoch runs from its start (data loading included) to its last batch's end (on
CUDA the device is synchronised there, once per epoch).
"""
from __future__ import annotations

import time
from typing import Any, Callable, List, Optional

import torch

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.train_loop.components.evaluation import batch_size_of

#: dense bf16 / fp16 tensor-core peaks (FLOP/s) of common CUDA devices, by a part of their name
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
              "V100": 125e12, "T4": 65e12, "4090": 165e12, "3090": 71e12}
HISTORY_KEYS = ["samples_per_s", "batches_per_s", "tokens_per_s", "flops_per_batch", "mfu"]


def device_peak_flops(device: torch.device) -> Optional[float]:
    """The known dense bf16 peak of a CUDA ``device`` (FLOP/s), else None."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS.items() if key in name), None)


class ThroughputMonitor(AbstractCallback):
    """Measure training throughput and model FLOPs utilisation per epoch.

    Args:
        count_tokens: ``fn(batch) -> int``, the tokens in a training batch; None: no tokens/s.
        count_samples: ``fn(batch) -> int``; None: the leading dimension of the batch's first tensor.
        measure_flops: count the FLOPs of one training step (the first batch) with ``FlopCounterMode``.
        peak_flops: the peak FLOP/s of one device, for ``mfu``; None: looked up for known CUDA
            devices (no ``mfu`` elsewhere).
        execution_order: callback execution order (before the callbacks that read the history).

    Attributes:
        flops_per_batch: the counted FLOPs (None until counted).
        last: the values recorded at the latest epoch end.
        last_counts: what they were computed from: global ``samples`` and ``batches``, ``seconds``.
    """

    def __init__(self, count_tokens: Optional[Callable[[Any], int]] = None,
                 count_samples: Optional[Callable[[Any], int]] = None, measure_flops: bool = True,
                 peak_flops: Optional[float] = None, execution_order: int = -60):
        super().__init__("ThroughputMonitor", execution_order=execution_order)
        for name, fn in (("count_tokens", count_tokens), ("count_samples", count_samples)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be a function fn(batch) -> int, got {type(fn).__name__}.")
        if peak_flops is not None and not peak_flops > 0:
            raise ValueError(f"peak_flops must be > 0 (FLOP/s of one device), got {peak_flops!r}.")
        self.count_tokens, self.count_samples = count_tokens, count_samples or batch_size_of
        self.measure_flops, self.peak_flops = measure_flops, peak_flops
        self.flops_per_batch: Optional[int] = None
        self.last: dict = {}
        self.last_counts: dict = {}
        self._flop_mode = None
        self._reset_epoch()

    def produced_history_metrics(self) -> List[str]:
        return list(HISTORY_KEYS)

    def _reset_epoch(self) -> None:
        self._start = time.perf_counter()
        self._excluded_s, self._samples, self._tokens, self._batches = 0.0, 0, 0, 0
        self._end: Optional[float] = None

    def on_train_begin(self):
        if self.peak_flops is None:
            self.peak_flops = device_peak_flops(self.train_loop_obj.device)

    def on_epoch_begin(self):
        self._reset_epoch()

    def on_batch_begin(self):
        if self.measure_flops and self.flops_per_batch is None and self._flop_mode is None:
            from torch.utils.flop_counter import FlopCounterMode
            self._flop_mode = FlopCounterMode(display=False)
            self._flop_begin = time.perf_counter()
            self._flop_mode.__enter__()

    def on_batch_end(self):
        loop = self.train_loop_obj
        if self._flop_mode is not None:
            self._flop_mode.__exit__(None, None, None)
            self.flops_per_batch = int(self._flop_mode.get_total_flops())
            self._flop_mode = None
            self._excluded_s += time.perf_counter() - self._flop_begin
            return  # the counted batch is not timed
        self._batches += 1
        self._samples += self.count_samples(loop.current_batch)
        if self.count_tokens is not None:
            self._tokens += int(self.count_tokens(loop.current_batch))
        if loop.iteration + 1 >= loop._epoch_len:  # the epoch's last batch: wait for the device once
            if loop.device.type == "cuda":
                torch.cuda.synchronize(loop.device)
            self._end = time.perf_counter()

    def on_train_crash(self, exception: BaseException):
        if self._flop_mode is not None:
            self._flop_mode.__exit__(None, None, None)
            self._flop_mode = None

    def on_epoch_end(self):
        loop = self.train_loop_obj
        elapsed = (self._end or time.perf_counter()) - self._start - self._excluded_s
        if self._batches == 0 or elapsed <= 0:
            return
        world = getattr(loop.strategy, "world_size", 1)
        values = {"samples_per_s": self._samples * world / elapsed, "batches_per_s": self._batches * world / elapsed}
        if self.count_tokens is not None:
            values["tokens_per_s"] = self._tokens * world / elapsed
        if self.flops_per_batch is not None:
            values["flops_per_batch"] = float(self.flops_per_batch)
            if self.peak_flops:
                values["mfu"] = self.flops_per_batch * self._batches / elapsed / self.peak_flops
        for name, value in values.items():
            loop.insert_metric_result_into_history(name, value)
        self.last = values
        self.last_counts = {"samples": self._samples * world, "batches": self._batches * world, "seconds": elapsed}


__all__ = ["ThroughputMonitor", "device_peak_flops", "PEAK_FLOPS"]
