"""Google Cloud Storage helpers: the GCS counterpart of :mod:`aitoolbox.cloud.AWS.s3`.

``google-cloud-storage`` (the ``gcs`` extra) is imported inside the functions that need it,
so importing this module is cheap and does not require the package.

The client honours the standard Google configuration: Application Default Credentials,
``GOOGLE_CLOUD_PROJECT`` and ``STORAGE_EMULATOR_HOST``. When ``STORAGE_EMULATOR_HOST`` is
set (a local emulator such as ``gcp-storage-emulator`` or ``fake-gcs-server``), the client
uses anonymous credentials, so no Google account is needed.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from aitoolbox.cloud.common import ClientCache, environment_fingerprint, is_bucket_uri, split_bucket_uri
from aitoolbox.cloud.uploader import CloudUploader
from aitoolbox.utils.io import apply_umask
from aitoolbox.utils.optional import import_optional

GCS_SCHEME = "gs://"
EMULATOR_ENV_VAR = "STORAGE_EMULATOR_HOST"
#: Project used with an emulator when ``GOOGLE_CLOUD_PROJECT`` is not set.
EMULATOR_PROJECT = "aitoolbox-emulator"
#: Seconds one HTTP request may take (connect, read) before it fails.
DEFAULT_TIMEOUT = 60.0
#: Seconds the bucket check before training keeps retrying an unreachable service.
CHECK_TIMEOUT = 10.0
_LIBRARY_DEFAULT = object()

_CLIENT_ENV_VARS = (
    EMULATOR_ENV_VAR, "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "GOOGLE_APPLICATION_CREDENTIALS",
    "API_ENDPOINT_OVERRIDE",
)

_clients = ClientCache()


def import_storage() -> Any:
    """Import ``google.cloud.storage``, or explain how to install it.

    Returns:
        The ``google.cloud.storage`` module.

    Raises:
        ImportError: If ``google-cloud-storage`` is not installed; the message names the extra.
    """
    return import_optional("google.cloud.storage", "gcs", "Google Cloud Storage support")


def parse_gcs_uri(uri: str) -> Tuple[str, str]:
    """Split a ``gs://bucket/key`` URI into its bucket and key.

    Args:
        uri: URI of the form ``gs://bucket`` or ``gs://bucket/some/key``.

    Returns:
        A ``(bucket, key)`` tuple; the key is ``""`` when the URI names only a bucket.

    Raises:
        ValueError: If ``uri`` is not a string starting with ``gs://`` followed by a bucket name.
    """
    return split_bucket_uri(uri, GCS_SCHEME, "a Google Cloud Storage")


def is_gcs_uri(path: Any) -> bool:
    """Tell whether ``path`` is a ``gs://`` URI with a bucket name.

    Args:
        path: Any value; only strings can be GCS URIs.

    Returns:
        True if ``path`` can be parsed by :func:`parse_gcs_uri`, else False.
    """
    return is_bucket_uri(path, GCS_SCHEME)


#: The names every storage backend module offers (see :mod:`aitoolbox.cloud.backends`).
parse_uri = parse_gcs_uri
is_uri = is_gcs_uri


def _retry_kwargs(retry: Any) -> Dict[str, Any]:
    """``retry=...`` for a google-cloud-storage call; ``_LIBRARY_DEFAULT`` keeps the library's own."""
    return {} if retry is _LIBRARY_DEFAULT else {"retry": retry}


def emulator_host() -> Optional[str]:
    """The emulator endpoint from ``STORAGE_EMULATOR_HOST``, or None for the real service."""
    return os.environ.get(EMULATOR_ENV_VAR) or None


def _create_client() -> Any:
    storage = import_storage()
    if emulator_host():
        from google.auth.credentials import AnonymousCredentials

        project = os.environ.get("GOOGLE_CLOUD_PROJECT") or EMULATOR_PROJECT
        return storage.Client(project=project, credentials=AnonymousCredentials())
    return storage.Client()


def get_gcs_client() -> Any:
    """Return a cached ``google.cloud.storage.Client`` using the standard Google configuration.

    The client is created lazily and cached per process id (and per relevant environment:
    ``STORAGE_EMULATOR_HOST``, ``GOOGLE_CLOUD_PROJECT``, ``GOOGLE_APPLICATION_CREDENTIALS``),
    so it can be shared between threads but is never reused across ``fork``. With
    ``STORAGE_EMULATOR_HOST`` set it talks to that emulator with anonymous credentials.

    Returns:
        A ``google.cloud.storage.Client``.

    Raises:
        ImportError: If ``google-cloud-storage`` is not installed.
        google.auth.exceptions.DefaultCredentialsError: If no credentials are configured
            (and no emulator is set).
    """
    return _clients.get(environment_fingerprint(_CLIENT_ENV_VARS), _create_client)


def _endpoint(client: Any) -> str:
    return emulator_host() or getattr(client, "api_endpoint", None) or "https://storage.googleapis.com"


def _bucket_error_reason(error: Exception) -> str:
    code = getattr(error, "code", None)
    if code == 404:
        return "it does not exist"
    if code in (401, 403):
        return "access is denied"
    if code is not None:
        return f"Google Cloud Storage answered with error {code}"
    return f"Google Cloud Storage could not be reached ({type(error).__name__}: {error})"


def _client_for_check(bucket_name: str) -> Any:
    from google.auth.exceptions import DefaultCredentialsError

    try:
        return get_gcs_client()
    except DefaultCredentialsError as error:
        raise ValueError(
            f"Google Cloud Storage bucket '{bucket_name}' is not usable: no Google credentials were "
            f"found. Run 'gcloud auth application-default login', set GOOGLE_APPLICATION_CREDENTIALS "
            f"to a service account key file, or set {EMULATOR_ENV_VAR} to use an emulator."
        ) from error


def check_bucket_exists(bucket_name: str, *, gcs_client: Any = None) -> None:
    """Make sure a bucket exists and is accessible with the current credentials.

    Args:
        bucket_name: Name of the bucket to check.
        gcs_client: Client to use; defaults to :func:`get_gcs_client`.

    Raises:
        ImportError: If ``google-cloud-storage`` is not installed.
        ValueError: If no credentials are configured, or the bucket does not exist, is not
            accessible, or the service cannot be reached. The message names the bucket and how to fix the problem.
    """
    from google.cloud.storage.retry import DEFAULT_RETRY

    client = gcs_client or _client_for_check(bucket_name)
    try:
        client.get_bucket(bucket_name, timeout=CHECK_TIMEOUT, retry=DEFAULT_RETRY.with_timeout(CHECK_TIMEOUT))
    except Exception as error:  # google.api_core errors, transport errors, bad credentials
        raise ValueError(
            f"Google Cloud Storage bucket '{bucket_name}' is not usable: "
            f"{_bucket_error_reason(error)}. Create the bucket (e.g. 'gcloud storage buckets "
            f"create gs://{bucket_name}'), check the Google credentials and their permissions, "
            f"and set {EMULATOR_ENV_VAR} if you use an emulator (current endpoint: "
            f"{_endpoint(client)})."
        ) from error


def upload_file(local_path: str, bucket: str, key: str, *, gcs_client: Any = None,
                timeout: float = DEFAULT_TIMEOUT, retry: Any = _LIBRARY_DEFAULT) -> None:
    """Upload a local file to Google Cloud Storage (resumable upload for large files).

    Args:
        local_path: File to upload.
        bucket: Destination bucket.
        key: Destination object name.
        gcs_client: Client to use; defaults to :func:`get_gcs_client`.
        timeout: Seconds one HTTP request may take.
        retry: A ``google.api_core.retry.Retry`` or None (no retries); the library's
            default policy when not given.

    Raises:
        FileNotFoundError: If ``local_path`` does not exist.
        google.api_core.exceptions.GoogleAPIError: If the service rejects the upload.
    """
    client = gcs_client or get_gcs_client()
    blob = client.bucket(bucket).blob(key)
    blob.upload_from_filename(os.fspath(local_path), timeout=timeout, **_retry_kwargs(retry))


def download_file(bucket: str, key: str, local_path: str, *, gcs_client: Any = None,
                  timeout: float = DEFAULT_TIMEOUT) -> None:
    """Download an object to a local file atomically.

    The object is written to a temporary file in the destination folder, which then
    replaces ``local_path`` with ``os.replace``; readers never see a partial file.

    Args:
        bucket: Source bucket.
        key: Source object name.
        local_path: Destination file; missing parent folders are created.
        gcs_client: Client to use; defaults to :func:`get_gcs_client`.
        timeout: Seconds one HTTP request may take.

    Raises:
        google.api_core.exceptions.NotFound: If the bucket or the object does not exist.
        google.api_core.exceptions.GoogleAPIError: On other service failures.
    """
    client = gcs_client or get_gcs_client()
    local_path = os.path.abspath(os.fspath(local_path))
    folder = os.path.dirname(local_path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(local_path)}.", suffix=".tmp")
    os.close(fd)
    try:
        client.bucket(bucket).blob(key).download_to_filename(tmp_path, timeout=timeout)
        apply_umask(tmp_path)
        os.replace(tmp_path, local_path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def list_keys(bucket: str, prefix: str = "", *, gcs_client: Any = None) -> List[str]:
    """List the object names in a bucket that start with ``prefix``.

    Args:
        bucket: Bucket to list.
        prefix: Name prefix to filter on; ``""`` lists every object.
        gcs_client: Client to use; defaults to :func:`get_gcs_client`.

    Returns:
        The matching object names in lexicographic order.

    Raises:
        google.api_core.exceptions.NotFound: If the bucket does not exist.
    """
    client = gcs_client or get_gcs_client()
    return sorted(blob.name for blob in client.list_blobs(bucket, prefix=prefix or None,
                                                          timeout=DEFAULT_TIMEOUT))


def list_objects(bucket: str, prefix: str = "", *, gcs_client: Any = None) -> List[Tuple[str, float]]:
    """List the objects in a bucket that start with ``prefix``, with their modification times.

    Args:
        bucket: Bucket to list.
        prefix: Name prefix to filter on; ``""`` lists every object.
        gcs_client: Client to use; defaults to :func:`get_gcs_client`.

    Returns:
        ``(name, last-modified time in seconds since the epoch)`` pairs, in name order.

    Raises:
        google.api_core.exceptions.NotFound: If the bucket does not exist.
    """
    client = gcs_client or get_gcs_client()
    blobs = client.list_blobs(bucket, prefix=prefix or None, timeout=DEFAULT_TIMEOUT)
    return sorted((blob.name, blob.updated.timestamp() if blob.updated else 0.0) for blob in blobs)


def delete_key(bucket: str, key: str, *, gcs_client: Any = None, retry: Any = _LIBRARY_DEFAULT) -> None:
    """Delete one object; deleting an object that does not exist is not an error.

    Args:
        bucket: Bucket holding the object.
        key: Name of the object to delete.
        gcs_client: Client to use; defaults to :func:`get_gcs_client`.
        retry: As in :func:`upload_file`.

    Raises:
        google.api_core.exceptions.GoogleAPIError: If the bucket is missing or not writable.
    """
    from google.api_core.exceptions import NotFound

    client = gcs_client or get_gcs_client()
    bucket_obj = client.bucket(bucket)
    try:
        bucket_obj.blob(key).delete(timeout=DEFAULT_TIMEOUT, **_retry_kwargs(retry))
    except NotFound:
        # A missing object is fine (idempotent delete, like S3); a missing bucket is not.
        if not bucket_obj.exists(timeout=DEFAULT_TIMEOUT):
            raise


class GCSUploader(CloudUploader):
    """Upload and delete Google Cloud Storage objects on a background thread.

    The GCS backend of :class:`~aitoolbox.cloud.uploader.CloudUploader` (job queue, per-key
    ordering, retries with backoff, ``flush`` / ``close``). Each try is one request without the
    library's own retry loop, so a failing service is retried - and logged - by the uploader.

    Args:
        bucket_name: Bucket that receives the objects.
        max_retries: Retries per job before it is given up; ``None`` retries forever.
        retry_interval: Seconds to wait before the first retry of a failed job.
        max_retry_interval: Upper bound in seconds for the backoff between retries.
        gcs_client: Client to use; defaults to :func:`get_gcs_client`.
        timeout: Seconds one HTTP request may take.
        summary_interval: Seconds between two summary lines of an outage.
    """

    label = "GCS"
    scheme = GCS_SCHEME

    def __init__(self, bucket_name: str, max_retries: Optional[int] = None, retry_interval: float = 1.0,
                 max_retry_interval: float = 30.0, *, gcs_client: Any = None,
                 timeout: float = DEFAULT_TIMEOUT, summary_interval: float = 60.0) -> None:
        self._gcs_client = gcs_client
        self.timeout = timeout
        super().__init__(bucket_name, max_retries, retry_interval, max_retry_interval, summary_interval)

    def _upload(self, local_path: str, key: str) -> None:
        upload_file(local_path, self.bucket_name, key, gcs_client=self._gcs_client or get_gcs_client(),
                    timeout=self.timeout, retry=None)

    def _delete(self, key: str) -> None:
        delete_key(self.bucket_name, key, gcs_client=self._gcs_client or get_gcs_client(), retry=None)

    def endpoint(self) -> str:
        return _endpoint(self._gcs_client)


def create_uploader(bucket_name: str, *, retry_interval: float = 1.0, max_retry_interval: float = 30.0,
                    client_max_attempts: Optional[int] = None, summary_interval: float = 60.0) -> GCSUploader:
    """The background uploader the experiment store uses for a GCS bucket.

    Args:
        bucket_name: Bucket that receives the objects.
        retry_interval: Seconds before the first retry of a failed job.
        max_retry_interval: Upper bound in seconds for the backoff between retries.
        client_max_attempts: Accepted for symmetry with S3; each GCS try is one request.
        summary_interval: Seconds between two summary lines of an outage.

    Returns:
        A :class:`GCSUploader` that retries forever.
    """
    del client_max_attempts
    return GCSUploader(bucket_name, retry_interval=retry_interval, max_retry_interval=max_retry_interval,
                       summary_interval=summary_interval)
