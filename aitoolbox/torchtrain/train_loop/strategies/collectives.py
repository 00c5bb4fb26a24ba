"""Cross-rank operations of the DDP strategy, guarded against ranks that disagree.

Every operation first checks, with one small ``all_gather``, that all ranks entered the same
operation for the same time. A rank that evaluates alone (e.g. inside
``if train_loop.is_main_process():``) therefore meets the other ranks' next operation and every
rank raises :class:`CollectiveMismatchError`, instead of waiting forever.
"""
from __future__ import annotations

import collections
import math
from typing import Any, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from aitoolbox.torchtrain.train_loop.strategies.data import dataset_order

_OPS = ("setup", "any_rank", "mean_over_ranks", "reduce_eval", "gather_predictions", "barrier")


class CollectiveMismatchError(RuntimeError):
    """The ranks entered different cross-rank operations (or the same one a different number of times)."""


class RankComm:
    """Collectives between the ranks of one DDP run.

    Args:
        rank: this process's global rank.
        world_size: number of ranks.
        device: device of the tensors the backend communicates (CUDA for NCCL, else CPU).
        flag_group: process group of :meth:`any_rank_unchecked` (a CPU gloo group under NCCL).
    """

    def __init__(self, rank: int, world_size: int, device: torch.device, flag_group=None):
        self.rank, self.world_size, self.device = rank, world_size, device
        self.flag_group = flag_group
        self._entered = collections.Counter()

    def enter(self, op: str) -> None:
        """Check that every rank is entering ``op`` for the same time.

        Raises:
            CollectiveMismatchError: some rank entered another operation.
        """
        self._entered[op] += 1
        mine = torch.tensor([_OPS.index(op), self._entered[op]], dtype=torch.int64, device=self.device)
        everyone = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(everyone, mine)
        if all(torch.equal(other, mine) for other in everyone):
            return
        seen = ", ".join(f"rank {r}: {_OPS[int(t[0])]} #{int(t[1])}" for r, t in enumerate(everyone))
        raise CollectiveMismatchError(
            f"gpu_mode='ddp': the ranks entered different cross-rank operations ({seen}). Every rank must "
            "make the same evaluation / synchronisation calls in the same order. An evaluation requested "
            "on one rank only (e.g. predict_on_validation_set() under `if train_loop.is_main_process():`) "
            "cannot be served: give the callback device_idx_execution=0 instead (it then evaluates the "
            "whole data set on its own rank, without the other ranks), or call it on every rank.")

    def any_rank(self, flag: bool) -> bool:
        """True when ``flag`` is True on any rank."""
        self.enter("any_rank")
        value = torch.tensor([int(bool(flag))], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def any_rank_unchecked(self, flag: bool) -> bool:
        """:meth:`any_rank` without the entry check, on the flag group (cheap: for every batch)."""
        value = torch.tensor([int(bool(flag))])
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.flag_group)
        return bool(value.item())

    def max_unchecked(self, values: List[int]) -> List[int]:
        """Element-wise maximum of small integers over the ranks, on the flag group (no entry check)."""
        tensor = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.flag_group)
        return tensor.tolist()

    def sum(self, op: str, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of ``values`` (float64) over the ranks, on ``values``' device."""
        self.enter(op)
        total = values.detach().to(self.device, torch.float64).clone()
        dist.all_reduce(total)
        return total.to(values.device)

    def sum_unchecked(self, value: torch.Tensor) -> torch.Tensor:
        """Sum of a tensor (float64) over the ranks without the entry check: one all-reduce.

        For the loop's per-step collectives, which every rank enters at the same point of the same
        batch (the window weight of ``loss_weighting``).
        """
        total = value.detach().to(self.device, torch.float64).clone()
        dist.all_reduce(total)
        return total.to(value.device)

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value`` on every rank."""
        self.enter("setup")
        tensor = torch.tensor([value % (2 ** 63)], dtype=torch.int64, device=self.device)
        dist.broadcast(tensor, src=0)
        return int(tensor.item())

    def barrier(self) -> None:
        """Wait for every rank (the entry check is itself a barrier)."""
        self.enter("barrier")

    def gather_in_order(self, values: Sequence[Any], metadata: Optional[dict], counts: Optional[List[int]]):
        """Every rank's evaluation results, merged into data-set order.

        Args:
            values: this rank's per-sample results (tensors, arrays, lists; None allowed).
            metadata: this rank's metadata dict (per-sample lists) or None.
            counts: number of samples each rank read (:func:`~.data.shard_counts`); None: gathered
                from the ranks (the length of each rank's first value), for a split stream.

        Returns:
            ``(merged values, merged metadata)``.
        """
        self.enter("gather_predictions")
        local = [("tensor", _tensor_desc(v)) if _tensor_desc(v) else ("object", v) for v in values]
        everyone = self._all_gather_object((local, metadata, _length(values[0]) if values else None))
        if counts is None:
            counts = [e[2] or 0 for e in everyone]
        merged = [self._gather_value(value, [e[0][idx] for e in everyone], counts)
                  for idx, value in enumerate(values)]
        return merged, _merge_metadata([e[1] for e in everyone], counts)

    def _gather_value(self, value, descs: list, counts: List[int]):
        if all(kind == "object" for kind, _ in descs):
            return _merge([desc for _, desc in descs], counts)
        per_sample = {(desc[1], desc[2]) for kind, desc in descs if kind == "tensor"}
        if all(kind == "tensor" for kind, _ in descs) and len(per_sample) == 1:
            return _merge(self._all_gather_tensor(value, [desc[0] for _, desc in descs]), counts)
        # Mixed kinds, or per-sample shapes / dtypes that differ between ranks: pickle the values.
        return _merge(self._all_gather_object(value.cpu() if isinstance(value, torch.Tensor) else value), counts)

    def _all_gather_object(self, obj) -> list:
        gathered: List[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def _all_gather_tensor(self, value: torch.Tensor, lengths: List[int]) -> List[torch.Tensor]:
        """Gather tensors of different lengths (same per-sample shape) as padded rows of bytes."""
        tail, dtype = value.shape[1:], value.dtype
        rows = value.detach().contiguous().reshape(len(value), math.prod(tail)).view(torch.uint8)
        rows = rows.to(self.device)
        padded = torch.zeros((max(lengths), rows.shape[1]), dtype=torch.uint8, device=self.device)
        padded[:len(rows)] = rows
        everyone = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(everyone, padded)
        return [chunk[:n].contiguous().view(dtype).reshape(n, *tail).to(value.device)
                for chunk, n in zip(everyone, lengths)]


def _tensor_desc(value):
    """``(length, per-sample shape, dtype)`` of a tensor gathered as bytes, else None."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and math.prod(value.shape[1:]) > 0:
        return len(value), tuple(value.shape[1:]), value.dtype
    return None


def _length(value) -> Optional[int]:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return len(value) if value.ndim > 0 else None
    if isinstance(value, (list, tuple)):
        return len(value)
    return None


def _concat(pieces: list):
    if all(p is None for p in pieces):
        return None
    if all(isinstance(p, torch.Tensor) for p in pieces):
        return torch.cat(pieces)
    if all(isinstance(p, np.ndarray) for p in pieces):
        return np.concatenate(pieces)
    if all(isinstance(p, (list, tuple)) for p in pieces):
        return [item for piece in pieces for item in piece]
    return list(pieces)


def _merge(pieces: list, counts: List[int]):
    """Concatenate the ranks' pieces; per-sample pieces are put back into data-set order."""
    merged = _concat(pieces)
    if [_length(p) for p in pieces] != list(counts):
        return merged  # not per-sample results: kept in rank order
    order = dataset_order(counts)
    if isinstance(merged, torch.Tensor):
        return merged[torch.as_tensor(order, device=merged.device)]
    if isinstance(merged, np.ndarray):
        return merged[np.asarray(order)]
    return [merged[i] for i in order]


def _merge_metadata(per_rank: list, counts: List[int]) -> Optional[dict]:
    if all(meta is None for meta in per_rank):
        return None
    keys = list(dict.fromkeys(k for meta in per_rank if meta for k in meta))
    return {k: _merge([(meta or {}).get(k, []) for meta in per_rank], counts) for k in keys}
