"""Tests for aitoolbox.cloud.GoogleCloud against gcp-storage-emulator over real HTTP."""
import logging
import os
import subprocess
import sys

import pytest

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
    assert own <= {"label", "scheme", "_upload", "_delete"}  # the queue, retries, flush are inherited


def test_import_loads_no_google_library():
    code = ("import sys, aitoolbox, aitoolbox.cloud.GoogleCloud, aitoolbox.cloud.GoogleCloud.gcs, "
            "aitoolbox.cloud.backends, aitoolbox.experiment.experiment_store\n"
            "for name in ('aitoolbox.cloud.GoogleCloud.data_access', 'aitoolbox.cloud.GoogleCloud.model_save', "
            "'aitoolbox.cloud.GoogleCloud.model_load', 'aitoolbox.cloud.GoogleCloud.results_save'):\n"
            "    try:\n        __import__(name)\n    except ModuleNotFoundError:\n        pass\n"
            "assert not [m for m in sys.modules if m.startswith('google')], "
            "[m for m in sys.modules if m.startswith('google')]")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": REPO_ROOT})
    assert result.returncode == 0, result.stderr


def test_missing_package_names_the_extra(monkeypatch):
    import google.cloud

    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)
    monkeypatch.delattr(google.cloud, "storage", raising=False)
    monkeypatch.setattr(gcs, "_client_cache", {})
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
