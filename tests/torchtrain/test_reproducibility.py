"""``fit(seed=..., deterministic=...)`` (components/reproducibility.py) and per-rank streams.

One process: ``fit(seed=7)`` trains as a hand-written loop after ``torch.manual_seed(7)``,
whatever the global state before; a continued run is not reseeded (the saved states win).
DDP (2 gloo ranks): the same seed gives the same run; each rank's dropout draws from the stream
of ``(seed, rank)``; the workers of a loader with its own generator get other seeds on every rank
and epoch; all of it continues exactly after a mid-epoch stop.
"""
import multiprocessing
import os
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, get_worker_info

from aitoolbox import TrainLoop, TTModel
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.train_loop.components import reproducibility
from aitoolbox.torchtrain.train_loop.components.checkpointing import rank_stream_seed, seed_rank_streams
from aitoolbox.torchtrain.train_loop.strategies.data import distributed_train_loader

CPU_DDP = dict(num_gpus=2, on_gpu=False, backend="gloo")
HIDDEN = 16


class DropoutNet(TTModel):
    """Records the dropout mask and the batch's worker seed of every training batch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin1, self.lin2 = nn.Linear(4, HIDDEN), nn.Linear(HIDDEN, 1)
        self.drop = nn.Dropout(0.5)
        self.masks, self.worker_seeds = [], []

    def forward(self, x):
        hidden = torch.tanh(self.lin1(x))
        keep = self.drop(torch.ones_like(hidden))  # the dropout of `hidden`, with its mask visible
        if self.training:
            self.masks.append(keep != 0)
        return self.lin2(hidden * keep)

    def get_loss(self, batch_data, criterion, device):
        x, y = batch_data[0], batch_data[1]
        if len(batch_data) > 2 and self.training:
            self.worker_seeds.append(int(batch_data[2][0]))
        return criterion(self(x.to(device)), y.to(device))

    def get_predictions(self, batch_data, device):
        return self(batch_data[0].to(device)), batch_data[1], None


class WorkerNoiseData(Dataset):
    """Samples with noise drawn in the worker (from its seed), and that seed."""

    def __init__(self, num_samples=40):
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(num_samples, 4, generator=gen)
        self.y = self.x.sum(1, keepdim=True)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, idx):
        info = get_worker_info()
        return self.x[idx] + 0.1 * torch.randn(4), self.y[idx], info.seed if info is not None else -1


class SaveRecords(AbstractCallback):
    """Every rank saves its model's records, its deterministic flag and CUBLAS_WORKSPACE_CONFIG."""

    def __init__(self, out_dir):
        super().__init__("save records")
        self.out_dir = out_dir

    def on_train_end(self):
        loop, module = self.train_loop_obj, self.train_loop_obj.unwrapped_model()
        os.makedirs(self.out_dir, exist_ok=True)
        torch.save({"masks": module.masks, "worker_seeds": module.worker_seeds,
                    "deterministic": torch.are_deterministic_algorithms_enabled(),
                    "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
                    "start_method": multiprocessing.get_start_method()},
                   os.path.join(self.out_dir, f"records_rank{loop.strategy.rank}.pt"))


def load_records(out_dir):
    return [torch.load(os.path.join(out_dir, f"records_rank{rank}.pt"), weights_only=False) for rank in range(2)]


@pytest.fixture
def restore_determinism():
    """fit(deterministic=...) changes process-global settings: put them back after the test."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
    if saved[4] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[4]


def plain_data(num_samples=48):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(num_samples, 4, generator=gen)
    return TensorDataset(x, x.sum(1, keepdim=True))


def make_loop(loader, **loop_kwargs):
    model = DropoutNet()
    return TrainLoop(model, loader, None, None, torch.optim.SGD(model.parameters(), lr=0.05), nn.MSELoss(),
                     show_progress=False, quiet=True, **loop_kwargs)


def scramble_global_rng(salt):
    """Leave torch, Python and NumPy in some other state: a seeded fit must not depend on it."""
    torch.manual_seed(1000 + salt)
    random.seed(salt)
    np.random.seed(salt)


def fit_single(seed, salt, num_epochs=2, **fit_kwargs):
    loop = make_loop(DataLoader(plain_data(), batch_size=8, shuffle=True))  # shuffled by torch's global RNG
    scramble_global_rng(salt)
    loop.fit(num_epochs=num_epochs, seed=seed, **fit_kwargs)
    return loop


def assert_same_weights(model_a, model_b):
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------------------- one process
def test_seeded_fit_trains_as_a_hand_loop_after_manual_seed():
    loop = fit_single(seed=7, salt=1)
    model = DropoutNet()
    optimizer, criterion = torch.optim.SGD(model.parameters(), lr=0.05), nn.MSELoss()
    loader = DataLoader(plain_data(), batch_size=8, shuffle=True)
    torch.manual_seed(7)
    for _ in range(2):
        for x, y in loader:
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
    assert_same_weights(loop.model, model)


def test_same_seed_same_run_other_seed_other_run():
    first, again, other = fit_single(7, salt=1), fit_single(7, salt=2), fit_single(8, salt=1)
    assert_same_weights(first.model, again.model)
    assert all(torch.equal(a, b) for a, b in zip(first.model.masks, again.model.masks))
    assert not torch.equal(first.model.lin1.weight, other.model.lin1.weight)
    assert not all(torch.equal(a, b) for a, b in zip(first.model.masks, other.model.masks))
    # __call__ takes the same arguments
    called = make_loop(DataLoader(plain_data(), batch_size=8, shuffle=True))
    scramble_global_rng(3)
    called(num_epochs=2, seed=7)
    assert_same_weights(called.model, first.model)


def test_a_continued_run_is_not_reseeded(tmp_path):
    whole = fit_single(7, salt=1, num_epochs=3)
    continued = fit_single(7, salt=2, num_epochs=1)
    continued.fit(num_epochs=3, seed=7)  # a second fit goes on with the streams of the first
    assert_same_weights(continued.model, whole.model)

    stopped = fit_single(7, salt=3, num_epochs=1)
    path = stopped.save_checkpoint(str(tmp_path / "epoch1.pt"))
    resumed = make_loop(DataLoader(plain_data(), batch_size=8, shuffle=True))
    resumed.load_checkpoint(path)
    resumed.fit(num_epochs=3, seed=123)  # the checkpoint's RNG states win over the seed
    assert_same_weights(resumed.model, whole.model)


@pytest.mark.parametrize("kwargs, name", [
    ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": True}, "seed"), ({"seed": "7"}, "seed"),
    ({"seed": 2 ** 64}, "seed"), ({"deterministic": 1}, "deterministic"),
    ({"deterministic": "yes"}, "deterministic"), ({"deterministic": None}, "deterministic"),
])
def test_bad_values_raise_before_any_work(kwargs, name, restore_determinism):
    loop = make_loop(DataLoader(plain_data(), batch_size=8, shuffle=True))
    before = [p.detach().clone() for p in loop.model.parameters()]
    torch.manual_seed(5)
    with pytest.raises((TypeError, ValueError), match=name):
        loop.fit(num_epochs=1, **kwargs)
    with pytest.raises((TypeError, ValueError), match=name):
        loop(num_epochs=1, **kwargs)
    assert loop.total_iteration_idx == 0 and all(torch.equal(a, b) for a, b in zip(before, loop.model.parameters()))
    assert torch.initial_seed() == 5  # nothing was seeded


def test_numpy_integer_seed_is_accepted():
    reproducibility.check_fit_args(2 ** 64 - 1, "warn")  # the largest seed torch takes: no error
    # a NumPy integer seeds the run exactly as the same Python int does
    assert_same_weights(fit_single(np.int64(3), salt=1, num_epochs=1).model,
                        fit_single(3, salt=2, num_epochs=1).model)


def test_deterministic_switches_the_process_to_deterministic_kernels(restore_determinism, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    fit_single(7, salt=1, num_epochs=1, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own setting is kept
    torch.use_deterministic_algorithms(False)
    fit_single(7, salt=1, num_epochs=1, deterministic="warn")
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"

    torch.use_deterministic_algorithms(False)
    fit_single(7, salt=1, num_epochs=1, deterministic=False)  # False leaves the settings alone
    assert not torch.are_deterministic_algorithms_enabled()


def test_rank_streams_come_from_the_seed_and_the_rank():
    draws = {}
    for seed in (7, 8):
        for rank in (0, 1):
            torch.manual_seed(99)
            seed_rank_streams(rank, seed)
            draws[seed, rank] = (torch.rand(3), random.random(), np.random.rand())
    for key, value in draws.items():
        for other, other_value in draws.items():
            if key != other:
                assert not torch.equal(value[0], other_value[0]) and value[1:] != other_value[1:], (key, other)
    torch.manual_seed(7)
    assert torch.equal(draws[7, 0][0], torch.rand(3))  # rank 0 trains on the seed's own stream


def test_rank_copies_of_a_loader_get_their_own_generator_and_the_same_order():
    generator = torch.Generator().manual_seed(3)
    loader = DataLoader(plain_data(), batch_size=8, shuffle=True, generator=generator)
    copies = [distributed_train_loader(loader, rank, 2, seed=3) for rank in range(2)]
    assert copies[0].generator is generator  # rank 0 keeps the user's generator
    assert copies[1].generator.initial_seed() == rank_stream_seed(3, 1) != 3
    reference = torch.utils.data.DistributedSampler(loader.dataset, num_replicas=2, rank=1, shuffle=True, seed=3)
    assert list(copies[1].sampler) == list(reference)  # the shuffle follows the sampler's seed only
    assert distributed_train_loader(DataLoader(plain_data(), batch_size=8), 1, 2, seed=3).generator is None


# ---------------------------------------------------------------------------------- DDP, 2 ranks
def ddp_loop():
    # 20 samples per rank: 4 batches per epoch; the workers start the platform's default way (fork on Linux)
    loader = DataLoader(WorkerNoiseData(), batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(3),
                        num_workers=1)
    return make_loop(loader, gpu_mode="ddp")


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """A seeded 3-epoch run, and the same run stopped mid-epoch (iteration 6 of 12) and continued."""
    root = tmp_path_factory.mktemp("seeded_ddp")
    saved = (torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    try:
        whole = ddp_loop()
        scramble_global_rng(1)
        whole.fit(num_epochs=3, seed=7, deterministic=True, callbacks=[SaveRecords(str(root / "whole"))], **CPU_DDP)
    finally:
        torch.use_deterministic_algorithms(saved[0])
        if saved[1] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[1]
    stopped = ddp_loop()
    scramble_global_rng(2)
    stopped.fit(num_iterations=6, seed=7, callbacks=[SaveRecords(str(root / "part1"))], **CPU_DDP)
    stopped.fit(num_epochs=3, callbacks=[SaveRecords(str(root / "part2"))], **CPU_DDP)
    return whole, load_records(root / "whole"), stopped, load_records(root / "part1"), load_records(root / "part2")


@pytest.mark.timeout(300)
def test_ddp_seeded_run_is_reproducible_and_resumes_exactly(ddp_runs):
    whole, records, stopped, part1, part2 = ddp_runs
    assert (whole.total_iteration_idx, stopped.total_iteration_idx) == (12, 12)
    assert_same_weights(stopped.model, whole.model)  # other global states before fit, the same run
    for rank in range(2):
        assert len(part1[rank]["masks"]) == 6 and len(records[rank]["masks"]) == 12
        for key in ("masks", "worker_seeds"):
            continued = part1[rank][key] + part2[rank][key]
            assert len(continued) == 12
            assert all(torch.equal(torch.as_tensor(a), torch.as_tensor(b))
                       for a, b in zip(continued, records[rank][key])), (rank, key)


@pytest.mark.timeout(300)
def test_ddp_dropout_draws_from_the_stream_of_seed_and_rank(ddp_runs):
    records = ddp_runs[1]
    assert not torch.equal(records[0]["masks"][0], records[1]["masks"][0])
    for rank in range(2):
        torch.manual_seed(rank_stream_seed(7, rank))
        expected = nn.Dropout(0.5)(torch.ones(5, HIDDEN)) != 0  # the rank's first draw is the first dropout
        assert torch.equal(records[rank]["masks"][0], expected), rank


@pytest.mark.timeout(300)
def test_ddp_worker_seeds_differ_across_ranks_and_epochs_with_a_user_generator(ddp_runs):
    records = ddp_runs[1]
    for rank, generator_seed in ((0, 3), (1, rank_stream_seed(3, 1))):
        generator = torch.Generator().manual_seed(generator_seed)
        per_epoch = [torch.empty((), dtype=torch.int64).random_(generator=generator).item() for _ in range(3)]
        # one worker (id 0): every batch of an epoch has the epoch's base seed
        assert records[rank]["worker_seeds"] == [seed for seed in per_epoch for _ in range(4)], rank
    seeds = {seed for rank in range(2) for seed in records[rank]["worker_seeds"]}
    assert len(seeds) == 6  # 2 ranks x 3 epochs, all different


@pytest.mark.timeout(300)
def test_ddp_deterministic_reaches_the_spawned_ranks(ddp_runs):
    records = ddp_runs[1]
    for rank in range(2):
        assert records[rank]["deterministic"] is True
        assert records[rank]["cublas"] == ":4096:8"


def test_ddp_ranks_start_loader_workers_the_platforms_default_way(ddp_runs):
    """A spawned rank starts its DataLoader workers as a torchrun-started one does (not by spawn)."""
    assert [r["start_method"] for r in ddp_runs[1]] == [multiprocessing.get_all_start_methods()[0]] * 2
