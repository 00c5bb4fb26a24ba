"""``gpu_mode='single'``: CPU or one CUDA device (the base strategy as it is)."""
from __future__ import annotations

from aitoolbox.torchtrain.train_loop.strategies.base import DeviceStrategy


class SingleDeviceStrategy(DeviceStrategy):
    """``gpu_mode='single'``: CPU or one CUDA device."""
