"""Device strategies: where the model runs and how work is split across devices.

One module per ``gpu_mode`` (:mod:`.single`, :mod:`.dp`, :mod:`.ddp`, :mod:`.fsdp`) on the
:class:`~.base.DeviceStrategy` interface, and what the distributed ones share: launching and
rendezvous (:mod:`.launch`), their ``fit`` arguments (:mod:`.config`), sharded and exact
evaluation data (:mod:`.data`) and cross-rank collectives (:mod:`.collectives`). The FSDP
strategy is the DDP strategy's rank machinery with another model wrapping (it extends
:class:`~.ddp.DDPStrategy`).

:data:`STRATEGIES` is the one map from ``gpu_mode`` to a strategy class. This package imports
nothing itself (the TrainLoop imports it and must not import ``torch.distributed``): a strategy's
module is imported when its mode is chosen.
"""
from __future__ import annotations

import importlib

#: gpu_mode -> strategy class path; imported on use so that unused modes cost nothing.
STRATEGIES = {
    "single": "aitoolbox.torchtrain.train_loop.strategies.single.SingleDeviceStrategy",
    "dp": "aitoolbox.torchtrain.train_loop.strategies.dp.DataParallelStrategy",
    "ddp": "aitoolbox.torchtrain.train_loop.strategies.ddp.DDPStrategy",
    "fsdp": "aitoolbox.torchtrain.train_loop.strategies.fsdp.FSDPStrategy",
}


def make_strategy(gpu_mode: str, cuda_device_idx):
    """Build the strategy for ``gpu_mode``.

    Args:
        gpu_mode: a key of :data:`STRATEGIES`.
        cuda_device_idx: CUDA device of a single-process run (None: the default device).

    Returns:
        The :class:`~.base.DeviceStrategy` of that mode.

    Raises:
        ValueError: unknown ``gpu_mode``.
    """
    if gpu_mode not in STRATEGIES:
        raise ValueError(f"gpu_mode must be one of {list(STRATEGIES)}, got {gpu_mode!r}.")
    module_path, cls_name = STRATEGIES[gpu_mode].rsplit(".", 1)
    return getattr(importlib.import_module(module_path), cls_name)(cuda_device_idx)
