"""Tests for aitoolbox.cloud.AWS.s3 against a moto server over real HTTP."""
import logging
import os
import subprocess
import sys
import time

import pytest

from aitoolbox.cloud.AWS import (
    S3Uploader,
    check_bucket_exists,
    delete_key,
    download_file,
    get_s3_client,
    is_s3_uri,
    list_keys,
    parse_s3_uri,
    upload_file,
)

MIB = 1024 * 1024
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _read_object(bucket: str, key: str) -> bytes:
    return get_s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()


def _etag(bucket: str, key: str) -> str:
    return get_s3_client().head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


def _fast_uploader(bucket: str, **kwargs) -> S3Uploader:
    kwargs.setdefault("retry_interval", 0.05)
    kwargs.setdefault("max_retry_interval", 0.2)
    kwargs.setdefault("s3_client", get_s3_client(max_attempts=1))
    return S3Uploader(bucket, **kwargs)


@pytest.mark.parametrize("uri, expected", [
    ("s3://bucket/key", ("bucket", "key")),
    ("s3://bucket/a/b/c.pt", ("bucket", "a/b/c.pt")),
    ("s3://bucket/", ("bucket", "")),
    ("s3://bucket", ("bucket", "")),
])
def test_parse_s3_uri(uri, expected):
    assert parse_s3_uri(uri) == expected
    assert is_s3_uri(uri)


@pytest.mark.parametrize("value", ["/tmp/f", "s3:/bucket/k", "s3:///k", "http://b/k", "", None, 3])
def test_not_s3_uri(value):
    assert not is_s3_uri(value)
    with pytest.raises(ValueError):
        parse_s3_uri(value)


@pytest.mark.timeout(60)
def test_import_does_not_load_boto3():
    code = ("import sys, aitoolbox.cloud.AWS\n"
            "print(sorted(m for m in ('boto3', 'botocore') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.timeout(30)
def test_client_honours_endpoint_env_and_standard_retries(s3_endpoint_url, monkeypatch):
    client = get_s3_client()
    assert client is get_s3_client()
    assert client.meta.endpoint_url == s3_endpoint_url
    assert client.meta.config.retries["mode"] == "standard"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    assert get_s3_client().meta.endpoint_url == "http://127.0.0.1:1"


@pytest.mark.timeout(30)
def test_round_trip(s3_bucket, tmp_path):
    data = os.urandom(4096)
    upload_file(_write(tmp_path / "model.pt", data), s3_bucket, "run1/model.pt")
    assert list_keys(s3_bucket, "run1/") == ["run1/model.pt"]
    assert list_keys(s3_bucket, "other/") == []

    target = tmp_path / "out" / "model.pt"
    download_file(s3_bucket, "run1/model.pt", str(target))
    assert target.read_bytes() == data
    assert os.listdir(target.parent) == ["model.pt"]

    delete_key(s3_bucket, "run1/model.pt")
    assert list_keys(s3_bucket) == []


@pytest.mark.timeout(30)
def test_failed_download_leaves_destination_alone(s3_bucket, tmp_path):
    from botocore.exceptions import ClientError

    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with pytest.raises(ClientError):
        download_file(s3_bucket, "missing.pt", str(target))
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.pt"]


@pytest.mark.timeout(60)
def test_multipart_upload(s3_bucket, tmp_path):
    data = os.urandom(6 * MIB + 1234)
    path = _write(tmp_path / "big.bin", data)
    upload_file(path, s3_bucket, "big.bin", multipart_threshold=MIB, multipart_chunksize=5 * MIB)
    assert _etag(s3_bucket, "big.bin").endswith("-2")  # multipart ETags end in -<number of parts>
    assert _read_object(s3_bucket, "big.bin") == data


@pytest.mark.timeout(30)
def test_check_bucket_exists(s3_bucket):
    check_bucket_exists(s3_bucket)
    missing = s3_bucket + "-missing"
    with pytest.raises(ValueError) as info:
        check_bucket_exists(missing)
    message = str(info.value)
    assert missing in message
    assert "does not exist" in message
    assert "AWS_ENDPOINT_URL" in message


@pytest.mark.timeout(30)
def test_uploader_keeps_per_key_order(s3_bucket, tmp_path):
    small = _write(tmp_path / "a.txt", b"a")
    big_data = os.urandom(2 * MIB)
    big = _write(tmp_path / "b.bin", big_data)
    with _fast_uploader(s3_bucket, multipart_threshold=MIB) as uploader:
        uploader.upload(small, "a.txt")
        uploader.delete("a.txt")
        uploader.upload(big, "b.bin")
        assert uploader.flush(timeout=20)
        assert uploader.pending_keys() == []
        assert uploader.num_succeeded == 3
    assert list_keys(s3_bucket) == ["b.bin"]
    assert _read_object(s3_bucket, "b.bin") == big_data
    assert _etag(s3_bucket, "b.bin").endswith("-1")


@pytest.mark.timeout(30)
def test_uploader_gives_up_after_max_retries(s3_bucket, tmp_path, caplog):
    uploader = _fast_uploader(s3_bucket, max_retries=2)
    good = _write(tmp_path / "good.txt", b"good")
    uploader.upload(str(tmp_path / "does-not-exist"), "missing.txt")
    uploader.upload(good, "good.txt")
    assert not uploader.flush(timeout=10)
    assert uploader.failed_keys() == ["missing.txt"]
    assert uploader.pending_keys() == []
    assert uploader.num_failed_attempts == 3
    assert list_keys(s3_bucket) == ["good.txt"]
    assert "Giving up" in caplog.text
    uploader.close(timeout=1)
    with pytest.raises(RuntimeError):
        uploader.upload(good, "again.txt")


@pytest.mark.timeout(60)
def test_uploader_survives_outage(moto_server, s3_bucket, create_bucket, tmp_path):
    files = {f"ckpt/epoch{i}.pt": os.urandom(1000 + i) for i in range(3)}
    paths = {key: _write(tmp_path / f"e{i}.pt", data)
             for i, (key, data) in enumerate(files.items())}
    uploader = _fast_uploader(s3_bucket)
    moto_server.stop()
    try:
        for key, path in paths.items():
            uploader.upload(path, key)  # returns at once, never raises
        assert not uploader.flush(timeout=1.0)
        assert uploader.num_failed_attempts > 0
        assert sorted(uploader.pending_keys()) == sorted(files)
        assert all(open(paths[key], "rb").read() == data for key, data in files.items())
    finally:
        moto_server.start(reset_state=True)  # behave like a fresh, empty server
    with pytest.raises(ValueError):
        check_bucket_exists(s3_bucket)
    create_bucket(s3_bucket)
    assert uploader.flush(timeout=20)
    assert uploader.pending_keys() == []
    assert sorted(list_keys(s3_bucket)) == sorted(files)
    assert all(_read_object(s3_bucket, key) == data for key, data in files.items())
    assert uploader.close(timeout=5)


class _FailingClient:
    """Stands in for an S3 client whose errors echo the credentials back."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def upload_file(self, *args, **kwargs):
        raise RuntimeError(f"signing failed for {self.secret}, Credential=AKIAXXXX/2024/s3")


@pytest.mark.timeout(30)
def test_credentials_never_logged(s3_endpoint_url, tmp_path, caplog, monkeypatch):
    key_id, secret = "AKIAAITBOXLEAKCHECK1", "aitb/Secret+LeakCheck/0123456789"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="aitoolbox")
    path = _write(tmp_path / "f.txt", b"x")
    bucket = "aitb-no-such-bucket"
    with pytest.raises(ValueError) as info:
        check_bucket_exists(bucket)
    for uploader in (_fast_uploader(bucket, max_retries=1),
                     _fast_uploader(bucket, max_retries=1, s3_client=_FailingClient(secret))):
        uploader.upload(path, "f.txt")
        assert not uploader.flush(timeout=10)
        uploader.close(timeout=1)

    assert len([r for r in caplog.records if r.name.startswith("aitoolbox")]) >= 4
    for text in (caplog.text, str(info.value)):
        assert key_id not in text
        assert secret not in text
    assert "AKIAXXXX" not in caplog.text


# ------------------------------------------------------------------ outages: log once, summarise, stay bounded
def _uploader_records(caplog, level=logging.WARNING):
    return [r for r in caplog.records if r.name == "aitoolbox.cloud.uploader" and r.levelno >= level]


@pytest.mark.timeout(60)
def test_outage_is_logged_once_then_summarised_then_recovered(moto_server, s3_bucket, tmp_path, caplog):
    paths = {f"ckpt/e{i}.pt": _write(tmp_path / f"e{i}.pt", os.urandom(100)) for i in range(5)}
    uploader = _fast_uploader(s3_bucket, retry_interval=0.05, max_retry_interval=0.2, summary_interval=0.5)
    moto_server.stop()
    try:
        with caplog.at_level(logging.DEBUG, logger="aitoolbox"):
            started = time.monotonic()
            for key, path in paths.items():
                uploader.upload(path, key)
            time.sleep(2.0)
            elapsed = time.monotonic() - started
            lines = [r.getMessage() for r in _uploader_records(caplog)]
            attempts = uploader.num_failed_attempts
    finally:
        moto_server.start()
    first = [line for line in lines if "failed:" in line]
    assert len(first) == 1, lines  # one warning for the outage, naming bucket, endpoint and cause
    assert s3_bucket in first[0] and moto_server.endpoint_url in first[0] and "EndpointConnectionError" in first[0]
    summaries = [line for line in lines if "still failing" in line]
    assert 1 <= len(summaries) <= elapsed / 0.5 + 1, lines
    assert all("5 job(s) pending" in line for line in summaries)
    assert len(lines) == 1 + len(summaries)
    # one attempt per backoff for the whole queue (not one per job): 0.05, 0.1, 0.2, 0.2, ... s
    assert 3 <= attempts <= elapsed / 0.2 + 3, attempts
    caplog.clear()
    assert uploader.flush(timeout=20)
    recovered = [r.getMessage() for r in _uploader_records(caplog)]
    assert len(recovered) == 1 and "answers again" in recovered[0], recovered
    assert sorted(list_keys(s3_bucket, "ckpt/")) == sorted(paths)
    uploader.close(timeout=1)


@pytest.mark.timeout(30)
def test_cancelled_uploads_leave_the_queue(moto_server, s3_bucket, tmp_path):
    uploader = _fast_uploader(s3_bucket)
    moto_server.stop()
    try:
        a, b = _write(tmp_path / "a.pt", b"a"), _write(tmp_path / "b.pt", b"b")
        uploader.upload(a, "a.pt")
        uploader.upload(b, "b.pt")
        uploader.upload(b, "b.pt")  # the same file again: one job, it reads the file when it runs
        uploader.delete("a.pt")
        assert sorted(uploader.pending_keys()) == ["a.pt", "a.pt", "b.pt"]
        time.sleep(0.3)
        busy = uploader.cancel_uploads(["a.pt"])
        assert busy <= {"a.pt"}  # an attempt running now is dropped when it ends
        assert uploader.pending_upload_keys() == ["b.pt"]
        assert uploader.pending_keys() == ["b.pt", "a.pt"]  # the deletion stays
    finally:
        moto_server.start()
    assert uploader.flush(timeout=20)
    assert list_keys(s3_bucket) == ["b.pt"]
    uploader.close(timeout=1)


@pytest.mark.timeout(30)
def test_flush_returns_in_time_while_an_attempt_hangs(black_hole, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", black_hole)
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    uploader = S3Uploader("b", s3_client=get_s3_client(max_attempts=1))  # botocore's 60 s read timeout
    uploader.upload(_write(tmp_path / "f.pt", b"x"), "run/f.pt")
    started = time.monotonic()
    assert not uploader.flush(timeout=1.0)
    assert time.monotonic() - started < 3.0
    assert "run/f.pt" in caplog.text and "still pending" in caplog.text
