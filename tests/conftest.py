"""Shared pytest fixtures.

S3: a moto server on loopback (real HTTP, no in-process patching of botocore) with
the ``AWS_*`` environment pointing at it, plus a fresh bucket per test.
GCS: gcp-storage-emulator on loopback with ``STORAGE_EMULATOR_HOST`` pointing at it, plus a
fresh bucket per test.
"""
import logging
import socket
import threading
import urllib.request
import uuid

import pytest

MOTO_HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((MOTO_HOST, 0))
        return sock.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((MOTO_HOST, port))
        except OSError:
            return False
        return True


class MotoServer:
    """A moto server on a fixed loopback port that tests can stop and restart.

    moto keeps its state in process-wide backends, so a server restarted in the same
    process still has the old buckets; :meth:`start` can wipe them (``reset_state``)
    to behave like a freshly started, empty S3 endpoint.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint_url = f"http://{MOTO_HOST}:{port}"
        self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self, reset_state: bool = False) -> None:
        """Start the server (no-op if running), optionally wiping all moto state."""
        from moto.server import ThreadedMotoServer

        if self._server is None:
            if reset_state:
                # Wipe the (in-process) state before the port opens: a client retrying against the
                # restarted server must never see the old buckets, even for a moment.
                from moto.moto_api._internal.models import moto_api_backend
                moto_api_backend.reset()
            # ThreadedMotoServer.start() hangs forever if the port is taken: fail fast.
            assert _port_is_free(self.port), f"port {self.port} is taken"
            server = ThreadedMotoServer(ip_address=MOTO_HOST, port=self.port, verbose=False)
            server.start()
            self._server = server
        elif reset_state:
            self.reset_state()

    def stop(self) -> None:
        """Stop the server; the listening socket is closed, so connections are refused."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def reset_state(self) -> None:
        """Delete every bucket and object (all moto state) through moto's HTTP API."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """Session-wide moto S3 server with the AWS environment pointed at it."""
    server = MotoServer(_free_port())
    no_config = tmp_path_factory.mktemp("aws") / "absent"
    werkzeug_logger = logging.getLogger("werkzeug")
    old_level = werkzeug_logger.level
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION",
                     "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", str(no_config))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(no_config))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        werkzeug_logger.setLevel(logging.WARNING)  # one INFO line per request otherwise
        server.start()
        try:
            yield server
        finally:
            server.stop()
            werkzeug_logger.setLevel(old_level)


@pytest.fixture
def s3_endpoint_url(moto_server) -> str:
    """Endpoint URL of the running moto server."""
    moto_server.start()
    return moto_server.endpoint_url


def _raw_s3_client(endpoint_url: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1",
                        config=Config(retries={"mode": "standard", "total_max_attempts": 1}))


@pytest.fixture
def s3_bucket(s3_endpoint_url):
    """Create a fresh, uniquely named bucket and yield its name; delete it afterwards."""
    client = _raw_s3_client(s3_endpoint_url)
    name = f"aitb-{uuid.uuid4().hex[:20]}"
    client.create_bucket(Bucket=name)
    yield name
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=item["Key"])
        client.delete_bucket(Bucket=name)
    except Exception:  # the test may have wiped or stopped the server
        pass


@pytest.fixture
def create_bucket(s3_endpoint_url):
    """Function that (re)creates a bucket by name on the moto server."""
    def _create(name: str) -> None:
        _raw_s3_client(s3_endpoint_url).create_bucket(Bucket=name)
    return _create


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



# --------------------------------------------------------------------------- Google Cloud Storage
# GCS: gcp-storage-emulator in-process on loopback (real HTTP through google-cloud-storage) with
# STORAGE_EMULATOR_HOST pointing at it, plus a fresh bucket per test.

class GCSEmulator:
    """An in-memory gcp-storage-emulator on a fixed loopback port that tests can stop and restart."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint_url = f"http://{MOTO_HOST}:{port}"
        self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Start the server (no-op if running); a restarted server is empty."""
        from gcp_storage_emulator.server import create_server

        if self._server is None:
            assert _port_is_free(self.port), f"port {self.port} is taken"
            server = create_server(MOTO_HOST, self.port, in_memory=True)
            server.start()
            self._server = server

    def stop(self) -> None:
        """Stop the server; the listening socket is closed, so connections are refused."""
        if self._server is not None:
            self._server.stop()
            self._server = None


def _raw_gcs_client():
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="aitoolbox-test", credentials=AnonymousCredentials())


@pytest.fixture(scope="session")
def gcs_emulator():
    """Session-wide gcp-storage-emulator with STORAGE_EMULATOR_HOST pointed at it."""
    server = GCSEmulator(_free_port())
    emulator_logger = logging.getLogger("gcp_storage_emulator")
    old_level = emulator_logger.level
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", server.endpoint_url)
        mp.setenv("GOOGLE_CLOUD_PROJECT", "aitoolbox-test")
        mp.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        mp.delenv("API_ENDPOINT_OVERRIDE", raising=False)
        emulator_logger.setLevel(logging.WARNING)  # one INFO line per request otherwise
        server.start()
        try:
            yield server
        finally:
            server.stop()
            emulator_logger.setLevel(old_level)


@pytest.fixture
def gcs_endpoint_url(gcs_emulator) -> str:
    """Endpoint URL of the running GCS emulator (restarted if a test stopped it)."""
    gcs_emulator.start()
    return gcs_emulator.endpoint_url


@pytest.fixture
def gcs_bucket(gcs_endpoint_url):
    """Create a fresh, uniquely named GCS bucket and yield its name; delete it afterwards."""
    client = _raw_gcs_client()
    name = f"aitb-{uuid.uuid4().hex[:20]}"
    client.create_bucket(name)
    yield name
    try:
        bucket = client.bucket(name)
        for blob in client.list_blobs(name):
            blob.delete()
        bucket.delete()
    except Exception:  # the test may have stopped the server
        pass


@pytest.fixture
def create_gcs_bucket(gcs_endpoint_url):
    """Function that creates a GCS bucket by name on the emulator."""
    def _create(name: str) -> None:
        _raw_gcs_client().create_bucket(name)
    return _create
