"""Streams, uneven inputs and weighted accumulation under DDP / FSDP (gloo, 2 CPU processes): issue 15."""
import copy
import logging

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import ddp_helpers as helpers
import ddp_stream_helpers as stream_helpers
from aitoolbox import TrainLoop
from aitoolbox.torchtrain.data.sharded_stream import ShardedIterable
from aitoolbox.torchtrain.train_loop.strategies import data as ddp_data

CPU_DDP = dict(num_gpus=2, on_gpu=False, backend="gloo", timeout=60)


@pytest.fixture
def no_master_env(monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def _loop(model, train_loader, val_loader=None, lr=0.1, gpu_mode="ddp", **kwargs):
    return TrainLoop(model, train_loader, val_loader, None, torch.optim.SGD(model.parameters(), lr=lr),
                     nn.MSELoss(), gpu_mode=gpu_mode, show_progress=False, **kwargs)


def _sgd_step(model, loss, lr=0.1):
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad


@pytest.mark.timeout(150)
@pytest.mark.parametrize("gpu_mode", ["ddp", "fsdp"])
def test_ranks_with_7_and_5_batches_end_the_epoch_together(gpu_mode, tmp_path, no_master_env):
    stream = stream_helpers.PerRankBatches([[4] * 7, [4] * 5])
    model = helpers.RegressionNet()
    initial = copy.deepcopy(model)
    loop = _loop(model, stream, end_auto_eval=False, gpu_mode=gpu_mode)
    loop.fit(num_epochs=2, grad_accumulation=2, callbacks=[stream_helpers.RecordSteps(str(tmp_path))], **CPU_DDP)

    records = helpers.load_rank_files(str(tmp_path), "steps")
    for record in records:  # the epoch ends on both ranks after the shorter rank's 5 batches
        assert record["epoch"] == 2 and record["epoch_batches"] == [5, 5]
        assert [(e, i) for e, i, _ in record["steps"]] == [(e, i) for e in range(2) for i in (1, 3, 4)]
    for (_, _, w0), (_, _, w1) in zip(records[0]["steps"], records[1]["steps"]):
        for a, b in zip(w0, w1):  # gradients synchronised on every step: the same weights
            assert torch.equal(a, b)

    # The reference: each step is the mean gradient of the window's batches of both ranks.
    reference = initial
    criterion = nn.MSELoss()
    per_rank = [stream.rank_batches(0)[:5], stream.rank_batches(1)]
    for _ in range(2):
        for window in ((0, 1), (2, 3), (4,)):
            losses = [criterion(reference(per_rank[r][b][0]), per_rank[r][b][1]) for r in (0, 1) for b in window]
            _sgd_step(reference, sum(losses) / len(losses))
    assert helpers.max_weight_diff(model, reference) < 1e-6


class SumLossNet(helpers.RegressionNet):
    """Reports its loss as a LossSum: squared errors summed, and their count."""

    def get_loss(self, batch_data, criterion, device):
        from aitoolbox.torchtrain import LossSum
        x, y = batch_data
        return LossSum(((self(x) - y) ** 2).sum(), torch.tensor(len(y)))


@pytest.mark.timeout(150)
@pytest.mark.parametrize("loss_weighting, gpu_mode", [("samples", "ddp"), ("tokens", "ddp"), ("samples", "fsdp")])
def test_weighted_window_on_two_ranks_equals_one_big_batch(loss_weighting, gpu_mode, tmp_path, no_master_env):
    stream = stream_helpers.PerRankBatches([[8, 8, 3], [5, 2, 6]])
    model = (SumLossNet if loss_weighting == "tokens" else helpers.RegressionNet)()
    initial = copy.deepcopy(model)
    loop = _loop(model, stream, end_auto_eval=False, gpu_mode=gpu_mode)
    loop.fit(num_epochs=1, grad_accumulation=3, loss_weighting=loss_weighting,
             callbacks=[stream_helpers.RecordSteps(str(tmp_path))], **CPU_DDP)

    everything = stream.rank_batches(0) + stream.rank_batches(1)
    x, y = torch.cat([b[0] for b in everything]), torch.cat([b[1] for b in everything])
    reference = copy.deepcopy(initial)
    big_loss = nn.functional.mse_loss(reference(x), y)
    _sgd_step(reference, big_loss)
    assert loop.num_optimizer_steps == 1
    assert helpers.max_weight_diff(model, reference) < 1e-6
    for record in helpers.load_rank_files(str(tmp_path), "steps"):
        # the history's loss is the weighted mean over both ranks: the big batch's loss
        assert record["history"]["accumulated_loss"][0] == pytest.approx(float(big_loss.detach()), abs=1e-6)


@pytest.mark.timeout(150)
def test_sharded_stream_splits_across_ranks_and_workers_and_evaluates_exactly(tmp_path, no_master_env):
    train = DataLoader(ShardedIterable(stream_helpers.IndexStream(40)), batch_size=5, num_workers=1)
    val = DataLoader(ShardedIterable(stream_helpers.IndexStream(21, seed=2)), batch_size=4)
    model = helpers.RegressionNet()
    loop = _loop(model, train, val, lr=0.01)
    loop.fit(num_epochs=1, callbacks=[helpers.RecordSeenIndices(str(tmp_path)),
                                      stream_helpers.RecordValidation(str(tmp_path))], **CPU_DDP)

    seen = [epochs[0] for epochs in helpers.load_rank_files(str(tmp_path), "seen")]
    assert not set(seen[0]) & set(seen[1])  # no duplicates across ranks (nor workers)
    assert sorted(seen[0] + seen[1]) == list(range(40))
    # After fit the parent evaluates the whole stream alone: the ranks' split evaluation matched it.
    expected = float(loop.evaluate_loss_on_validation_set())
    for result in helpers.load_rank_files(str(tmp_path), "val"):
        assert result["loss"] == pytest.approx(expected, rel=1e-6)
        assert torch.equal(result["y_true"], torch.arange(21, dtype=torch.float32).unsqueeze(1))
        assert len(result["y_pred"]) == 21


def test_an_unsplit_stream_warns_and_a_sharded_one_is_told_its_rank(caplog):
    unsplit = DataLoader(stream_helpers.IndexStream(8), batch_size=2)
    with caplog.at_level(logging.WARNING, logger="aitoolbox"):
        assert ddp_data.distributed_train_loader(unsplit, rank=1, world_size=2, seed=0) is unsplit
    assert "not split across the ranks" in caplog.text and "ShardedIterable" in caplog.text

    caplog.clear()
    sharded = DataLoader(ShardedIterable(stream_helpers.IndexStream(8)), batch_size=2)
    with caplog.at_level(logging.WARNING, logger="aitoolbox"):
        assert ddp_data.distributed_train_loader(sharded, rank=1, world_size=2, seed=0) is sharded
    assert not caplog.text
    assert [int(i) for _, _, idx in sharded for i in idx] == [1, 3, 5, 7]


def test_sharded_iterable_splits_across_workers_without_duplicates():
    dataset = ShardedIterable(stream_helpers.IndexStream(24))
    per_rank = []
    for rank in range(2):
        dataset.set_rank(rank, 2)
        loader = DataLoader(dataset, batch_size=3, num_workers=2)
        per_rank.append(sorted(int(i) for _, _, idx in loader for i in idx))
    assert per_rank[0] == [i for i in range(24) if i % 4 in (0, 1)]
    assert per_rank[1] == [i for i in range(24) if i % 4 in (2, 3)]
    dataset.split = False  # a rank evaluating alone reads everything
    assert sorted(int(i) for _, _, idx in DataLoader(dataset, batch_size=5) for i in idx) == list(range(24))
