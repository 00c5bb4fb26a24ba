"""S3 helpers and the S3 backend of the background uploader that mirrors experiment files.

boto3 and botocore are imported inside the functions that need them, so importing
this module is cheap and does not require boto3 to be installed.

The client honours the standard AWS configuration: environment variables, the
shared config and credentials files, and ``AWS_ENDPOINT_URL`` /
``AWS_ENDPOINT_URL_S3`` (read natively by boto3 >= 1.28.57), which lets the same
code talk to S3-compatible stores or a local test server.
"""
from __future__ import annotations

import os
import re
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from aitoolbox.cloud.common import ClientCache, environment_fingerprint, is_bucket_uri, split_bucket_uri
from aitoolbox.cloud.uploader import CloudUploader
from aitoolbox.utils.io import apply_umask

S3_SCHEME = "s3://"
DEFAULT_MULTIPART_THRESHOLD = 8 * 1024 * 1024
DEFAULT_MULTIPART_CHUNKSIZE = 8 * 1024 * 1024

# Environment variables that change how a client is built; a change invalidates the cache.
_CLIENT_ENV_VARS = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_MAX_ATTEMPTS", "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
)
_SECRET_ENV_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_SIGNATURE_PATTERN = re.compile(r"((?:X-Amz-)?(?:Credential|Signature|Security-Token)=)[^,&\s\"']+")

_clients = ClientCache()


def parse_s3_uri(uri: str) -> Tuple[str, str]:
    """Split an ``s3://bucket/key`` URI into its bucket and key.

    Args:
        uri: URI of the form ``s3://bucket`` or ``s3://bucket/some/key``.

    Returns:
        A ``(bucket, key)`` tuple; the key is ``""`` when the URI names only a bucket.

    Raises:
        ValueError: If ``uri`` is not a string starting with ``s3://`` followed by a bucket name.
    """
    return split_bucket_uri(uri, S3_SCHEME, "an S3")


def is_s3_uri(path: Any) -> bool:
    """Tell whether ``path`` is an ``s3://`` URI with a bucket name.

    Args:
        path: Any value; only strings can be S3 URIs.

    Returns:
        True if ``path`` can be parsed by :func:`parse_s3_uri`, else False.
    """
    return is_bucket_uri(path, S3_SCHEME)


#: The names every storage backend module offers (see :mod:`aitoolbox.cloud.backends`).
parse_uri = parse_s3_uri
is_uri = is_s3_uri


def _redact(text: str) -> str:
    """Remove credential values and request signatures from a message before logging it."""
    for name in _SECRET_ENV_VARS:
        secret = os.environ.get(name)
        if secret:
            text = text.replace(secret, "***")
    return _SIGNATURE_PATTERN.sub(r"\1***", text)


def _create_client(max_attempts: Optional[int]) -> Any:
    import boto3
    from botocore.config import Config

    retries: Dict[str, Any] = {"mode": "standard"}
    if max_attempts is not None:
        retries["total_max_attempts"] = max_attempts
    session = boto3.session.Session()
    return session.client("s3", config=Config(retries=retries))


def get_s3_client(max_attempts: Optional[int] = None) -> Any:
    """Return a cached boto3 S3 client using the standard AWS configuration.

    Retries use botocore's ``standard`` mode. The client is created lazily and cached
    per process id (and per relevant ``AWS_*`` environment), so it can be shared
    between threads but is never reused across ``fork``.

    Args:
        max_attempts: Total attempts per request, including the first one. ``None``
            keeps botocore's setting (``AWS_MAX_ATTEMPTS`` / config file, else 3).

    Returns:
        A ``botocore.client.S3`` instance.
    """
    key = (max_attempts, environment_fingerprint(_CLIENT_ENV_VARS))
    return _clients.get(key, lambda: _create_client(max_attempts))


#: the bucket check at the start of ``fit`` gives up after about
#: ``BUCKET_CHECK_ATTEMPTS * (BUCKET_CHECK_CONNECT_TIMEOUT_S + BUCKET_CHECK_READ_TIMEOUT_S)`` seconds
#: (30 s) against an endpoint that accepts connections but never answers (botocore's defaults: ~180 s)
BUCKET_CHECK_CONNECT_TIMEOUT_S = 5.0
BUCKET_CHECK_READ_TIMEOUT_S = 10.0
BUCKET_CHECK_ATTEMPTS = 2


def _bucket_check_client() -> Any:
    """An S3 client with short timeouts, for the bucket check (uploads keep the usual client)."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=BUCKET_CHECK_CONNECT_TIMEOUT_S, read_timeout=BUCKET_CHECK_READ_TIMEOUT_S,
                    retries={"mode": "standard", "total_max_attempts": BUCKET_CHECK_ATTEMPTS})
    return boto3.session.Session().client("s3", config=config)


def _bucket_error_reason(error: Exception) -> str:
    from botocore.exceptions import ClientError

    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            return "it does not exist"
        if code in ("403", "AccessDenied", "Forbidden"):
            return "access is denied"
        return f"S3 answered with error {code or 'unknown'}"
    return f"S3 could not be reached ({type(error).__name__}: {_redact(str(error))})"


def check_bucket_exists(bucket_name: str, *, s3_client: Any = None) -> None:
    """Make sure a bucket exists and is accessible with the current credentials.

    Args:
        bucket_name: Name of the bucket to check.
        s3_client: Client to use; defaults to :func:`get_s3_client`.

    Raises:
        ValueError: If the bucket does not exist, is not accessible, or S3 cannot be
            reached. The message names the bucket and how to fix the problem.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client or _bucket_check_client()
    try:
        client.head_bucket(Bucket=bucket_name)
    except (BotoCoreError, ClientError) as error:
        raise ValueError(
            f"S3 bucket '{bucket_name}' is not usable: {_bucket_error_reason(error)}. "
            f"Create the bucket (e.g. 'aws s3 mb s3://{bucket_name}'), check the AWS "
            f"credentials and their permissions, and set AWS_ENDPOINT_URL if you use an "
            f"S3-compatible endpoint (current endpoint: {client.meta.endpoint_url})."
        ) from error


def _transfer_config(multipart_threshold: int, multipart_chunksize: int) -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunksize
    )


def upload_file(
    local_path: str,
    bucket: str,
    key: str,
    *,
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
    multipart_chunksize: int = DEFAULT_MULTIPART_CHUNKSIZE,
    s3_client: Any = None,
) -> None:
    """Upload a local file to S3, using multipart upload for large files.

    Args:
        local_path: File to upload.
        bucket: Destination bucket.
        key: Destination object key.
        multipart_threshold: Size in bytes from which a multipart upload is used.
        multipart_chunksize: Part size in bytes (S3 enforces at least 5 MiB per part).
        s3_client: Client to use; defaults to :func:`get_s3_client`.

    Raises:
        botocore.exceptions.BotoCoreError: On connection or client-side failures.
        boto3.exceptions.S3UploadFailedError: If S3 rejects the upload.
        FileNotFoundError: If ``local_path`` does not exist.
    """
    client = s3_client or get_s3_client()
    config = _transfer_config(multipart_threshold, multipart_chunksize)
    client.upload_file(os.fspath(local_path), bucket, key, Config=config)


def download_file(bucket: str, key: str, local_path: str, *, s3_client: Any = None) -> None:
    """Download an S3 object to a local file atomically.

    The object is written to a temporary file in the destination folder, which then
    replaces ``local_path`` with ``os.replace``; readers never see a partial file.

    Args:
        bucket: Source bucket.
        key: Source object key.
        local_path: Destination file; missing parent folders are created.
        s3_client: Client to use; defaults to :func:`get_s3_client`.

    Raises:
        botocore.exceptions.ClientError: If the object does not exist or is not readable.
        botocore.exceptions.BotoCoreError: On connection or client-side failures.
    """
    client = s3_client or get_s3_client()
    local_path = os.path.abspath(os.fspath(local_path))
    folder = os.path.dirname(local_path)
    os.makedirs(folder, exist_ok=True)
    prefix = f".{os.path.basename(local_path)}."
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
    os.close(fd)
    try:
        client.download_file(bucket, key, tmp_path)
        apply_umask(tmp_path)
        os.replace(tmp_path, local_path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def list_keys(bucket: str, prefix: str = "", *, s3_client: Any = None) -> List[str]:
    """List the object keys in a bucket that start with ``prefix``.

    Args:
        bucket: Bucket to list.
        prefix: Key prefix to filter on; ``""`` lists every key.
        s3_client: Client to use; defaults to :func:`get_s3_client`.

    Returns:
        The matching keys in the order S3 returns them (lexicographic).

    Raises:
        botocore.exceptions.ClientError: If the bucket does not exist or is not readable.
    """
    client = s3_client or get_s3_client()
    paginator = client.get_paginator("list_objects_v2")
    keys: List[str] = []
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys


def list_objects(bucket: str, prefix: str = "", *, s3_client: Any = None) -> List[Tuple[str, float]]:
    """List the objects in a bucket that start with ``prefix``, with their modification times.

    Args:
        bucket: Bucket to list.
        prefix: Key prefix to filter on; ``""`` lists every object.
        s3_client: Client to use; defaults to :func:`get_s3_client`.

    Returns:
        ``(key, last-modified time in seconds since the epoch)`` pairs, in key order.

    Raises:
        botocore.exceptions.ClientError: If the bucket does not exist or is not readable.
    """
    client = s3_client or get_s3_client()
    objects: List[Tuple[str, float]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects.extend((item["Key"], item["LastModified"].timestamp()) for item in page.get("Contents", []))
    return objects


def delete_key(bucket: str, key: str, *, s3_client: Any = None) -> None:
    """Delete one object; deleting a key that does not exist is not an error.

    Args:
        bucket: Bucket holding the object.
        key: Key of the object to delete.
        s3_client: Client to use; defaults to :func:`get_s3_client`.

    Raises:
        botocore.exceptions.ClientError: If the bucket does not exist or is not writable.
    """
    client = s3_client or get_s3_client()
    client.delete_object(Bucket=bucket, Key=key)


class S3Uploader(CloudUploader):
    """Upload and delete S3 objects on a background thread so training never waits.

    The S3 backend of :class:`~aitoolbox.cloud.uploader.CloudUploader` (job queue, per-key
    ordering, retries with backoff, ``flush`` / ``close``): uploads use multipart upload for
    large files, and credentials are redacted from logged errors.

    Args:
        bucket_name: Bucket that receives the objects.
        max_retries: Retries per job before it is given up (logged as an error and
            listed by :meth:`failed_keys`); ``None`` retries forever.
        retry_interval: Seconds to wait before the first retry of a failed job.
        max_retry_interval: Upper bound in seconds for the backoff between retries.
        multipart_threshold: Size in bytes from which uploads use multipart upload.
        multipart_chunksize: Part size in bytes for multipart uploads.
        s3_client: Client to use; defaults to :func:`get_s3_client`.
        summary_interval: Seconds between two summary lines of an outage (see
            :class:`~aitoolbox.cloud.uploader.CloudUploader`).

    Attributes:
        num_failed_attempts: Number of job attempts that failed so far.
        num_succeeded: Number of jobs that completed successfully so far.
    """

    label = "S3"
    scheme = S3_SCHEME

    def __init__(
        self,
        bucket_name: str,
        max_retries: Optional[int] = None,
        retry_interval: float = 1.0,
        max_retry_interval: float = 30.0,
        *,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        multipart_chunksize: int = DEFAULT_MULTIPART_CHUNKSIZE,
        s3_client: Any = None,
        summary_interval: float = 60.0,
    ) -> None:
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize
        self._s3_client = s3_client
        super().__init__(bucket_name, max_retries, retry_interval, max_retry_interval, summary_interval)

    def _upload(self, local_path: str, key: str) -> None:
        upload_file(local_path, self.bucket_name, key, s3_client=self._s3_client or get_s3_client(),
                    multipart_threshold=self.multipart_threshold,
                    multipart_chunksize=self.multipart_chunksize)

    def _delete(self, key: str) -> None:
        delete_key(self.bucket_name, key, s3_client=self._s3_client or get_s3_client())

    def _redact(self, text: str) -> str:
        return _redact(text)

    def endpoint(self) -> str:
        return str((self._s3_client or get_s3_client()).meta.endpoint_url)


def create_uploader(bucket_name: str, *, retry_interval: float = 1.0, max_retry_interval: float = 30.0,
                    client_max_attempts: Optional[int] = None, summary_interval: float = 60.0) -> S3Uploader:
    """The background uploader the experiment store uses for an S3 bucket.

    Args:
        bucket_name: Bucket that receives the objects.
        retry_interval: Seconds before the first retry of a failed job.
        max_retry_interval: Upper bound in seconds for the backoff between retries.
        client_max_attempts: Attempts per request inside one try (botocore retries).
        summary_interval: Seconds between two summary lines of an outage.

    Returns:
        An :class:`S3Uploader` that retries forever.
    """
    return S3Uploader(bucket_name, retry_interval=retry_interval, max_retry_interval=max_retry_interval,
                      s3_client=get_s3_client(max_attempts=client_max_attempts), summary_interval=summary_interval)
