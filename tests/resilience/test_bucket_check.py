"""A bucket check against an endpoint that accepts connections but never answers fails in bounded time."""
import socket
import threading
import time

import pytest

from aitoolbox.cloud.AWS import s3


@pytest.fixture
def black_hole():
    """A TCP server that accepts connections and never sends a byte."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    server.close()


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
