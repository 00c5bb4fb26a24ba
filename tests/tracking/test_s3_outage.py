"""Tracking TrainLoops while the bucket is down, and resuming from the bucket on a new machine.

Real HTTP against moto's standalone server (``tests/conftest.py``); an outage is that server
stopped after the bucket check at the start of ``fit`` (connections are refused).
"""
import logging
import os
import time
import zipfile

import pytest
import torch

from aitoolbox.cloud.AWS.s3 import get_s3_client
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.train_loop import TrainLoop, TrainLoopCheckpoint, TrainLoopCheckpointEndSave
from tests.tracking.helpers import loop_args

PREFIX = "runs/team-a"


class StopServerAtStart(AbstractCallback):
    """Stops the S3 server when training begins (the bucket check at the start of ``fit`` passed)."""

    def __init__(self, server):
        super().__init__("stop server")
        self.server = server

    def on_train_begin(self):
        self.server.stop()


def _bucket_keys(bucket: str, prefix: str = "") -> list:
    client = get_s3_client()
    return sorted(item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                  for item in page.get("Contents", []))


def _warnings(caplog, name_prefix="aitoolbox"):
    return [r.getMessage() for r in caplog.records if r.name.startswith(name_prefix) and r.levelno >= logging.WARNING]


@pytest.mark.timeout(120)
def test_keep_one_during_an_outage_keeps_local_disk_bounded_and_logs_once(moto_server, s3_bucket, tmp_path,
                                                                          fast_uploads, caplog):
    loop = TrainLoopCheckpoint(*loop_args(), "proj", "exp", tmp_path, {}, bucket_name=s3_bucket,
                               rm_subopt_local_models=True, num_best_checkpoints_kept=1,
                               show_progress=False)
    loop.experiment_store.flush_timeout = 1.0
    checkpoints = os.path.join(loop.experiment_dir, "checkpoint_model")
    try:
        with caplog.at_level(logging.DEBUG, logger="aitoolbox"):
            loop.fit(num_epochs=10, callbacks=[StopServerAtStart(moto_server)])
        local = sorted(f for f in os.listdir(checkpoints) if f.endswith(".pt"))
        assert len(local) <= 2, local  # was: all 10, kept until their uploads succeeded
        assert "model_epoch_10.pt" in local  # the newest, the resume point, stays until uploaded
        uploader_lines = _warnings(caplog, "aitoolbox.cloud.uploader")
        assert len(uploader_lines) == 1, uploader_lines  # was: one warning per failed attempt
        assert s3_bucket in uploader_lines[0] and moto_server.endpoint_url in uploader_lines[0]
        assert "EndpointConnectionError" in uploader_lines[0]
        assert loop.experiment_store._uploader.num_failed_attempts >= 3  # it did keep retrying
        assert len(_warnings(caplog)) <= 3, _warnings(caplog)  # + the list of files not uploaded
        assert not any(key.endswith(f"model_epoch_{e}.pt") for e in range(1, 10)
                       for key in loop.experiment_store.pending_uploads())  # superseded: cancelled
    finally:
        moto_server.start()
    assert loop.experiment_store.flush(timeout=30)
    run_prefix = f"proj/{os.path.basename(loop.experiment_dir)}/checkpoint_model/"
    assert [k for k in _bucket_keys(s3_bucket, run_prefix) if k.endswith(".pt")] == \
        [run_prefix + name for name in local]
    assert any("answers again" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(120)
def test_the_final_wait_is_bounded_and_names_the_files_not_uploaded(moto_server, s3_bucket, tmp_path,
                                                                   fast_uploads, caplog, monkeypatch):
    loop = TrainLoopCheckpointEndSave(*loop_args(), "proj", "exp", tmp_path, {}, bucket_name=s3_bucket,
                                      show_progress=False)
    store = loop.experiment_store
    store.flush_timeout = 1.5
    waited = []
    finish_run = store.finish_run

    def timed_finish_run(*args, **kwargs):
        started = time.monotonic()
        try:
            return finish_run(*args, **kwargs)
        finally:
            waited.append(time.monotonic() - started)
    monkeypatch.setattr(store, "finish_run", timed_finish_run)
    try:
        with caplog.at_level(logging.INFO, logger="aitoolbox"):
            loop.fit(num_epochs=2, callbacks=[StopServerAtStart(moto_server)])
        assert len(waited) >= 2  # every saver waits at the end, out of one budget
        assert 1.4 <= sum(waited) <= store.flush_timeout + 1.0, waited
        missing = store.missing_files()
        assert {"model/model.pt", "checkpoint_model/model_epoch_2.pt", "hyperparams.json"} <= set(missing)
        assert all(os.path.isfile(os.path.join(loop.experiment_dir, name)) for name in missing)
        reports = [line for line in _warnings(caplog) if "did not reach" in line]
        assert reports and reports[-1].count(", ") + 1 >= len(missing)
        assert all(name in reports[-1] for name in missing), reports[-1]
        assert f"s3://{s3_bucket}/proj/{os.path.basename(loop.experiment_dir)}/" in reports[-1]
        assert "flush_timeout=1.5s" in reports[-1]
    finally:
        moto_server.start()
    assert store.flush(timeout=30) and store.missing_files() == []


def _train(loop, epochs):
    loop.fit(num_epochs=epochs)
    return [p.detach().clone() for p in loop.model.parameters()]


def _flip_a_data_byte(path: str) -> None:
    """Change one byte inside the biggest tensor record of a torch.save zip (its CRC-32 then fails)."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        f.seek(info.header_offset + 30 + name_len + extra_len + info.file_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.timeout(120)
def test_resume_on_a_new_machine_continues_from_the_bucket(s3_bucket, tmp_path, caplog):
    first = TrainLoopCheckpoint(*loop_args(), "proj", "exp", tmp_path / "machine_a", {}, bucket_name=s3_bucket,
                                cloud_dir_prefix=PREFIX, show_progress=False)
    first.fit(num_epochs=3)
    assert first.experiment_store.pending_uploads() == []
    run = os.path.basename(first.experiment_dir)
    # the newest checkpoint in the bucket is damaged: the lookup must pass over it, as locally
    newest_key = f"{PREFIX}/proj/{run}/checkpoint_model/model_epoch_3.pt"
    damaged = tmp_path / "damaged.pt"
    get_s3_client().download_file(s3_bucket, newest_key, str(damaged))
    _flip_a_data_byte(str(damaged))
    get_s3_client().upload_file(str(damaged), s3_bucket, newest_key)

    with caplog.at_level(logging.INFO, logger="aitoolbox"):
        resumed = TrainLoopCheckpoint(*loop_args(seed=5), "proj", "exp", tmp_path / "machine_b", {},
                                      bucket_name=s3_bucket, cloud_dir_prefix=PREFIX, show_progress=False,
                                      resume=True)
    assert os.path.basename(resumed.experiment_dir) == run  # the same run, in the same bucket folder
    assert resumed.resumed_from == os.path.join(resumed.experiment_dir, "checkpoint_model", "model_epoch_2.pt")
    assert resumed.epoch == 2
    assert any("model_epoch_3.pt" in r.getMessage() and "checksums" in r.getMessage() for r in caplog.records)
    assert not os.path.exists(os.path.join(resumed.experiment_dir, "checkpoint_model", "model_epoch_3.pt"))
    weights = _train(resumed, 4)

    uninterrupted = _train(TrainLoop(*loop_args(), show_progress=False), 4)
    assert all(torch.equal(a, b) for a, b in zip(weights, uninterrupted))
    assert f"{PREFIX}/proj/{run}/checkpoint_model/model_epoch_4.pt" in _bucket_keys(s3_bucket, PREFIX)


@pytest.mark.timeout(60)
def test_resume_without_any_run_in_the_bucket_starts_a_new_one(s3_bucket, tmp_path):
    loop = TrainLoopCheckpoint(*loop_args(), "proj", "exp", tmp_path, {}, bucket_name=s3_bucket,
                               show_progress=False, resume=True)
    assert loop.resumed_from is None and loop.epoch == 0
    assert not os.path.exists(tmp_path / "proj")  # nothing created before fit
