"""TensorBoard callbacks: event files read back with TensorBoard's own reader."""
import os
import subprocess
import sys

import pytest

from aitoolbox.torchtrain.callbacks.tensorboard import (TensorboardFullTracking, TensorboardReporterBaseCB,
                                                        TensorboardTrainBatchLoss, TensorboardTrainHistoryMetric)
from tests.callbacks.cb_testkit import HistoryFeeder, Recorder, make_loop

pytest.importorskip("tensorboard")


def read_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def scalars(events, tag):
    return [(s.step, s.value) for s in events.Scalars(tag)]


def test_full_tracking_writes_history_metrics_and_batch_losses(tmp_path):
    loop = make_loop()  # 6 batches per epoch
    batch_losses = Recorder("on_batch_end", lambda tl: float(tl.loss_batch_accum[-1]), execution_order=0)
    epoch_means = Recorder("on_batch_end", lambda tl: float(tl.parse_loss(tl.loss_batch_accum)), execution_order=0)
    callback = TensorboardFullTracking(log_dir=str(tmp_path / "tb"), batch_log_every_n_steps=4)
    loop.fit(num_epochs=3, callbacks=[batch_losses, epoch_means, callback])
    assert callback.tb_writer is None and callback.writer is None  # closed at the end of training
    assert callback.full_log_dir == str(tmp_path / "tb")  # no experiment: log_dir as given
    events = read_events(tmp_path / "tb")
    for name in ("loss", "val_loss", "accumulated_loss"):
        steps, values = zip(*scalars(events, f"loss/{name}"))
        assert steps == (0, 1, 2)
        assert values == pytest.approx(loop.train_history[name], rel=1e-6)
    logged = [0, 4, 8, 12, 16]
    last = scalars(events, "train_loss/last_batch_loss")
    assert [s for s, _ in last] == logged
    assert [v for _, v in last] == pytest.approx([batch_losses.records[i] for i in logged], rel=1e-6)
    mean = scalars(events, "train_loss/accumulated_batch_loss")
    assert [v for _, v in mean] == pytest.approx([epoch_means.records[i] for i in logged], rel=1e-6)
    assert list(tmp_path.joinpath("tb").glob("events.out.tfevents.*"))


def test_history_metric_inside_the_experiment_folder_and_mirrored_to_s3(s3_bucket, tmp_path):
    from aitoolbox.cloud.AWS.s3 import list_keys

    callback = TensorboardTrainHistoryMetric(metric_names=["val_loss", "val_acc"], project_name="proj",
                                             experiment_name="exp", local_model_result_folder_path=str(tmp_path),
                                             cloud_save_mode="s3", bucket_name=s3_bucket, cloud_dir_prefix="runs")
    loop = make_loop()
    loop.fit(num_epochs=2, callbacks=[HistoryFeeder("val_acc", [0.5, 0.75]), callback])
    store = callback.store
    expected_dir = os.path.join(store.path, "tensorboard", "proj_exp")
    assert callback.full_log_dir == expected_dir
    events = read_events(expected_dir)
    assert sorted(events.Tags()["scalars"]) == ["loss/val_loss", "metrics/val_acc"]
    assert scalars(events, "metrics/val_acc") == [(0, 0.5), (1, 0.75)]
    local_files = sorted(os.listdir(expected_dir))
    keys = list_keys(s3_bucket, f"runs/proj/{store.folder.name}/tensorboard/proj_exp/")
    assert sorted(k.rsplit("/", 1)[1] for k in keys) == local_files and local_files


def test_batch_loss_only_logs_every_batch_under_the_loops_experiment(tmp_path):
    from aitoolbox.torchtrain.train_loop import TrainLoopCheckpoint
    from tests.callbacks.cb_testkit import mlp, regression_dataset
    import torch
    from torch.utils.data import DataLoader

    model = mlp()
    loop = TrainLoopCheckpoint(model, DataLoader(regression_dataset(), batch_size=8), None, None,
                               torch.optim.SGD(model.parameters(), lr=0.05), torch.nn.MSELoss(),
                               "proj", "exp", str(tmp_path), {}, cloud_save_mode=None, show_progress=False)
    callback = TensorboardTrainBatchLoss(batch_log_frequency=1, log_dir="tb_logs")
    loop.fit(num_epochs=2, callbacks=[callback])
    folder = os.path.join(loop.experiment_dir, "tb_logs", "proj_exp")
    assert callback.full_log_dir == folder
    events = read_events(folder)
    assert sorted(events.Tags()["scalars"]) == ["train_loss/accumulated_batch_loss", "train_loss/last_batch_loss"]
    assert [s for s, _ in scalars(events, "train_loss/last_batch_loss")] == list(range(12))
    assert isinstance(callback, TensorboardReporterBaseCB)


def test_not_a_project_folder_with_names_adds_a_sub_folder(tmp_path):
    callback = TensorboardTrainHistoryMetric(log_dir=str(tmp_path / "tb"), is_project=False, project_name="p",
                                             experiment_name="e")
    make_loop().fit(num_epochs=1, callbacks=[callback])
    assert callback.full_log_dir == str(tmp_path / "tb" / "p_e")
    assert "loss/loss" in read_events(tmp_path / "tb" / "p_e").Tags()["scalars"]


def test_bad_frequency_is_rejected():
    with pytest.raises(ValueError, match="batch_log_frequency"):
        TensorboardTrainBatchLoss(batch_log_frequency=-1)


def test_tensorboard_missing_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r'pip install "aitoolbox\[tensorboard\]"'):
        make_loop().fit(num_epochs=1, callbacks=[TensorboardFullTracking()])


def test_importing_aitoolbox_and_the_callback_does_not_import_tensorboard():
    code = ("import sys, aitoolbox, aitoolbox.torchtrain.callbacks.tensorboard; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorboard', 'matplotlib', 'boto3')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
