"""Callbacks of the FSDP tests (module level: the spawned ranks unpickle them)."""
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback

from ddp_helpers import save_rank_file


class RecordShards(AbstractCallback):
    """After the first batch: each parameter's local and full size, and what the forward ran in."""

    def __init__(self, out_dir):
        super().__init__("record shards")
        self.out_dir, self.forward = out_dir, {}

    def on_train_begin(self):
        first = next(m for m in self.train_loop_obj.unwrapped_model().modules() if isinstance(m, torch.nn.Linear))
        # Registered after FSDP's own hooks: the weight is gathered (unsharded) in the pre-hook.
        first.register_forward_pre_hook(self._pre_hook)
        first.register_forward_hook(self._hook)

    def _pre_hook(self, module, args):
        self.forward.setdefault("weight_dtype", module.weight.dtype)

    def _hook(self, module, args, output):
        self.forward.setdefault("output_dtype", output.dtype)
        self.forward.setdefault("autocast", torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))

    def on_batch_end(self):
        loop = self.train_loop_obj
        if loop.total_iteration_idx == 0:
            shards = {name: (type(p).__name__, p.to_local().numel(), p.numel(), tuple(p.shape))
                      for name, p in loop.unwrapped_model().named_parameters()}
            save_rank_file(self.out_dir, "shards", loop, {"shards": shards, "forward": self.forward})


class CountReduceScatters(AbstractCallback):
    """Records the (epoch, iteration) of every gradient reduce-scatter FSDP issues."""

    def __init__(self, out_dir):
        super().__init__("count reduce-scatters")
        self.out_dir, self.calls = out_dir, []

    def on_train_begin(self):
        original = dist.reduce_scatter_single
        loop = self.train_loop_obj

        def counting(*args, **kwargs):
            self.calls.append((loop.epoch, loop.iteration))
            return original(*args, **kwargs)

        dist.reduce_scatter_single = counting

    def on_train_end(self):
        save_rank_file(self.out_dir, "reduce_scatter", self.train_loop_obj, sorted(set(self.calls)))


class RecordStartWeights(AbstractCallback):
    """At training start every rank gathers the full weights it starts from (after a resume)."""

    def __init__(self, out_dir):
        super().__init__("record start weights")
        self.out_dir = out_dir

    def on_train_begin(self):
        loop = self.train_loop_obj
        state = {k: v.full_tensor() if isinstance(v, DTensor) else v
                 for k, v in loop.unwrapped_model().state_dict().items()}
        save_rank_file(self.out_dir, "start", loop, {"state": state, "world_size": loop.strategy.world_size})


class CountTrainingForwards(AbstractCallback):
    """Counts the forward passes of the first ``Linear`` in training mode (recomputations included)."""

    def __init__(self, out_dir):
        super().__init__("count training forwards")
        self.out_dir, self.count = out_dir, 0

    def on_train_begin(self):
        first = next(m for m in self.train_loop_obj.unwrapped_model().modules() if isinstance(m, torch.nn.Linear))
        original = first.forward

        def counted(*args, **kwargs):
            if first.training:
                self.count += 1
            return original(*args, **kwargs)

        first.forward = counted

    def on_train_end(self):
        save_rank_file(self.out_dir, "forwards", self.train_loop_obj, self.count)
