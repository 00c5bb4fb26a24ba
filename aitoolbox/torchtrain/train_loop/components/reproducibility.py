"""``fit(seed=..., deterministic=...)``: where a run's random streams start, and deterministic kernels.

``seed`` seeds this process's global generators (torch CPU and CUDA, Python's ``random``, NumPy)
when ``fit`` starts a run, before anything of the loop draws: shuffling by the loader's default
sampler, dropout, the workers' base seeds. Under DDP / FSDP rank 0 trains on those streams and
rank ``r > 0`` on streams seeded from ``(seed, r)`` (:func:`seed_rank_streams`); the
distributed sampler of a loader without its own generator shuffles with ``seed`` on every rank.
A loop that continues a run (it has trained, or a checkpoint was loaded) keeps its streams: the
saved RNG states win over ``seed``.

``deterministic=True`` (or ``'warn'``) switches the process to deterministic kernels: torch's
``use_deterministic_algorithms``, cuDNN's ``deterministic`` / no ``benchmark`` and cuBLAS's
workspace (``CUBLAS_WORKSPACE_CONFIG``). These are process-global settings: they stay set after
``fit`` returns, in this process and in every rank ``fit`` starts.
"""
from __future__ import annotations

import hashlib
import logging
import numbers
import os
import random
import warnings
from typing import Optional, Union

import numpy as np
import torch

logger = logging.getLogger("aitoolbox")

#: the cuBLAS workspace setting that makes cuBLAS deterministic (CUDA >= 10.2)
CUBLAS_WORKSPACE_CONFIG = ":4096:8"
_MAX_SEED = 2 ** 64  # torch.manual_seed takes seeds below this


def check_fit_args(seed, deterministic) -> None:
    """Raise a clear error for a bad ``seed`` or ``deterministic`` of ``fit`` (before any work).

    Raises:
        TypeError: ``seed`` is not an int (or None); ``deterministic`` not a bool or ``'warn'``.
        ValueError: ``seed`` is negative or not below 2**64.
    """
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an int >= 0 (e.g. fit(..., seed=42)) or None (not seeded), "
                            f"got {type(seed).__name__} {seed!r}.")
        if not 0 <= int(seed) < _MAX_SEED:
            raise ValueError(f"seed must be an int >= 0 and < 2**64 (e.g. fit(..., seed=42)), got {seed!r}.")
    if not (isinstance(deterministic, bool) or (isinstance(deterministic, str) and deterministic == "warn")):
        raise TypeError(f"deterministic must be True, False or 'warn' (deterministic kernels, warning instead "
                        f"of raising where an operation has none), got {deterministic!r}.")


def seed_all(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), Python's ``random`` and NumPy's global generator."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(int(seed) % 2 ** 32)


def rank_stream_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s random streams, derived from the run's ``seed`` (rank 0: ``seed``)."""
    if rank == 0:
        return int(seed)
    digest = hashlib.sha256(f"aitoolbox-rank-stream:{int(seed)}:{int(rank)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_rank_streams(rank: int, seed: Optional[int] = None) -> None:
    """Give rank ``rank`` its own streams: torch (CPU and CUDA), Python and NumPy generators seeded
    from :func:`rank_stream_seed` of ``seed`` and the rank, so dropout masks and augmentations
    differ across ranks and two runs with the same seed are identical.

    ``seed`` None (``fit`` was given no seed): the run's seed is ``torch.initial_seed()`` and
    rank 0 keeps the state it has.
    """
    if seed is None:
        if rank == 0:
            return
        seed = torch.initial_seed()
    seed_all(rank_stream_seed(seed, rank))


def continues_run(loop) -> bool:
    """Whether ``loop`` continues a run: it has trained, or a checkpoint's RNG states were loaded."""
    return loop.total_iteration_idx > 0 or getattr(loop, "_rng_restored", False)


def apply_fit_args(loop, seed: Optional[int], deterministic: Union[bool, str]) -> None:
    """In the process that called ``fit``: seed a fresh run, switch on deterministic kernels.

    Sets ``loop._run_seed`` (the seed when this ``fit`` seeded the run, else None) and
    ``loop._deterministic``; both travel with the loop to the ranks ``fit`` spawns.
    """
    loop._run_seed = None
    if seed is not None:
        if continues_run(loop):
            logger.info("fit(seed=%d) does not reseed: the loop continues a run (it has trained or loaded a "
                        "checkpoint), whose random states carry on.", seed)
        else:
            loop._run_seed = int(seed)
            seed_all(loop._run_seed)
    loop._deterministic = deterministic
    set_deterministic(deterministic)


def set_deterministic(mode: Union[bool, str]) -> None:
    """``mode`` True / ``'warn'``: deterministic kernels in this process (nothing is undone later).

    ``torch.use_deterministic_algorithms(True)`` (``warn_only`` for ``'warn'``): an operation
    without a deterministic implementation raises (warns) when it runs; cuDNN deterministic and
    not benchmarking; ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless set. False changes nothing.
    """
    if not mode:
        return
    if "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            warnings.warn("fit(deterministic=...) set CUBLAS_WORKSPACE_CONFIG after CUDA was initialised in this "
                          "process: cuBLAS may already use its default workspace. Set "
                          f"CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE_CONFIG} before the script starts.",
                          stacklevel=3)
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE_CONFIG  # inherited by spawned ranks
    torch.use_deterministic_algorithms(True, warn_only=mode == "warn")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
