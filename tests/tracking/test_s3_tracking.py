"""Tracking TrainLoops against a real S3-compatible HTTP server (moto's standalone server on loopback).

The ``moto_server`` fixture points ``AWS_ENDPOINT_URL`` at the server, so these tests also show
that every S3 call honours it.
"""
import logging
import os
import shutil
import time

import pytest
import torch

from aitoolbox.cloud.AWS.s3 import get_s3_client
from aitoolbox.experiment.result_package.basic_packages import ClassificationResultPackage
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.callbacks.model_load import ModelLoadContinueTraining
from aitoolbox.torchtrain.train_loop import TrainLoop, TrainLoopCheckpoint, TrainLoopCheckpointEndSave
from tests.tracking.helpers import loop_args, tree

PREFIX = "runs/team-a"


def bucket_tree(bucket: str, prefix: str) -> dict:
    """{key relative to prefix: bytes} of every object under ``prefix/``."""
    client = get_s3_client()
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            objects[item["Key"][len(prefix) + 1:]] = body
    return objects


def test_end_to_end_local_and_bucket_hold_the_same_experiment(s3_bucket, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "train_utils.py").write_text("VALUE = 1\n")
    loop = TrainLoopCheckpointEndSave(*loop_args(), "proj", "exp", tmp_path / "results", {"lr": 0.01},
                                      val_result_package=ClassificationResultPackage(),
                                      cloud_save_mode="s3", bucket_name=s3_bucket, cloud_dir_prefix=PREFIX,
                                      source_dirs=[str(source)], iteration_save_freq=4, show_progress=False)
    loop.fit(num_epochs=2)
    local = tree(loop.experiment_dir)
    remote = bucket_tree(s3_bucket, f"{PREFIX}/proj/{os.path.basename(loop.experiment_dir)}")
    assert set(remote) == set(local) and remote == local
    for expected in ("checkpoint_model/model_epoch_2.pt", "checkpoint_model/model_iteration_8.pt",
                     "checkpoint_model/checkpoints.json", "model/model.pt", "results/results.json",
                     "results/train_history.csv", "results/plots/val_loss.png", "hyperparams.json",
                     "source_code.zip"):
        assert expected in remote
    assert loop.experiment_store.pending_uploads() == []


def test_continue_training_from_the_bucket(s3_bucket, tmp_path):
    loop = TrainLoopCheckpoint(*loop_args(), "proj", "exp", tmp_path, {}, bucket_name=s3_bucket,
                               show_progress=False)
    loop.fit(num_epochs=2)
    uri = loop.experiment_store.s3_uri(os.path.join(loop.experiment_dir, "checkpoint_model", "model_epoch_1.pt"))
    from_uri = TrainLoop(*loop_args(seed=5), show_progress=False).load_checkpoint(uri)
    assert from_uri.epoch == 1 and from_uri.total_iteration_idx == 6

    shutil.rmtree(loop.experiment_dir)  # only the bucket has the experiment now
    resumed = TrainLoop(*loop_args(seed=5), show_progress=False)
    load = ModelLoadContinueTraining(loop.experiment_timestamp, "checkpoint_model", project_name="proj",
                                     experiment_name="exp", local_model_result_folder_path=tmp_path,
                                     cloud_save_mode="s3", bucket_name=s3_bucket)
    resumed.fit(num_epochs=2, callbacks=[load])  # already at 2 epochs: loads, trains nothing
    assert load.loaded_path.endswith("/checkpoint_model/model_epoch_2.pt") and load.loaded_path.startswith("s3://")
    for p_resumed, p_trained in zip(resumed.model.parameters(), loop.model.parameters()):
        assert torch.equal(p_resumed, p_trained)


def test_save_and_load_checkpoint_with_s3_uri(s3_bucket):
    loop = TrainLoop(*loop_args(), show_progress=False)
    loop.fit(num_epochs=1)
    uri = f"s3://{s3_bucket}/manual/ckpt.pt"
    assert loop.save_checkpoint(uri) == uri
    restored = TrainLoop(*loop_args(seed=9), show_progress=False).load_checkpoint(uri)
    for p_restored, p_trained in zip(restored.model.parameters(), loop.model.parameters()):
        assert torch.equal(p_restored, p_trained)


def test_missing_bucket_is_a_clear_error_before_training(s3_endpoint_url, tmp_path):
    loop = TrainLoopCheckpoint(*loop_args(), "proj", "exp", tmp_path, {}, bucket_name="no-such-bucket-aitb")   # no network at construction, as in aitoolbox 1.8
    model_before = [p.detach().clone() for p in loop.model.parameters()]
    with pytest.raises(ValueError, match="'no-such-bucket-aitb'.*does not exist"):
        loop.fit(num_epochs=1)
    assert os.listdir(tmp_path) == []
    assert all(torch.equal(a, b) for a, b in zip(model_before, loop.model.parameters()))   # no training work


class StopServerAt(AbstractCallback):
    """Stops the S3 server at the start of epoch ``epoch`` (after the earlier uploads landed)."""

    def __init__(self, server, epoch: int):
        super().__init__("stop server")
        self.server, self.epoch = server, epoch

    def on_epoch_begin(self):
        if self.train_loop_obj.epoch == self.epoch:
            assert self.train_loop_obj.experiment_store.flush(timeout=20)
            self.server.stop()


class Score(AbstractCallback):
    def __init__(self, scores):
        super().__init__("score")
        self.scores = iter(scores)

    def on_epoch_end(self):
        self.train_loop_obj.insert_metric_result_into_history("val_score", next(self.scores))


def test_s3_outage_mid_run(moto_server, s3_bucket, tmp_path, fast_uploads, caplog, monkeypatch):
    secret, key_id = "SeCrEt-do-not-log-4242", "AKIDNOTLOGGED77"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    loop = TrainLoopCheckpointEndSave(*loop_args(), "proj", "exp", tmp_path, {}, bucket_name=s3_bucket,
                                      rm_subopt_local_models="val_score", num_best_checkpoints_kept=1,
                                      show_progress=False)
    loop.experiment_store.flush_timeout = 1.0
    checkpoints = os.path.join(loop.experiment_dir, "checkpoint_model")
    try:
        started = time.monotonic()
        with caplog.at_level(logging.DEBUG, logger="aitoolbox"):
            loop.fit(num_epochs=3, callbacks=[StopServerAt(moto_server, epoch=1), Score([0.9, 0.1, 0.2])])
        assert time.monotonic() - started < 15  # training did not wait for the dead server
        pending = loop.experiment_store.pending_uploads()
        assert any(key.endswith("model/model.pt") for key in pending)
        # local experiment complete; epoch 2 is sub-optimal: deleted although its upload had failed
        assert sorted(f for f in os.listdir(checkpoints) if f.endswith(".pt")) == \
            ["model_epoch_1.pt", "model_epoch_3.pt"]
        assert not any(key.endswith("model_epoch_2.pt") for key in pending)  # its upload was cancelled
        for name in ("model/model.pt", "results/results.json", "results/plots/loss.png"):
            assert os.path.isfile(os.path.join(loop.experiment_dir, name))
        assert any("retrying" in r.getMessage() for r in caplog.records)
        assert any("still pending" in r.getMessage() for r in caplog.records)
    finally:
        moto_server.start()
    assert loop.experiment_store.flush(timeout=30)  # the failed uploads are retried and land
    remote = bucket_tree(s3_bucket, f"proj/{os.path.basename(loop.experiment_dir)}")
    local = tree(loop.experiment_dir)
    assert remote == local  # epoch 1 landed before the outage; the superseded epoch 2 never did
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert secret not in logged and key_id not in logged
