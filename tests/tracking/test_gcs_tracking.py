"""Tracking TrainLoops mirrored to Google Cloud Storage (gcp-storage-emulator on loopback).

The ``gcs_emulator`` fixture points ``STORAGE_EMULATOR_HOST`` at the emulator, so these tests also
show that every GCS call honours it.
"""
import logging
import os
import shutil
import time

import pytest
import torch

from aitoolbox.cloud.GoogleCloud.gcs import get_gcs_client
from aitoolbox.experiment.experiment_store import validate_cloud_save_mode
from aitoolbox.experiment.result_package.basic_packages import ClassificationResultPackage
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.callbacks.model_load import ModelLoadContinueTraining
from aitoolbox.torchtrain.train_loop import TrainLoop, TrainLoopCheckpoint, TrainLoopCheckpointEndSave
from tests.tracking.helpers import loop_args, tree

PREFIX = "runs/team-g"


def bucket_tree(bucket: str, prefix: str) -> dict:
    """{name relative to prefix: bytes} of every object under ``prefix/``."""
    client = get_gcs_client()
    return {blob.name[len(prefix) + 1:]: blob.download_as_bytes()
            for blob in client.list_blobs(bucket, prefix=prefix + "/")}


@pytest.mark.parametrize("mode", ["gcs", "google_storage", "google storage"])
def test_the_originals_gcs_modes(mode):
    assert validate_cloud_save_mode(mode) == "gcs"


def test_end_to_end_local_and_bucket_hold_the_same_experiment(gcs_bucket, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "train_utils.py").write_text("VALUE = 1\n")
    loop = TrainLoopCheckpointEndSave(*loop_args(), "proj", "exp", tmp_path / "results", {"lr": 0.01},
                                      val_result_package=ClassificationResultPackage(),
                                      cloud_save_mode="gcs", bucket_name=gcs_bucket, cloud_dir_prefix=PREFIX,
                                      source_dirs=[str(source)], iteration_save_freq=4, show_progress=False)
    assert repr(loop.experiment_store).endswith(f", gs://{gcs_bucket})")
    loop.fit(num_epochs=2)
    local = tree(loop.experiment_dir)
    remote = bucket_tree(gcs_bucket, f"{PREFIX}/proj/{os.path.basename(loop.experiment_dir)}")
    assert set(remote) == set(local) and remote == local
    for expected in ("checkpoint_model/model_epoch_2.pt", "checkpoint_model/model_iteration_8.pt",
                     "checkpoint_model/checkpoints.json", "model/model.pt", "results/results.json",
                     "results/train_history.csv", "results/plots/val_loss.png", "hyperparams.json",
                     "source_code.zip"):
        assert expected in remote
    assert loop.experiment_store.pending_uploads() == []


def test_suboptimal_checkpoints_are_removed_locally_and_kept_in_the_bucket(gcs_bucket, tmp_path):
    loop = TrainLoopCheckpointEndSave(*loop_args(), "proj", "exp", tmp_path, {}, cloud_save_mode="google_storage",
                                      bucket_name=gcs_bucket, rm_subopt_local_models="val_score",
                                      num_best_checkpoints_kept=1, show_progress=False)
    loop.fit(num_epochs=3, callbacks=[Score([0.9, 0.1, 0.2])])
    remote = bucket_tree(gcs_bucket, f"proj/{os.path.basename(loop.experiment_dir)}")
    local = tree(loop.experiment_dir)
    assert {name: data for name, data in remote.items() if name in local} == local
    assert set(remote) - set(local) == {"checkpoint_model/model_epoch_2.pt"}  # as with S3


def test_continue_training_from_the_bucket(gcs_bucket, tmp_path):
    loop = TrainLoopCheckpoint(*loop_args(), "proj", "exp", tmp_path, {}, cloud_save_mode="gcs",
                               bucket_name=gcs_bucket, show_progress=False)
    loop.fit(num_epochs=2)
    uri = loop.experiment_store.cloud_uri(os.path.join(loop.experiment_dir, "checkpoint_model",
                                                       "model_epoch_1.pt"))
    assert uri.startswith(f"gs://{gcs_bucket}/proj/")
    from_uri = TrainLoop(*loop_args(seed=5), show_progress=False).load_checkpoint(uri)
    assert from_uri.epoch == 1 and from_uri.total_iteration_idx == 6

    shutil.rmtree(loop.experiment_dir)  # only the bucket has the experiment now
    resumed = TrainLoop(*loop_args(seed=5), show_progress=False)
    load = ModelLoadContinueTraining(loop.experiment_timestamp, "checkpoint_model", project_name="proj",
                                     experiment_name="exp", local_model_result_folder_path=tmp_path,
                                     cloud_save_mode="gcs", bucket_name=gcs_bucket)
    resumed.fit(num_epochs=2, callbacks=[load])  # already at 2 epochs: loads, trains nothing
    assert load.loaded_path == f"gs://{gcs_bucket}/proj/exp_{loop.experiment_timestamp}/" \
                               "checkpoint_model/model_epoch_2.pt"
    for p_resumed, p_trained in zip(resumed.model.parameters(), loop.model.parameters()):
        assert torch.equal(p_resumed, p_trained)


def test_continue_training_without_a_manifest_takes_the_newest_object(gcs_bucket, tmp_path):
    loop = TrainLoopCheckpoint(*loop_args(), "proj", "exp", tmp_path, {}, cloud_save_mode="gcs",
                               bucket_name=gcs_bucket, show_progress=False)
    loop.fit(num_epochs=2)
    prefix = f"proj/exp_{loop.experiment_timestamp}/checkpoint_model"
    get_gcs_client().bucket(gcs_bucket).blob(f"{prefix}/checkpoints.json").delete()
    shutil.rmtree(loop.experiment_dir)
    load = ModelLoadContinueTraining(loop.experiment_timestamp, "checkpoint_model", project_name="proj",
                                     experiment_name="exp", local_model_result_folder_path=tmp_path,
                                     cloud_save_mode="gcs", bucket_name=gcs_bucket)
    assert load.resolve_checkpoint() == f"gs://{gcs_bucket}/{prefix}/model_epoch_2.pt"


def test_no_checkpoint_in_the_bucket(gcs_bucket, tmp_path):
    load = ModelLoadContinueTraining("2024-01-01_00-00-00", "checkpoint_model", project_name="proj",
                                     experiment_name="exp", local_model_result_folder_path=tmp_path,
                                     cloud_save_mode="gcs", bucket_name=gcs_bucket)
    with pytest.raises(FileNotFoundError, match=f"gs://{gcs_bucket}/proj/exp_2024-01-01_00-00-00/"):
        load.resolve_checkpoint()


def test_save_and_load_checkpoint_with_gs_uri(gcs_bucket):
    loop = TrainLoop(*loop_args(), show_progress=False)
    loop.fit(num_epochs=1)
    uri = f"gs://{gcs_bucket}/manual/ckpt.pt"
    assert loop.save_checkpoint(uri) == uri
    restored = TrainLoop(*loop_args(seed=9), show_progress=False).load_checkpoint(uri)
    for p_restored, p_trained in zip(restored.model.parameters(), loop.model.parameters()):
        assert torch.equal(p_restored, p_trained)


def test_missing_bucket_is_a_clear_error_before_training(gcs_endpoint_url, tmp_path):
    loop = TrainLoopCheckpointEndSave(*loop_args(), "proj", "exp", tmp_path, {}, cloud_save_mode="gcs",
                                   bucket_name="no-such-bucket-aitb")   # no network at construction, as in aitoolbox 1.8
    model_before = [p.detach().clone() for p in loop.model.parameters()]
    with pytest.raises(ValueError, match="'no-such-bucket-aitb'.*does not exist"):
        loop.fit(num_epochs=1)
    assert os.listdir(tmp_path) == []
    assert all(torch.equal(a, b) for a, b in zip(model_before, loop.model.parameters()))   # no training work


class StopServerAt(AbstractCallback):
    """Stops the emulator at the start of epoch ``epoch`` (after the earlier uploads landed)."""

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


@pytest.mark.timeout(120)
def test_gcs_outage_mid_run(gcs_emulator, gcs_bucket, create_gcs_bucket, tmp_path, fast_uploads, caplog):
    loop = TrainLoopCheckpointEndSave(*loop_args(), "proj", "exp", tmp_path, {}, cloud_save_mode="gcs",
                                      bucket_name=gcs_bucket, show_progress=False)
    loop.experiment_store.flush_timeout = 1.0
    try:
        started = time.monotonic()
        with caplog.at_level(logging.DEBUG, logger="aitoolbox"):
            loop.fit(num_epochs=3, callbacks=[StopServerAt(gcs_emulator, epoch=1)])
        assert time.monotonic() - started < 15  # training did not wait for the dead emulator
        assert any(key.endswith("model/model.pt") for key in loop.experiment_store.pending_uploads())
        assert os.path.isfile(os.path.join(loop.experiment_dir, "model", "model.pt"))
        assert any("GCS upload" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records)
        assert any("still pending" in r.getMessage() for r in caplog.records)
    finally:
        gcs_emulator.start()  # a restarted emulator is empty: the earlier uploads are gone
    create_gcs_bucket(gcs_bucket)
    assert loop.experiment_store.flush(timeout=30)  # the failed uploads are retried and land
    remote = bucket_tree(gcs_bucket, f"proj/{os.path.basename(loop.experiment_dir)}")
    local = tree(loop.experiment_dir)
    assert remote and all(remote[name] == local[name] for name in remote)
    assert "model/model.pt" in remote and "checkpoint_model/model_epoch_3.pt" in remote
