"""Models, data and callbacks of the DP / DDP tests (importable by the spawned ranks and scripts)."""
import os
import signal
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from aitoolbox import MultiLoss, TrainLoop, TTModel
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback

NUM_FEATURES = 4


class RegressionNet(TTModel):
    """A small deterministic regression TTModel; ``get_loss`` uses a user attribute and a helper."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(NUM_FEATURES, 8), nn.Tanh(), nn.Linear(8, 1))
        self.loss_scale = 1.0
        self.seen_indices = []

    def forward(self, x):
        return self.body(x)

    def _inputs(self, batch, device):
        x, y = batch[0], batch[1]
        if len(batch) > 2 and self.training:
            self.seen_indices.extend(batch[2].tolist())
        return x.to(device), y.to(device)

    def get_loss(self, batch_data, criterion, device):
        x, y = self._inputs(batch_data, device)
        return criterion(self(x), y) * self.loss_scale

    def get_predictions(self, batch_data, device):
        x, y = self._inputs(batch_data, device)
        return self(x), y, {"first_feature": x[:, 0].tolist()}


class TwoHeadNet(TTModel):
    """Shared trunk, two heads: a ``MultiLoss`` of two losses for two optimizers."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Linear(NUM_FEATURES, 8)
        self.head_a, self.head_b = nn.Linear(8, 1), nn.Linear(8, 1)

    def forward(self, x):
        hidden = torch.tanh(self.trunk(x))
        return self.head_a(hidden), self.head_b(hidden)

    def get_loss(self, batch_data, criterion, device):
        x, y = batch_data
        out_a, out_b = self(x.to(device))
        y = y.to(device)
        return MultiLoss({"a": criterion(out_a.float(), y), "b": criterion(out_b.float(), 2 * y)})

    def get_predictions(self, batch_data, device):
        x, y = batch_data
        return self(x.to(device))[0], y, None


class IndexedDataset(Dataset):
    """``(x, y, index)`` samples: the model records which indices it trained on."""

    def __init__(self, num_samples, seed=1):
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(num_samples, NUM_FEATURES, generator=gen)
        self.y = torch.randn(num_samples, 1, generator=gen)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, idx):
        return self.x[idx], self.y[idx], idx


def train_set(num_samples=64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, NUM_FEATURES, generator=gen)
    return TensorDataset(x, x.sum(1, keepdim=True) + 0.1 * torch.randn(num_samples, 1, generator=gen))


def validation_set(num_samples=101, seed=2):
    """Targets are the sample indices, so that their order shows the data-set order."""
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(num_samples, NUM_FEATURES, generator=gen),
                         torch.arange(num_samples, dtype=torch.float32).unsqueeze(1))


def make_loop(model, batch_size, gpu_mode="single", train_data=None, val_data=None, lr=0.05, **loop_kwargs):
    train_data = train_set() if train_data is None else train_data
    val_loader = None if val_data is False else DataLoader(
        validation_set() if val_data is None else val_data, batch_size=10)
    return TrainLoop(model, DataLoader(train_data, batch_size=batch_size), val_loader, None,
                     torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9), nn.MSELoss(),
                     gpu_mode=gpu_mode, show_progress=False, **loop_kwargs)


def save_rank_file(out_dir, name, loop, payload):
    os.makedirs(out_dir, exist_ok=True)
    torch.save(payload, os.path.join(out_dir, f"{name}_rank{loop.strategy.rank}.pt"))


class RecordEvaluation(AbstractCallback):
    """At the end of training every rank saves its validation predictions and loss.

    Asking twice for the predictions must hit the cache (the same object comes back).
    """

    def __init__(self, out_dir):
        super().__init__("record evaluation")
        self.out_dir = out_dir

    def on_train_end(self):
        loop = self.train_loop_obj
        first = loop.predict_on_validation_set()
        cached = loop.predict_on_validation_set()
        loss = loop.evaluate_loss_on_validation_set(force_prediction=True)
        save_rank_file(self.out_dir, "eval", loop, {
            "y_pred": first[0], "y_true": first[1], "metadata": first[2], "val_loss": float(loss),
            "cache_hit": cached is first, "world_size": loop.strategy.world_size})


class PinnedEvaluation(AbstractCallback):
    """Runs on rank 0 only and evaluates there: mid-epoch (nothing cached) and at epoch end."""

    def __init__(self, out_dir):
        super().__init__("pinned evaluation", device_idx_execution=0)
        self.out_dir = out_dir
        self.results = []

    def on_batch_end(self):
        if self.train_loop_obj.iteration == 1:
            self._record("mid_epoch")

    def on_epoch_end(self):
        self._record("epoch_end")

    def on_train_end(self):
        save_rank_file(self.out_dir, "pinned", self.train_loop_obj, self.results)

    def _record(self, when):
        loop = self.train_loop_obj
        y_pred, y_true, _ = loop.predict_on_validation_set()
        loss = loop.evaluate_loss_on_validation_set()
        self.results.append({"when": when, "n": len(y_pred), "y_true": y_true, "loss": float(loss),
                             "version": loop.weights_version})


class CountAllReduces(AbstractCallback):
    """Registers a DDP communication hook that records the iteration of every gradient all-reduce."""

    def __init__(self, out_dir):
        super().__init__("count all-reduces")
        self.out_dir = out_dir
        self.calls = []

    def on_train_begin(self):
        self.train_loop_obj.strategy.ddp_model.register_comm_hook(None, self._hook)

    def _hook(self, state, bucket):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
        loop = self.train_loop_obj
        self.calls.append((loop.epoch, loop.iteration))
        return allreduce_hook(None, bucket)

    def on_train_end(self):
        save_rank_file(self.out_dir, "allreduce", self.train_loop_obj, self.calls)


class RaiseOnRank(AbstractCallback):
    """Raises on one rank at one iteration."""

    def __init__(self, rank, iteration):
        super().__init__("raise on rank")
        self.rank, self.iteration = rank, iteration

    def on_batch_end(self):
        loop = self.train_loop_obj
        if loop.strategy.rank == self.rank and loop.iteration == self.iteration:
            raise RuntimeError(f"boom from rank {self.rank}")


class StallOnRank(AbstractCallback):
    """At one iteration one rank stops itself (``SIGSTOP``) or sleeps; it writes its pid first."""

    def __init__(self, rank, iteration, out_dir, sleep_s=None):
        super().__init__("stall on rank")
        self.rank, self.iteration, self.out_dir, self.sleep_s = rank, iteration, out_dir, sleep_s

    def on_batch_end(self):
        loop = self.train_loop_obj
        if loop.strategy.rank == self.rank and loop.total_iteration_idx == self.iteration:
            with open(os.path.join(self.out_dir, "stalled_pid"), "w") as f:
                f.write(str(os.getpid()))
            if self.sleep_s is None:
                os.kill(os.getpid(), signal.SIGSTOP)
            else:
                time.sleep(self.sleep_s)


class MainProcessOnlyEvaluation(AbstractCallback):
    """The misuse: an unpinned callback that evaluates on rank 0 only."""

    def __init__(self):
        super().__init__("main process only evaluation")

    def on_epoch_end(self):
        if self.train_loop_obj.is_main_process():
            self.train_loop_obj.predict_on_validation_set(force_prediction=True)


class LoadValidationInProcess(AbstractCallback):
    """``in_process_data_load``: builds the validation loader inside each process."""

    def __init__(self, num_samples):
        super().__init__("load validation data")
        self.num_samples = num_samples

    def on_multiprocess_start(self):
        self.train_loop_obj.validation_loader = DataLoader(validation_set(self.num_samples), batch_size=4)


class RecordSeenIndices(AbstractCallback):
    """Saves, per epoch, the sample indices this rank trained on."""

    def __init__(self, out_dir):
        super().__init__("record seen indices")
        self.out_dir, self.per_epoch = out_dir, []

    def on_epoch_end(self):
        module = self.train_loop_obj.unwrapped_model()
        self.per_epoch.append(list(module.seen_indices))
        module.seen_indices.clear()

    def on_train_end(self):
        save_rank_file(self.out_dir, "seen", self.train_loop_obj, self.per_epoch)


def load_rank_files(out_dir, name, world_size=2):
    return [torch.load(os.path.join(out_dir, f"{name}_rank{rank}.pt"), weights_only=False)
            for rank in range(world_size)]


def max_weight_diff(model_a, model_b):
    return max((a - b).abs().max().item() for a, b in zip(model_a.state_dict().values(),
                                                          model_b.state_dict().values()))


class StopOnRank(AbstractCallback):
    """Pinned to one rank: sets ``early_stop`` there in the middle of the first epoch."""

    def __init__(self, rank, iteration):
        super().__init__("stop on rank", device_idx_execution=rank)
        self.iteration = iteration

    def on_batch_end(self):
        if self.train_loop_obj.iteration == self.iteration:
            self.train_loop_obj.early_stop = True


class RecordCompiledFrames(AbstractCallback):
    """Puts the number of frames dynamo compiled in this process into the history."""

    def __init__(self):
        super().__init__("record compiled frames")

    def on_train_end(self):
        from torch._dynamo.utils import counters
        self.train_loop_obj.insert_metric_result_into_history("compiled_frames", counters["frames"]["ok"])


class AutocastProbeNet(RegressionNet):
    """Records, in every training forward, whether CPU / CUDA autocast is on and in which dtype."""

    def __init__(self, seed=0):
        super().__init__(seed)
        self.seen_autocast = set()

    def forward(self, x):
        if self.training:
            device_type = x.device.type
            self.seen_autocast.add((device_type, torch.is_autocast_enabled(device_type),
                                    torch.get_autocast_dtype(device_type), self.body(x).dtype))
        return self.body(x)


class RecordAutocast(AbstractCallback):
    """At the end of training every rank saves what its forward saw and its AMP handler's setup."""

    def __init__(self, out_dir):
        super().__init__("record autocast")
        self.out_dir = out_dir

    def on_train_end(self):
        loop = self.train_loop_obj
        handler = loop.amp_handler
        save_rank_file(self.out_dir, "autocast", loop,
                       {"seen": sorted(map(str, loop.unwrapped_model().seen_autocast)),
                        "dtype": str(handler.dtype), "has_scaler": handler.scaler is not None,
                        "scaler_state": handler.state_dict()})
