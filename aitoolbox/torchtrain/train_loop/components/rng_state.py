"""Snapshots of every random number generator a training run draws from.

States are kept as tensors and plain Python values so that checkpoints holding them load with
``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import random
from typing import Any, Dict

import numpy as np
import torch

from aitoolbox.torchtrain.train_loop.components.data_loading import (
    loader_generator_states, set_loader_generator_states)


def get_rng_state() -> Dict[str, Any]:
    """States of Python's, NumPy's, torch's CPU and every initialised CUDA device's generator."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore the states returned by :func:`get_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_snapshot(loader) -> dict:
    """Global RNG states and the generator states of ``loader``."""
    return {"global": get_rng_state(), "loader": loader_generator_states(loader)}


def restore_rng(loader, snapshot: dict) -> None:
    """Restore a snapshot taken by :func:`rng_snapshot`."""
    set_rng_state(snapshot["global"])
    set_loader_generator_states(loader, snapshot["loader"])
