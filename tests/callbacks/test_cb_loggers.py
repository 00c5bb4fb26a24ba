"""LoggerCallback with the CSV and TensorBoard loggers: the files read back hold the loop's values."""
import csv
import logging
import os

import pytest
import torch
from torch.utils.data import DataLoader

from aitoolbox.experiment.loggers.base import ExperimentLogger
from aitoolbox.experiment.loggers.csv_logger import CSVLogger
from aitoolbox.experiment.loggers.tensorboard_logger import TensorBoardLogger
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.callbacks.gradient import GradNormClip
from aitoolbox.torchtrain.callbacks.loggers import LoggerCallback
from tests.callbacks.cb_testkit import HistoryFeeder, Recorder, make_loop, mlp, regression_dataset

EPOCH_KEYS = ("loss", "accumulated_loss", "val_loss")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def batch_loss_recorder():
    return Recorder("on_batch_end", lambda tl: float(tl.loss_batch_accum[-1]), execution_order=0)


def test_csv_and_tensorboard_hold_the_batch_losses_and_the_history(tmp_path):
    pytest.importorskip("tensorboard")
    loop = make_loop()  # 6 batches per epoch
    losses = batch_loss_recorder()
    clip = GradNormClip(1.0)
    norms = Recorder("on_batch_end", lambda tl: float(clip.total_norms[0]), execution_order=50)
    csv_logger, tb_logger = CSVLogger(tmp_path / "csv"), TensorBoardLogger(tmp_path / "tb")
    callback = LoggerCallback([csv_logger, tb_logger], log_every_n_steps=2, flush_every_n_steps=2,
                              hyperparams={"lr": 0.05, "model": {"hidden": 8}})
    loop.fit(num_epochs=3, callbacks=[losses, clip, norms, HistoryFeeder("val_acc", [0.5, 0.6, 0.7]),
                                      callback])
    logged = list(range(1, 19, 2))  # batches 2, 4, ... (0-based 1, 3, ...), step = batches trained

    rows = read_csv(tmp_path / "csv" / "steps.csv")
    assert list(rows[0]) == ["step", "wall_time", "train/loss", "train/lr", "train/grad_norm"]
    assert [int(r["step"]) for r in rows] == [s + 1 for s in logged]
    assert [float(r["train/loss"]) for r in rows] == [pytest.approx(losses.records[s], rel=1e-7) for s in logged]
    assert [float(r["train/grad_norm"]) for r in rows] == [pytest.approx(norms.records[s], rel=1e-7) for s in logged]
    assert {r["train/lr"] for r in rows} == {"0.05"}
    epochs = read_csv(tmp_path / "csv" / "epochs.csv")
    assert [int(r["epoch"]) for r in epochs] == [0, 1, 2] and [int(r["step"]) for r in epochs] == [6, 12, 18]
    for key in EPOCH_KEYS:
        assert [float(r[key]) for r in epochs] == loop.train_history[key]  # repr: exact
    assert [float(r["val_acc"]) for r in epochs] == [0.5, 0.6, 0.7]
    assert read_csv(tmp_path / "csv" / "hyperparams.csv") == [{"name": "lr", "value": "0.05"},
                                                              {"name": "model/hidden", "value": "8"}]

    events = read_events(tmp_path / "tb")
    tb_loss = events.Scalars("train/loss")
    assert [e.step for e in tb_loss] == [s + 1 for s in logged]
    assert [e.value for e in tb_loss] == [pytest.approx(losses.records[s], rel=1e-6) for s in logged]
    for key in EPOCH_KEYS:
        assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars(key)] == \
            list(zip([6, 12, 18], loop.train_history[key]))
    assert "hyperparams/text_summary" in events.Tags()["tensors"]


def test_tracking_loop_experiment_folder_and_end_of_training_values(tmp_path):
    from aitoolbox.torchtrain.train_loop import TrainLoopCheckpointEndSave

    model = mlp()
    loader = DataLoader(regression_dataset(), batch_size=8)
    loop = TrainLoopCheckpointEndSave(model, loader, loader, loader, torch.optim.SGD(model.parameters(), lr=0.05),
                                      torch.nn.MSELoss(), "proj", "exp", str(tmp_path), {"lr": 0.05},
                                      val_result_package=None, test_result_package=None,
                                      cloud_save_mode=None, show_progress=False)
    loop.fit(num_epochs=2, callbacks=[LoggerCallback(CSVLogger(), flush_every_n_steps=1000)])
    folder = os.path.join(loop.experiment_dir, "logs")
    assert len(read_csv(os.path.join(folder, "steps.csv"))) == 12
    assert read_csv(os.path.join(folder, "metrics.csv")) == [
        {"step": "12", "name": "train_end_test_loss", "value": repr(loop.train_history["train_end_test_loss"][0])}]
    assert read_csv(os.path.join(folder, "hyperparams.csv"))[0] == {"name": "lr", "value": "0.05"}


class FlakyLogger(ExperimentLogger):
    """Fails while ``down`` is True; records what it received."""

    name = "Flaky"

    def __init__(self):
        self.down, self.steps, self.finalized = False, [], None

    def log_steps(self, names, steps, wall_times, rows):
        if self.down:
            raise ConnectionError("server down")
        self.steps += list(steps)

    def log_metrics(self, metrics, step):
        if self.down:
            raise ConnectionError("server down")

    def finalize(self, status="success"):
        self.finalized = status


class Toggle(AbstractCallback):
    """Takes the flaky logger down for the batches [down_at, up_at)."""

    def __init__(self, flaky, down_at, up_at):
        super().__init__("Toggle", execution_order=-1)
        self.flaky, self.down_at, self.up_at = flaky, down_at, up_at

    def on_batch_end(self):
        it = self.train_loop_obj.total_iteration_idx
        self.flaky.down = self.down_at <= it < self.up_at


def test_a_failing_logger_warns_once_training_goes_on_and_its_values_arrive_later(tmp_path, caplog):
    flaky = FlakyLogger()
    loop = make_loop()
    callback = LoggerCallback([flaky, CSVLogger(tmp_path)], flush_every_n_steps=1, retry_after_s=0)
    with caplog.at_level(logging.WARNING, logger="aitoolbox"):
        loop.fit(num_epochs=3, callbacks=[callback, Toggle(flaky, 2, 9)])
    failures = [r for r in caplog.records if "Flaky logger failed" in r.getMessage()]
    assert len(failures) == 1 and "server down" in failures[0].getMessage()
    assert loop.epoch == 3
    assert flaky.steps == list(range(1, 19))  # held back while down, delivered in order afterwards
    assert flaky.finalized == "success"
    assert len(read_csv(tmp_path / "steps.csv")) == 18  # the other logger was not disturbed


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match=r"loggers\[0\]"):
        LoggerCallback(["csv"])
    with pytest.raises(ValueError, match="at least one logger"):
        LoggerCallback([])
    with pytest.raises(ValueError, match="log_every_n_steps"):
        LoggerCallback(CSVLogger("x"), log_every_n_steps=0)
    with pytest.raises(ValueError, match="CSVLogger has no folder"):
        make_loop().fit(num_epochs=1, callbacks=[LoggerCallback(CSVLogger())])


def test_logging_runs_on_the_main_process_only_and_keeps_tensors_until_the_flush(tmp_path):
    callback = LoggerCallback(CSVLogger(tmp_path), flush_every_n_steps=100)
    assert callback.device_idx_execution == 0
    seen = Recorder("on_batch_end", lambda tl: [type(b[2]) for b in callback._buffer], execution_order=2000)
    make_loop().fit(num_epochs=1, callbacks=[callback, seen])
    assert seen.records[-1] == [torch.Tensor] * 6  # not converted per step
    assert len(read_csv(tmp_path / "steps.csv")) == 6


def test_block_encoding_of_tensorboard_events_equals_the_record_by_record_one(tmp_path):
    import numpy as np
    from aitoolbox.experiment.loggers.tensorboard_logger import EventFileWriter

    writer = EventFileWriter(str(tmp_path))
    tags = ("train/loss", "train/lr", "train/grad_norm")
    steps = [1, 2, 127, 128, 129, 16383, 16384, 2 ** 21 + 5, 2 ** 35]  # varints of 1 to 6 bytes
    wall_times = [1.7e9 + i / 3 for i in range(len(steps))]
    values = np.random.default_rng(0).normal(size=(len(steps), 3))
    block = writer.scalar_block(steps, wall_times, tags, values)
    one_by_one = b"".join(writer.scalar_event(s, t, tags, list(v)) for s, t, v in zip(steps, wall_times, values))
    assert block == one_by_one
    writer.write_records([block], framed=True)
    writer.close()
    events = read_events(tmp_path)
    assert [e.step for e in events.Scalars("train/lr")] == steps
    assert [e.value for e in events.Scalars("train/grad_norm")] == pytest.approx(values[:, 2].tolist(), rel=1e-6)


def test_multiloss_and_several_optimizers_get_a_column_each(tmp_path):
    from aitoolbox import TrainLoop
    from aitoolbox.torchtrain.multi_loss_optim import MultiOptimizer
    from torch.utils.data import TensorDataset
    from tests.torchtrain.ddp_helpers import TwoHeadNet

    model = TwoHeadNet()
    data = TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    optimizer = MultiOptimizer([torch.optim.SGD(list(model.trunk.parameters()) + list(model.head_a.parameters()),
                                                lr=0.1), torch.optim.SGD(model.head_b.parameters(), lr=0.2)])
    loop = TrainLoop(model, DataLoader(data, batch_size=8), None, None, optimizer, torch.nn.MSELoss(),
                     show_progress=False)
    loop.fit(num_epochs=1, callbacks=[LoggerCallback(CSVLogger(tmp_path))])
    rows = read_csv(tmp_path / "steps.csv")
    assert list(rows[0])[2:] == ["train/loss", "train/loss_a", "train/loss_b", "train/lr_opt0_group0",
                                 "train/lr_opt1_group0"]
    for row in rows:
        assert float(row["train/loss"]) == pytest.approx(float(row["train/loss_a"]) + float(row["train/loss_b"]))
        assert (row["train/lr_opt0_group0"], row["train/lr_opt1_group0"]) == ("0.1", "0.2")


class HalveTensorLr(AbstractCallback):
    """After every batch, halves a tensor learning rate in place (as torch's schedulers update one)."""

    def __init__(self):
        super().__init__("halve the lr in place", execution_order=2000)  # after the logger's hook

    def on_batch_end(self):
        for group in self.train_loop_obj.optimizer.param_groups:
            group["lr"].mul_(0.5)


def test_a_tensor_learning_rate_changed_in_place_is_logged_as_it_was_at_each_step(tmp_path):
    from aitoolbox import TrainLoop

    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.1))
    loop = TrainLoop(model, DataLoader(regression_dataset(), batch_size=8), None, None, optimizer,
                     torch.nn.MSELoss(), show_progress=False)
    loop.fit(num_epochs=1, callbacks=[LoggerCallback(CSVLogger(tmp_path)), HalveTensorLr()])
    rows = read_csv(tmp_path / "steps.csv")
    assert len(rows) > 2
    assert [float(r["train/lr"]) for r in rows] == [pytest.approx(0.1 * 0.5 ** k, rel=1e-6) for k in range(len(rows))]


def test_a_block_by_columns_writes_what_the_same_rows_write(tmp_path):
    # CSV: the same file from log_columns and log_steps, a constant column formatted once per block
    # reads back as every row's value, a missing value (None) is a blank; TensorBoard: a missing
    # value is left out of its step (not written as NaN)
    pytest.importorskip("tensorboard")
    names, steps, wall_times = ["train/loss", "train/lr", "train/grad_norm"], [1, 2, 3], [1.7e9, 1.7e9 + 0.5, 1.7e9 + 1]
    columns = [[0.75, 0.5, 0.25], [0.05, 0.05, 0.05], [1.5, None, 2.5]]
    rows = [[c[i] for c in columns] for i in range(3)]
    by_columns, by_rows, tb = CSVLogger(tmp_path / "c"), CSVLogger(tmp_path / "r"), TensorBoardLogger(tmp_path / "tb")
    for lg in (by_columns, by_rows, tb):
        lg.setup(None)
    by_columns.log_columns(names, steps, wall_times, columns)
    by_rows.log_steps(names, steps, wall_times, rows)
    tb.log_columns(names, steps, wall_times, columns)
    for lg in (by_columns, by_rows, tb):
        lg.finalize()
    with open(by_columns.steps_path) as a, open(by_rows.steps_path) as b:
        assert a.read() == b.read()
    read = read_csv(by_columns.steps_path)
    assert [r["train/lr"] for r in read] == ["0.05"] * 3 and [r["train/grad_norm"] for r in read] == ["1.5", "", "2.5"]
    assert [float(r["train/loss"]) for r in read] == columns[0]
    events = read_events(tmp_path / "tb")
    assert [(e.step, e.value) for e in events.Scalars("train/grad_norm")] == [(1, 1.5), (3, 2.5)]
    assert [e.value for e in events.Scalars("train/loss")] == columns[0]


def test_the_default_log_columns_hands_rows_to_log_steps():
    seen = []

    class RowLogger(ExperimentLogger):
        def log_steps(self, names, steps, wall_times, rows):
            seen.append((names, steps, wall_times, rows))

    RowLogger().log_columns(["a", "b"], (4, 5), (1.0, 2.0), [(0.1, 0.2), [3.0, None]])
    assert seen == [(["a", "b"], (4, 5), (1.0, 2.0), [[0.1, 3.0], [0.2, None]])]


def test_block_crcs_of_many_records_per_varint_width(tmp_path):
    # 300 records (varints of 1 and 2 bytes, float32 values of every kind of bit pattern): the
    # block equals the record-by-record encoding byte for byte
    import numpy as np
    from aitoolbox.experiment.loggers.tensorboard_logger import EventFileWriter

    writer = EventFileWriter(str(tmp_path))
    steps = list(range(1, 301))
    values = np.random.default_rng(1).normal(size=(300, 2)) * 10.0 ** np.arange(-3, 3).repeat(50)[:, None]
    wall_times = [1.7e9 + i * 2.1e-4 for i in steps]
    block = writer.scalar_block(steps, wall_times, ("a", "b/c"), values)
    one_by_one = [writer.scalar_event(s, t, ("a", "b/c"), list(v)) for s, t, v in zip(steps, wall_times, values)]
    assert block == b"".join(one_by_one)
    writer.close()
