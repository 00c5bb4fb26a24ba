"""Data and callbacks of the DDP stream / weighting tests (importable by the spawned ranks)."""
import os

import torch
from torch.utils.data import IterableDataset

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback

from ddp_helpers import NUM_FEATURES, save_rank_file


def batches_of(sizes, seed):
    """Regression batches ``(x, y)`` of the given sizes."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for size in sizes:
        x = torch.randn(size, NUM_FEATURES, generator=gen)
        out.append((x, x.sum(1, keepdim=True) + 0.1 * torch.randn(size, 1, generator=gen)))
    return out


class PerRankBatches(IterableDataset):
    """A stream of ready-made batches that differs per rank (it splits by rank itself).

    Args:
        sizes_per_rank: for each rank, the sizes of its batches in one pass.
    """

    def __init__(self, sizes_per_rank, seed=0):
        self.sizes_per_rank, self.seed = sizes_per_rank, seed

    def rank_batches(self, rank):
        return batches_of(self.sizes_per_rank[rank], self.seed + 100 * rank)

    def __iter__(self):
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return iter(self.rank_batches(rank))


class IndexStream(IterableDataset):
    """``(x, y, index)`` samples in order, with no __len__."""

    def __init__(self, num_samples, seed=1):
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(num_samples, NUM_FEATURES, generator=gen)
        self.y = torch.arange(num_samples, dtype=torch.float32).unsqueeze(1)

    def __iter__(self):
        for i in range(len(self.x)):
            yield self.x[i], self.y[i], i


class RecordSteps(AbstractCallback):
    """Every rank records, per optimizer step, (epoch, iteration) and a copy of its weights."""

    def __init__(self, out_dir):
        super().__init__("record steps")
        self.out_dir, self.steps, self.epoch_batches = out_dir, [], []

    def on_after_optimizer_step(self):
        loop = self.train_loop_obj
        # FSDP holds DTensor shards: the full tensors (a collective every rank enters here)
        weights = [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
                   for p in loop.unwrapped_model().parameters()]
        self.steps.append((loop.epoch, loop.iteration, weights))

    def on_epoch_end(self):
        self.epoch_batches.append(self.train_loop_obj.iteration)

    def on_train_end(self):
        loop = self.train_loop_obj
        save_rank_file(self.out_dir, "steps", loop, {"steps": self.steps, "epoch_batches": self.epoch_batches,
                                                     "epoch": loop.epoch,
                                                     "history": loop.train_history.get_train_history_dict()})


class RecordValidation(AbstractCallback):
    """Every rank saves its validation loss and predictions at the end of training."""

    def __init__(self, out_dir):
        super().__init__("record validation")
        self.out_dir = out_dir

    def on_train_end(self):
        loop = self.train_loop_obj
        y_pred, y_true, _ = loop.predict_on_validation_set()
        save_rank_file(self.out_dir, "val", loop, {"loss": float(loop.evaluate_loss_on_validation_set()),
                                                   "y_pred": y_pred, "y_true": y_true})


def out_path(out_dir, name, rank):
    return os.path.join(out_dir, f"{name}_rank{rank}.pt")
