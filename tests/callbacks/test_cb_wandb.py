"""WandBTracking in wandb's offline mode: the run file is read back record by record.

The ``.wandb`` run file is a LevelDB-style log (a 7-byte ``:W&B`` header, then 32 KiB blocks of
records with a 7-byte header: crc32, length, type) of ``wandb_internal_pb2.Record`` protobufs;
``read_run_records`` parses it with wandb's own protobuf classes.
"""
import glob
import json
import os
import struct
import subprocess
import sys

import pytest

from aitoolbox.torchtrain.callbacks.wandb import AlertConfig, WandBTracking
from tests.callbacks.cb_testkit import HistoryFeeder, make_loop

wandb = pytest.importorskip("wandb")

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_run_records(path):
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    offset, pending, records = HEADER, b"", []
    while offset + HEADER <= len(data):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < HEADER:
            offset += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset:offset + HEADER])
        chunk = data[offset + HEADER:offset + HEADER + length]
        offset += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def history_rows(records):
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_root"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    os.makedirs(tmp_path / "wandb_root", exist_ok=True)
    yield tmp_path
    if wandb.run is not None:
        wandb.finish()


def finish_and_read(folder):
    """Finish the run, then the records of the run file under ``folder``.

    ``wandb.finish()`` can return before wandb's service process has written the file out;
    ``wandb.teardown()`` stops the service, which flushes it.
    """
    wandb.finish()
    wandb.teardown()
    [path] = glob.glob(os.path.join(str(folder), "**", "offline-run-*", "run-*.wandb"), recursive=True)
    records = read_run_records(path)
    assert "exit" in [r.WhichOneof("record_type") for r in records]
    return records


def test_alert_config_fields_and_defaults():
    alert = AlertConfig("my_metric", 10.3)
    assert list(alert.__annotations__) == ["metric_name", "threshold_value", "objective", "wandb_alert_level"]
    assert (alert.objective, alert.wandb_alert_level) == ("maximize", None)
    full = AlertConfig("m", 1.0, "minimize", wandb.AlertLevel.ERROR)
    assert full.wandb_alert_level == wandb.AlertLevel.ERROR


@pytest.mark.parametrize("alerts,error", [("metric", TypeError), ({"metric": 2}, TypeError),
                                          (["metric"], TypeError), ([AlertConfig("m", 1.0), "m"], TypeError),
                                          ([AlertConfig("m", 1.0, objective="blaaa")], ValueError)])
def test_bad_alerts_are_rejected_at_construction(alerts, error):
    with pytest.raises(error):
        WandBTracking(alerts=alerts)


def test_offline_run_holds_the_epoch_history_and_batch_losses(offline_wandb):
    loop = make_loop()  # 6 batches per epoch
    callback = WandBTracking(batch_log_frequency=3, hyperparams={"lr": 0.05}, tags=["t1"], project_name="proj",
                             experiment_name="exp", is_project=False, log_dir=str(offline_wandb / "wb"))
    loop.fit(num_epochs=2, callbacks=[HistoryFeeder("val_acc", [0.25, 0.5]), callback])
    records = finish_and_read(offline_wandb / "wb")
    rows = history_rows(records)
    epoch_rows = [r for r in rows if "epoch" in r]
    assert [r["epoch"] for r in epoch_rows] == [0, 1]
    assert [r["_step"] for r in epoch_rows] == [6, 12]
    for row, epoch in zip(epoch_rows, range(2)):
        assert row["loss_at_epoch_end/loss"] == pytest.approx(loop.train_history["loss"][epoch])
        assert row["loss_at_epoch_end/val_loss"] == pytest.approx(loop.train_history["val_loss"][epoch])
        assert row["metrics/val_acc"] == [0.25, 0.5][epoch]
    batch_steps = sorted(r["_step"] for r in rows if "train_loss/last_batch_loss" in r)
    assert batch_steps == [1, 4, 7, 10]  # batches 0, 3, 6, 9 (step = batches done)
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.display_name, list(run.tags)) == ("proj", "exp", ["t1"])
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["lr"]["value"] == 0.05 if isinstance(config["lr"], dict) else config["lr"] == 0.05


def test_offline_run_inside_the_experiment_folder_and_alerts(offline_wandb):
    callback = WandBTracking(project_name="proj", experiment_name="exp",
                             local_model_result_folder_path=str(offline_wandb / "results"),
                             hyperparams={"a": 1}, metric_names=["val_loss"],
                             alerts=[AlertConfig("loss_at_epoch_end/val_loss", -1.0, objective="minimize")])
    loop = make_loop()
    loop.fit(num_epochs=1, callbacks=[callback])
    records = finish_and_read(callback.store.path)  # wandb's run directory inside the experiment folder
    [row] = [r for r in history_rows(records) if "epoch" in r]
    assert set(row) >= {"epoch", "loss_at_epoch_end/val_loss"} and "loss_at_epoch_end/loss" not in row
    alerts = [r.alert for r in records if r.WhichOneof("record_type") == "alert"]
    assert [a.title for a in alerts] == ["loss_at_epoch_end/val_loss is too high"]


def test_pre_initialized_run_is_used(offline_wandb):
    run = wandb.init(project="mine", dir=str(offline_wandb / "pre"))
    callback = WandBTracking(wandb_pre_initialized=True, is_project=False)
    make_loop().fit(num_epochs=1, callbacks=[callback])
    assert callback.run is run
    assert [r["epoch"] for r in history_rows(finish_and_read(offline_wandb / "pre")) if "epoch" in r] == [0]


def test_missing_wandb_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r'pip install "aitoolbox\[wandb\]"'):
        make_loop().fit(num_epochs=1, callbacks=[WandBTracking(is_project=False)])


def test_importing_the_callback_does_not_import_wandb():
    code = ("import sys, aitoolbox.torchtrain.callbacks.wandb; "
            "assert 'wandb' not in sys.modules, 'wandb imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_wandb_logger_offline_run_holds_the_batch_losses_and_the_history(offline_wandb):
    from aitoolbox.experiment.loggers.wandb_logger import WandBLogger
    from aitoolbox.torchtrain.callbacks.loggers import LoggerCallback
    from tests.callbacks.cb_testkit import Recorder

    loop = make_loop()  # 6 batches per epoch
    losses = Recorder("on_batch_end", lambda tl: float(tl.loss_batch_accum[-1]), execution_order=0)
    logger = WandBLogger(project="proj", name="run", save_dir=str(offline_wandb / "wl"), mode="offline")
    loop.fit(num_epochs=2, callbacks=[losses, LoggerCallback(logger, flush_every_n_steps=4,
                                                             hyperparams={"lr": 0.05})])
    assert logger.run._is_finished  # finalize finished the run it started
    records = finish_and_read(offline_wandb / "wl")
    rows = history_rows(records)
    batch_rows = [r for r in rows if "train/loss" in r]
    assert [r["_step"] for r in batch_rows] == list(range(1, 13))
    assert [r["train/loss"] for r in batch_rows] == [pytest.approx(v, rel=1e-6) for v in losses.records]
    assert {r["train/lr"] for r in batch_rows} == {0.05}
    epoch_rows = [r for r in rows if "val_loss" in r]
    assert [(r["_step"], r["epoch"]) for r in epoch_rows] == [(6, 0), (12, 1)]
    for key in ("loss", "accumulated_loss", "val_loss"):
        assert [r[key] for r in epoch_rows] == pytest.approx(loop.train_history[key], rel=1e-12)
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.display_name) == ("proj", "run")
    configs = [{i.key: json.loads(i.value_json) for i in r.config.update} for r in records
               if r.WhichOneof("record_type") == "config"]
    assert any(c.get("lr") in (0.05, {"value": 0.05}) for c in configs), configs
