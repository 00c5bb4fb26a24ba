"""Tests for aitoolbox.cloud.GoogleCloud against gcp-storage-emulator over real HTTP."""
import logging
import os
import subprocess
import sys

import pytest

from aitoolbox.cloud.common import ClientCache

from aitoolbox.cloud import backends
from aitoolbox.cloud.GoogleCloud import gcs
from aitoolbox.cloud.GoogleCloud.gcs import (
    GCSUploader,
    check_bucket_exists,
    delete_key,
    download_file,
    get_gcs_client,
    is_gcs_uri,
    list_keys,
    parse_gcs_uri,
    upload_file,
)
from aitoolbox.cloud.uploader import CloudUploader

MIB = 1024 * 1024
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _read_object(bucket: str, key: str) -> bytes:
    return get_gcs_client().bucket(bucket).blob(key).download_as_bytes()


def _fast_uploader(bucket: str, **kwargs) -> GCSUploader:
    kwargs.setdefault("retry_interval", 0.05)
    kwargs.setdefault("max_retry_interval", 0.2)
    kwargs.setdefault("timeout", 5.0)
    return GCSUploader(bucket, **kwargs)


# ------------------------------------------------------------------ URIs and backends
@pytest.mark.parametrize("uri, expected", [
    ("gs://bucket/key", ("bucket", "key")),
    ("gs://bucket/a/b/c.pt", ("bucket", "a/b/c.pt")),
    ("gs://bucket/", ("bucket", "")),
    ("gs://bucket", ("bucket", "")),
])
def test_parse_gcs_uri(uri, expected):
    assert parse_gcs_uri(uri) == expected
    assert is_gcs_uri(uri)


@pytest.mark.parametrize("value", ["/tmp/f", "gs:/bucket/k", "gs:///k", "s3://b/k", "", None, 3])
def test_not_gcs_uri(value):
    assert not is_gcs_uri(value)
    with pytest.raises(ValueError):
        parse_gcs_uri(value)


@pytest.mark.parametrize("path, name", [("gs://b/k.pt", "gcs"), ("s3://b/k.pt", "s3"), ("/tmp/k.pt", None),
                                        ("gs:/b/k", None), (None, None)])
def test_backend_for_uri(path, name):
    backend = backends.backend_for_uri(path)
    assert (backend and backend.name) == name


def test_both_uploaders_share_one_mechanism():
    from aitoolbox.cloud.AWS.s3 import S3Uploader

    assert issubclass(GCSUploader, CloudUploader) and issubclass(S3Uploader, CloudUploader)
    own = {name for name in vars(GCSUploader) if not name.startswith("__")}
    assert own <= {"label", "scheme", "_upload", "_delete", "endpoint"}  # the queue, retries, flush are inherited


def test_import_loads_no_google_library():
    code = ("import sys, aitoolbox, aitoolbox.cloud.GoogleCloud, aitoolbox.cloud.GoogleCloud.gcs, "
            "aitoolbox.cloud.GoogleCloud.data_access, aitoolbox.cloud.GoogleCloud.model_save, "
            "aitoolbox.cloud.GoogleCloud.model_load, aitoolbox.cloud.GoogleCloud.results_save, "
            "aitoolbox.cloud.backends, aitoolbox.experiment.experiment_store, aitoolbox.experiment.experiment_saver\n"
            "loaded = [m for m in sys.modules if m.startswith(('google', 'boto'))]\n"
            "assert not loaded, loaded")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": REPO_ROOT})
    assert result.returncode == 0, result.stderr


def test_missing_package_names_the_extra(monkeypatch):
    import google.cloud

    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)
    monkeypatch.delattr(google.cloud, "storage", raising=False)
    monkeypatch.setattr(gcs, "_clients", ClientCache())
    with pytest.raises(ImportError, match=r'pip install "aitoolbox\[gcs\]"'):
        get_gcs_client()


# ------------------------------------------------------------------ blocking functions
def test_client_uses_the_emulator_anonymously(gcs_endpoint_url):
    from google.auth.credentials import AnonymousCredentials

    client = get_gcs_client()
    assert client is get_gcs_client()  # cached
    assert isinstance(client._credentials, AnonymousCredentials)
    assert client.api_endpoint == gcs_endpoint_url


def test_upload_list_download_delete(gcs_bucket, tmp_path):
    small = os.urandom(1000)
    large = os.urandom(9 * MIB)  # above the library's 8 MiB multipart limit: a resumable upload
    upload_file(_write(tmp_path / "small.bin", small), gcs_bucket, "run/small.bin")
    upload_file(_write(tmp_path / "large.bin", large), gcs_bucket, "run/sub/large.bin")
    upload_file(_write(tmp_path / "other.txt", b"x"), gcs_bucket, "other.txt")
    assert list_keys(gcs_bucket, "run/") == ["run/small.bin", "run/sub/large.bin"]
    assert list_keys(gcs_bucket) == ["other.txt", "run/small.bin", "run/sub/large.bin"]
    assert [key for key, _ in gcs.list_objects(gcs_bucket, "run/")] == ["run/small.bin", "run/sub/large.bin"]
    assert all(modified > 0 for _, modified in gcs.list_objects(gcs_bucket))

    target = tmp_path / "down" / "deep" / "large.bin"
    download_file(gcs_bucket, "run/sub/large.bin", str(target))
    assert target.read_bytes() == large
    assert os.listdir(target.parent) == ["large.bin"]  # no temporary file left
    assert _read_object(gcs_bucket, "run/small.bin") == small

    delete_key(gcs_bucket, "run/small.bin")
    delete_key(gcs_bucket, "run/small.bin")  # deleting a missing object is fine
    assert list_keys(gcs_bucket, "run/") == ["run/sub/large.bin"]


def test_download_of_a_missing_object_leaves_nothing(gcs_bucket, tmp_path):
    from google.api_core.exceptions import NotFound

    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(NotFound):
        download_file(gcs_bucket, "nope.bin", str(target))
    assert os.listdir(tmp_path) == ["f.bin"] and target.read_bytes() == b"old"


def test_delete_in_a_missing_bucket_raises(gcs_endpoint_url):
    from google.api_core.exceptions import NotFound

    with pytest.raises(NotFound):
        delete_key("aitb-no-such-bucket", "k")


def test_check_bucket_exists(gcs_bucket):
    check_bucket_exists(gcs_bucket)
    missing = "aitb-missing-bucket"
    with pytest.raises(ValueError) as info:
        check_bucket_exists(missing)
    message = str(info.value)
    assert missing in message and "does not exist" in message and "STORAGE_EMULATOR_HOST" in message


def test_no_credentials_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-key.json"))
    with pytest.raises(ValueError, match="'some-bucket'.*no Google credentials.*GOOGLE_APPLICATION_CREDENTIALS"):
        check_bucket_exists("some-bucket")


def test_unreachable_emulator_is_a_clear_error(monkeypatch):
    from tests.conftest import _free_port

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(ValueError, match="'b1'.*could not be reached"):
        check_bucket_exists("b1", gcs_client=get_gcs_client())


# ------------------------------------------------------------------ background uploader
@pytest.mark.timeout(60)
def test_uploader_uploads_and_deletes_in_order(gcs_bucket, tmp_path):
    with _fast_uploader(gcs_bucket) as uploader:
        for i in range(5):
            uploader.upload(_write(tmp_path / f"f{i}.bin", bytes([i]) * 10), f"files/f{i}.bin")
        uploader.upload(_write(tmp_path / "again.bin", b"second"), "files/f0.bin")
        uploader.delete("files/f1.bin")
        assert uploader.flush(timeout=30)
        assert uploader.pending_keys() == [] and uploader.failed_keys() == []
    assert list_keys(gcs_bucket) == [f"files/f{i}.bin" for i in (0, 2, 3, 4)]
    assert _read_object(gcs_bucket, "files/f0.bin") == b"second"
    assert uploader.num_succeeded == 7
    with pytest.raises(RuntimeError, match="closed"):
        uploader.upload(str(tmp_path / "f0.bin"), "late.bin")


@pytest.mark.timeout(60)
def test_uploader_gives_up_after_max_retries(gcs_endpoint_url, tmp_path, caplog):
    uploader = _fast_uploader("aitb-no-such-bucket", max_retries=2)
    uploader.upload(_write(tmp_path / "f.txt", b"x"), "f.txt")
    assert not uploader.flush(timeout=30)
    assert uploader.failed_keys() == ["f.txt"] and uploader.num_failed_attempts == 3
    assert "Giving up GCS upload of gs://aitb-no-such-bucket/f.txt" in caplog.text
    uploader.close(timeout=1)


@pytest.mark.timeout(60)
def test_uploader_survives_outage(gcs_emulator, gcs_bucket, create_gcs_bucket, tmp_path, caplog):
    files = {f"ckpt/epoch{i}.pt": os.urandom(1000 + i) for i in range(3)}
    paths = {key: _write(tmp_path / f"e{i}.pt", data) for i, (key, data) in enumerate(files.items())}
    uploader = _fast_uploader(gcs_bucket)
    gcs_emulator.stop()
    try:
        with caplog.at_level(logging.WARNING, logger="aitoolbox"):
            for key, path in paths.items():
                uploader.upload(path, key)  # returns at once, never raises
            assert not uploader.flush(timeout=1.0)
        assert uploader.num_failed_attempts > 0
        assert sorted(uploader.pending_keys()) == sorted(files)
        assert "retrying" in caplog.text
    finally:
        gcs_emulator.start()  # a restarted emulator is empty
    create_gcs_bucket(gcs_bucket)
    assert uploader.flush(timeout=20)
    assert list_keys(gcs_bucket) == sorted(files)
    assert all(_read_object(gcs_bucket, key) == data for key, data in files.items())
    assert uploader.close(timeout=5)


# ------------------------------------------------------------------ aitoolbox 1.8's GoogleCloud savers and loaders
TS = "2024-05-01_13-45-12"


def _model_dict(seed=0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
            "schedulers_state_dict": [], "epoch": 2, "iteration_idx": 11, "hyperparams": {"lr": 0.1}}


def test_google_storage_classes_are_the_s3_classes_over_gcs():
    from aitoolbox.cloud.AWS.data_access import BaseDataLoader, BaseDataSaver
    from aitoolbox.cloud.AWS.model_load import PyTorchS3ModelLoader
    from aitoolbox.cloud.AWS.model_save import PyTorchS3ModelSaver
    from aitoolbox.cloud.AWS.results_save import S3ResultsSaver
    from aitoolbox.cloud.GoogleCloud.data_access import BaseGoogleStorageDataLoader, BaseGoogleStorageDataSaver
    from aitoolbox.cloud.GoogleCloud.model_load import PyTorchGoogleStorageModelLoader
    from aitoolbox.cloud.GoogleCloud.model_save import PyTorchGoogleStorageModelSaver
    from aitoolbox.cloud.GoogleCloud.results_save import GoogleStorageResultsSaver

    pairs = [(PyTorchGoogleStorageModelSaver, PyTorchS3ModelSaver, BaseGoogleStorageDataSaver, BaseDataSaver),
             (GoogleStorageResultsSaver, S3ResultsSaver, BaseGoogleStorageDataSaver, BaseDataSaver),
             (PyTorchGoogleStorageModelLoader, PyTorchS3ModelLoader, BaseGoogleStorageDataLoader, BaseDataLoader)]
    for gcs_class, s3_class, gcs_base, s3_base in pairs:
        assert issubclass(gcs_class, s3_class)
        mro = gcs_class.__mro__
        assert mro.index(gcs_base) < mro.index(s3_base)  # the GCS storage primitives win
    for name in ("save_model", "create_experiment_cloud_storage_folder_structure", "save_folder"):
        assert getattr(PyTorchGoogleStorageModelSaver, name) is getattr(PyTorchS3ModelSaver, name)
    assert GoogleStorageResultsSaver.save_experiment_results is S3ResultsSaver.save_experiment_results
    assert PyTorchGoogleStorageModelLoader.load_model is PyTorchS3ModelLoader.load_model


@pytest.mark.parametrize("checkpoint_model, sub_folder", [(False, "model"), (True, "checkpoint_model")])
def test_pytorch_google_storage_model_saver(gcs_bucket, tmp_path, checkpoint_model, sub_folder):
    from aitoolbox.cloud.GoogleCloud.model_save import BaseModelGoogleStorageSaver, PyTorchGoogleStorageModelSaver

    saver = PyTorchGoogleStorageModelSaver(bucket_name=gcs_bucket, cloud_dir_prefix="runs/a",
                                           local_model_result_folder_path=tmp_path, checkpoint_model=checkpoint_model)
    assert isinstance(saver, BaseModelGoogleStorageSaver) and saver.gcs_bucket.name == gcs_bucket
    cloud_path, timestamp, local_path = saver.save_model(_model_dict(), "proj", "exp", TS, epoch=2)
    key = f"runs/a/proj/exp_{TS}/{sub_folder}/model_exp_{TS}_E2.pth"
    assert (cloud_path, timestamp) == (f"{gcs_bucket}/{key}", TS)
    assert local_path == str(tmp_path / "proj" / f"exp_{TS}" / sub_folder / f"model_exp_{TS}_E2.pth")
    assert list_keys(gcs_bucket) == [key]
    with open(local_path, "rb") as f:
        assert _read_object(gcs_bucket, key) == f.read()


def test_google_storage_results_saver(gcs_bucket, tmp_path):
    import json

    from aitoolbox.cloud.GoogleCloud.results_save import BaseResultsGoogleStorageSaver, GoogleStorageResultsSaver
    from aitoolbox.experiment.training_history import TrainingHistory
    from tests.cloud.test_aws_savers import FixedResultPackage

    saver = GoogleStorageResultsSaver(bucket_name=gcs_bucket, cloud_dir_prefix="pre",
                                      local_model_result_folder_path=tmp_path)
    assert isinstance(saver, BaseResultsGoogleStorageSaver)
    history = TrainingHistory().wrap_pre_prepared_history({})
    main_path, timestamp = saver.save_experiment_results(FixedResultPackage(), history, "proj", "exp", TS,
                                                         save_true_pred_labels=True, separate_files=True)
    prefix = f"pre/proj/exp_{TS}/results"
    assert (main_path, timestamp) == (f"{gcs_bucket}/{prefix}/results_exp_{TS}.json", TS)
    names = sorted(f"{p}_exp_{TS}.json" for p in ("results", "hyperparams", "train_history", "true_pred_labels"))
    assert list_keys(gcs_bucket) == [f"{prefix}/{n}" for n in names]
    hyperparams = json.loads(_read_object(gcs_bucket, f"{prefix}/hyperparams_exp_{TS}.json"))
    assert hyperparams["hyperparameters"] == {"lr": 0.1}


def test_full_pytorch_experiment_google_storage_saver(gcs_bucket, tmp_path):
    from aitoolbox.cloud.GoogleCloud.model_save import PyTorchGoogleStorageModelSaver
    from aitoolbox.cloud.GoogleCloud.results_save import GoogleStorageResultsSaver
    from aitoolbox.experiment.experiment_saver import FullPyTorchExperimentGoogleStorageSaver
    from aitoolbox.experiment.training_history import TrainingHistory
    from tests.cloud.test_aws_savers import FixedResultPackage

    saver = FullPyTorchExperimentGoogleStorageSaver("proj", "exp", bucket_name=gcs_bucket,
                                                    local_model_result_folder_path=tmp_path)
    assert type(saver.model_saver) is PyTorchGoogleStorageModelSaver
    assert type(saver.results_saver) is GoogleStorageResultsSaver
    model_path, results_path = saver.save_experiment(_model_dict(), FixedResultPackage(),
                                                     TrainingHistory().wrap_pre_prepared_history({}), TS)
    assert model_path == f"{gcs_bucket}/proj/exp_{TS}/model/model_exp_{TS}.pth"
    assert sorted(list_keys(gcs_bucket)) == sorted(p[len(gcs_bucket) + 1:] for p in (model_path, results_path))


def test_pytorch_google_storage_model_loader_round_trip(gcs_bucket, tmp_path):
    import torch
    from torch import nn

    from aitoolbox.cloud.GoogleCloud.model_load import BaseModelGoogleStorageLoader, PyTorchGoogleStorageModelLoader
    from aitoolbox.cloud.GoogleCloud.model_save import PyTorchGoogleStorageModelSaver

    saved = _model_dict(5)
    PyTorchGoogleStorageModelSaver(bucket_name=gcs_bucket, local_model_result_folder_path=tmp_path / "trainer",
                                   checkpoint_model=True).save_model(saved, "proj", "exp", TS, epoch=2)
    loader = PyTorchGoogleStorageModelLoader(tmp_path / "elsewhere", bucket_name=gcs_bucket)
    assert loader.local_model_result_folder_path == str(tmp_path / "elsewhere")
    loaded = loader.load_model("proj", "exp", TS, "checkpoint_model", epoch_num=2)
    assert loaded["epoch"] == 2 and loaded["iteration_idx"] == 11
    assert (tmp_path / "elsewhere" / "proj" / f"exp_{TS}" / "checkpoint_model" / f"model_exp_{TS}_E2.pth").is_file()
    model = loader.init_model(nn.Linear(3, 2))
    assert torch.equal(model.weight, saved["model_state_dict"]["weight"])
    assert loader.init_optimizer(torch.optim.SGD(model.parameters(), lr=0.5)).param_groups[0]["lr"] == 0.1
    with pytest.raises(FileNotFoundError, match=f"nor at gs://{gcs_bucket}/"):
        loader.load_model("proj", "exp", TS, "checkpoint_model", epoch_num=7)
    with pytest.raises(TypeError, match="AbstractLocalModelLoader"):
        BaseModelGoogleStorageLoader(object(), tmp_path, gcs_bucket)


def test_google_storage_data_saver_and_loader(gcs_bucket, tmp_path):
    from aitoolbox.cloud.GoogleCloud.data_access import BaseGoogleStorageDataLoader, BaseGoogleStorageDataSaver

    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "a.txt").write_text("A")
    (tmp_path / "data" / "sub" / "b.txt").write_text("B")
    saver = BaseGoogleStorageDataSaver(bucket_name=gcs_bucket)
    saver.save_file(str(tmp_path / "data" / "a.txt"), "some_folder/file.txt")
    assert saver.save_folder(str(tmp_path / "data"), "up") == ["up/a.txt", "up/sub/b.txt"]
    assert list_keys(gcs_bucket) == ["some_folder/file.txt", "up/a.txt", "up/sub/b.txt"]
    with pytest.raises(FileNotFoundError, match="local_file_path"):
        saver.save_file(str(tmp_path / "missing.txt"), "x")

    loader = BaseGoogleStorageDataLoader(bucket_name=gcs_bucket, local_dataset_folder_path=tmp_path / "ds")
    target = tmp_path / "ds" / "f.txt"
    assert loader.load_file("up/sub/b.txt", str(target)) is True and target.read_text() == "B"
    target.write_text("local copy")
    assert loader.load_file("up/sub/b.txt", str(target)) is True and target.read_text() == "local copy"
    assert loader.load_file("missing.txt", str(tmp_path / "missing.txt")) is False
    assert not (tmp_path / "missing.txt").exists()
    assert loader.exists_local_data_folder("squad") is False and (tmp_path / "ds" / "squad").is_dir()


def test_google_storage_savers_check_the_bucket(gcs_endpoint_url, tmp_path):
    from aitoolbox.cloud.GoogleCloud.data_access import BaseGoogleStorageDataLoader
    from aitoolbox.cloud.GoogleCloud.model_save import PyTorchGoogleStorageModelSaver

    with pytest.raises(ValueError, match="'aitb-missing'.*does not exist"):
        PyTorchGoogleStorageModelSaver(bucket_name="aitb-missing", local_model_result_folder_path=tmp_path)
    with pytest.raises(ValueError, match="'aitb-missing'.*does not exist"):
        BaseGoogleStorageDataLoader(bucket_name="aitb-missing")


def test_original_checkpoint_in_a_gcs_bucket_continues_training(gcs_bucket, tmp_path):
    import torch

    from aitoolbox.cloud.GoogleCloud.model_save import PyTorchGoogleStorageModelSaver
    from aitoolbox.torchtrain.callbacks.model_load import ModelLoadContinueTraining
    from aitoolbox.torchtrain.train_loop import TrainLoop
    from tests.tracking.helpers import loop_args

    trained = TrainLoop(*loop_args(seed=1), show_progress=False)
    trained.fit(num_epochs=1)
    state = {"model_state_dict": trained.model.state_dict(), "optimizer_state_dict": trained.optimizer.state_dict(),
             "schedulers_state_dict": [], "epoch": 0, "iteration_idx": 5, "hyperparams": {}}
    PyTorchGoogleStorageModelSaver(bucket_name=gcs_bucket, local_model_result_folder_path=tmp_path / "trainer",
                                   checkpoint_model=True).save_model(state, "proj", "exp", TS, epoch=0)
    resumed = TrainLoop(*loop_args(seed=9), show_progress=False)
    load = ModelLoadContinueTraining(TS, epoch_num=0, project_name="proj", experiment_name="exp",
                                     local_model_result_folder_path=tmp_path / "here", cloud_save_mode="gcs",
                                     bucket_name=gcs_bucket)
    resumed.fit(num_epochs=1, callbacks=[load])  # at 1 epoch already: loads, trains nothing
    assert load.loaded_path == f"gs://{gcs_bucket}/proj/exp_{TS}/checkpoint_model/model_exp_{TS}_E0.pth"
    assert resumed.epoch == 1 and resumed.total_iteration_idx == 6
    for mine, theirs in zip(resumed.model.parameters(), trained.model.parameters()):
        assert torch.equal(mine, theirs)
