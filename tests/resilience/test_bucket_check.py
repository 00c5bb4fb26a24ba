"""A bucket check against an endpoint that accepts connections but never answers fails in bounded time
(the ``black_hole`` fixture of ``tests/conftest.py``)."""
import time

import pytest

from aitoolbox.cloud.AWS import s3


def test_silent_endpoint_fails_the_check_in_bounded_time(black_hole, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", black_hole)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setattr(s3, "BUCKET_CHECK_READ_TIMEOUT_S", 1.0)  # the defaults: 2 x (5 + 10) s
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"S3 bucket 'b' is not usable: S3 could not be reached \(ReadTimeoutError"):
        s3.check_bucket_exists("b")
    assert time.monotonic() - start < s3.BUCKET_CHECK_ATTEMPTS * (1.0 + s3.BUCKET_CHECK_CONNECT_TIMEOUT_S) + 5


def test_resume_that_must_look_in_a_silent_bucket_fails_in_bounded_time(black_hole, monkeypatch, tmp_path):
    from aitoolbox.torchtrain.train_loop import TrainLoopCheckpoint
    from tests.tracking.helpers import loop_args

    for name, value in (("AWS_ENDPOINT_URL", black_hole), ("AWS_ACCESS_KEY_ID", "testing"),
                        ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(s3, "BUCKET_CHECK_READ_TIMEOUT_S", 1.0)
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"S3 bucket 'b' is not usable: S3 could not be reached"):
        TrainLoopCheckpoint(*loop_args(), "proj", "exp", tmp_path, {}, bucket_name="b", show_progress=False,
                            resume=True)  # no local checkpoint: the bucket is the fallback
    assert time.monotonic() - start < s3.BUCKET_CHECK_ATTEMPTS * (1.0 + s3.BUCKET_CHECK_CONNECT_TIMEOUT_S) + 5
