"""``DDPHandler``: the original aitoolbox's DDP helper, kept for scripts that call it.

Our TrainLoop does not need it: under ``gpu_mode='ddp'`` the DDP strategy
(:mod:`~aitoolbox.torchtrain.train_loop.strategies.ddp`) shards the training loader
(:func:`~aitoolbox.torchtrain.train_loop.strategies.data.distributed_train_loader`),
calls ``set_epoch`` every epoch and evaluates exactly on every rank. This class exposes the same
operations with the original's names, built on the same code.
"""
from __future__ import annotations

from typing import Any, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from aitoolbox.torchtrain.train_loop.components.data_loading import copy_loader
from aitoolbox.utils.log import get_logger


class DDPHandler:
    """Distributed-data helpers for a TrainLoop.

    Args:
        train_loop_obj: the TrainLoop whose loaders it works on.
    """

    def __init__(self, train_loop_obj):
        self.train_loop_obj = train_loop_obj
        for name in ("train_loader", "validation_loader", "test_loader"):
            loader = getattr(train_loop_obj, name)
            if loader is not None and not isinstance(getattr(loader, "sampler", None),
                                                     (SequentialSampler, RandomSampler)):
                get_logger().warning("%s has a custom sampler: DistributedSampler reads the data set in order "
                                     "or shuffled only.", name)

    def add_distributed_samplers(self, world_size: int, rank: int) -> None:
        """Give the loop's loaders a ``DistributedSampler`` (shuffled iff the loader shuffled).

        Also registers a :class:`~aitoolbox.torchtrain.callbacks.ddp.DistributedSamplerSetEpoch`
        for the new samplers. ``TrainLoop.fit`` under ``gpu_mode='ddp'`` does all this itself.

        Args:
            world_size: number of processes.
            rank: this process's rank.
        """
        from aitoolbox.torchtrain.callbacks.ddp import DistributedSamplerSetEpoch

        loop = self.train_loop_obj
        samplers = []
        for name in ("train_loader", "validation_loader", "test_loader"):
            loader, sampler = getattr(loop, name), None
            if loader is not None:
                loader, sampler = self.build_loader_sampler(loader, isinstance(loader.sampler, RandomSampler),
                                                            world_size, rank)
                setattr(loop, name, loader)
            samplers.append(sampler)
        loop.callbacks_handler.register_callbacks([DistributedSamplerSetEpoch(*samplers)])

    @staticmethod
    def build_loader_sampler(data_loader: DataLoader, shuffle: bool, world_size: int,
                             rank: int) -> Tuple[DataLoader, DistributedSampler]:
        """A copy of ``data_loader`` (every setting kept) reading through a new ``DistributedSampler``.

        Args:
            data_loader: the single-process loader.
            shuffle: whether the sampler shuffles.
            world_size: number of processes.
            rank: this process's rank.

        Returns:
            The new loader and its sampler.
        """
        sampler = DistributedSampler(data_loader.dataset, num_replicas=world_size, rank=rank, shuffle=shuffle)
        return copy_loader(data_loader, sampler), sampler

    def mp_sync(self, data: Any, double_precision: bool = False, concat_mp_data: bool = True,
                return_tensor: bool = True):
        """Every rank's ``data`` gathered on every rank (ranks must pass data of the same shape).

        Args:
            data: a tensor, numpy array, list or number.
            double_precision: wrap non-tensor data in a float64 tensor (else torch's default dtype).
            concat_mp_data: concatenate the ranks' data (else a list, one tensor per rank).
            return_tensor: return tensors (else lists, or a numpy array for numpy input).

        Returns:
            The gathered data; a CPU input comes back on the CPU.
        """
        is_numpy = isinstance(data, np.ndarray)
        if not hasattr(data, "__len__"):
            data = [data]
        on_cpu = not isinstance(data, torch.Tensor) or data.device.type == "cpu"
        if not isinstance(data, torch.Tensor):
            data = torch.tensor(data)
            if double_precision:
                data = data.double()
        local = data.to(self.train_loop_obj.device)
        gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, local)
        if concat_mp_data:
            gathered = torch.cat(gathered)
            if on_cpu:
                gathered = gathered.cpu()
        elif on_cpu:
            gathered = [part.cpu() for part in gathered]
        if return_tensor:
            return gathered
        if concat_mp_data:
            return gathered.cpu().numpy() if is_numpy else gathered.tolist()
        return [part.cpu().numpy() if is_numpy else part.tolist() for part in gathered]

    def mp_sync_dict(self, dict_data: dict) -> dict:
        """:meth:`mp_sync` of every value of a dict."""
        return {key: self.mp_sync(value) for key, value in dict_data.items()}
