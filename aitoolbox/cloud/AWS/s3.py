"""S3 helpers and a background uploader used to mirror experiment files to S3.

boto3 and botocore are imported inside the functions that need them, so importing
this module is cheap and does not require boto3 to be installed.

The client honours the standard AWS configuration: environment variables, the
shared config and credentials files, and ``AWS_ENDPOINT_URL`` /
``AWS_ENDPOINT_URL_S3`` (read natively by boto3 >= 1.28.57), which lets the same
code talk to S3-compatible stores or a local test server.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

logger = logging.getLogger(__name__)

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

_client_lock = threading.Lock()
_client_cache: Dict[Tuple[Any, ...], Any] = {}


def _reset_client_cache_after_fork() -> None:
    global _client_lock
    _client_lock = threading.Lock()
    _client_cache.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_client_cache_after_fork)


def parse_s3_uri(uri: str) -> Tuple[str, str]:
    """Split an ``s3://bucket/key`` URI into its bucket and key.

    Args:
        uri: URI of the form ``s3://bucket`` or ``s3://bucket/some/key``.

    Returns:
        A ``(bucket, key)`` tuple; the key is ``""`` when the URI names only a bucket.

    Raises:
        ValueError: If ``uri`` is not a string starting with ``s3://`` followed by a bucket name.
    """
    if not isinstance(uri, str) or not uri.startswith(S3_SCHEME):
        raise ValueError(f"Not an S3 URI (expected 's3://bucket/key'): {uri!r}")
    bucket, _, key = uri[len(S3_SCHEME):].partition("/")
    if not bucket or any(ch.isspace() for ch in bucket):
        raise ValueError(f"S3 URI has no valid bucket name: {uri!r}")
    return bucket, key


def is_s3_uri(path: Any) -> bool:
    """Tell whether ``path`` is an ``s3://`` URI with a bucket name.

    Args:
        path: Any value; only strings can be S3 URIs.

    Returns:
        True if ``path`` can be parsed by :func:`parse_s3_uri`, else False.
    """
    try:
        parse_s3_uri(path)
    except ValueError:
        return False
    return True


def _redact(text: str) -> str:
    """Remove credential values and request signatures from a message before logging it."""
    for name in _SECRET_ENV_VARS:
        secret = os.environ.get(name)
        if secret:
            text = text.replace(secret, "***")
    return _SIGNATURE_PATTERN.sub(r"\1***", text)


def _client_cache_key(max_attempts: Optional[int]) -> Tuple[Any, ...]:
    env = "\0".join(os.environ.get(name, "") for name in _CLIENT_ENV_VARS)
    return os.getpid(), max_attempts, hashlib.sha256(env.encode()).hexdigest()


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
    key = _client_cache_key(max_attempts)
    with _client_lock:
        client = _client_cache.get(key)
        if client is None:
            client = _create_client(max_attempts)
            _client_cache[key] = client
    return client


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

    client = s3_client or get_s3_client()
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


@dataclass
class _Job:
    seq: int
    action: str
    key: str
    local_path: Optional[str] = None
    attempts: int = 0
    next_try: float = 0.0
    running: bool = False


class S3Uploader:
    """Upload and delete S3 objects on a background thread so training never waits.

    Jobs run one at a time on a daemon worker thread, in the order they were queued,
    except that a failed job is retried later (exponential backoff capped at
    ``max_retry_interval``) while the jobs behind it go ahead. Jobs on the same key
    always keep their relative order. Failures are logged as warnings, never raised
    to the caller, and local files are never modified.

    Args:
        bucket_name: Bucket that receives the objects.
        max_retries: Retries per job before it is given up (logged as an error and
            listed by :meth:`failed_keys`); ``None`` retries forever.
        retry_interval: Seconds to wait before the first retry of a failed job.
        max_retry_interval: Upper bound in seconds for the backoff between retries.
        multipart_threshold: Size in bytes from which uploads use multipart upload.
        multipart_chunksize: Part size in bytes for multipart uploads.
        s3_client: Client to use; defaults to :func:`get_s3_client`.

    Attributes:
        num_failed_attempts: Number of job attempts that failed so far.
        num_succeeded: Number of jobs that completed successfully so far.
    """

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
    ) -> None:
        self.bucket_name = bucket_name
        self.max_retries = max_retries
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize
        self._s3_client = s3_client
        self.num_failed_attempts = 0
        self.num_succeeded = 0
        self._jobs: List[_Job] = []
        self._failed: List[str] = []
        self._seq = 0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._worker, name="S3Uploader", daemon=True)
        self._thread.start()

    def upload(self, local_path: str, key: str) -> None:
        """Queue the upload of a complete local file and return immediately.

        The file is read when the worker reaches the job, so only queue files that
        were completely (atomically) written.

        Args:
            local_path: File to upload.
            key: Destination object key in the uploader's bucket.

        Raises:
            RuntimeError: If the uploader was already closed.
        """
        self._enqueue("upload", key, os.fspath(local_path))

    def delete(self, key: str) -> None:
        """Queue the deletion of an object and return immediately.

        Args:
            key: Object key in the uploader's bucket.

        Raises:
            RuntimeError: If the uploader was already closed.
        """
        self._enqueue("delete", key)

    def pending_keys(self) -> List[str]:
        """List the keys of jobs that are not done yet, in queue order.

        Returns:
            One key per unfinished job (a key queued twice appears twice).
        """
        with self._cond:
            return [job.key for job in self._jobs]

    def failed_keys(self) -> List[str]:
        """List the keys of jobs given up after ``max_retries`` retries.

        Returns:
            The keys of abandoned jobs, oldest first.
        """
        with self._cond:
            return list(self._failed)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Block until every job queued before this call is done or the timeout passes.

        Args:
            timeout: Seconds to wait at most; ``None`` waits as long as needed.

        Returns:
            True if every job queued so far succeeded; False if jobs are still
            pending when the timeout passes (their keys are logged) or a job was
            given up.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            last_seq = self._seq
            while self._jobs_up_to(last_seq) and not self._timed_out(deadline):
                self._cond.wait(None if deadline is None else deadline - time.monotonic())
            pending = self._jobs_up_to(last_seq)
            if pending:
                logger.warning("S3 jobs still pending for bucket '%s': %s",
                               self.bucket_name, [job.key for job in pending])
            return not pending and not self._failed

    def close(self, timeout: Optional[float] = None) -> bool:
        """Flush the queue, then stop the worker thread.

        Jobs still pending after ``timeout`` are dropped (their keys are logged).

        Args:
            timeout: Seconds to wait for the queue to drain; ``None`` waits as long as needed.

        Returns:
            The result of :meth:`flush`.
        """
        flushed = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)
        return flushed

    def __enter__(self) -> "S3Uploader":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _jobs_up_to(self, last_seq: int) -> List[_Job]:
        return [job for job in self._jobs if job.seq <= last_seq]

    @staticmethod
    def _timed_out(deadline: Optional[float]) -> bool:
        return deadline is not None and time.monotonic() >= deadline

    def _enqueue(self, action: str, key: str, local_path: Optional[str] = None) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError(f"S3Uploader for bucket '{self.bucket_name}' is closed")
            self._seq += 1
            self._jobs.append(_Job(self._seq, action, key, local_path))
            self._cond.notify_all()

    def _worker(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            error = self._run_job(job)
            self._finish_job(job, error)

    def _next_job(self) -> Optional[_Job]:
        with self._cond:
            while not self._closed:
                job, wake_at = self._pick_ready_job(time.monotonic())
                if job is not None:
                    job.running = True
                    return job
                self._cond.wait(None if wake_at is None else max(wake_at - time.monotonic(), 0.0))
            return None

    def _pick_ready_job(self, now: float) -> Tuple[Optional[_Job], Optional[float]]:
        """Return the oldest runnable job, or the time at which one becomes runnable."""
        seen_keys = set()
        wake_at = None
        for job in self._jobs:
            if job.key in seen_keys:
                continue
            seen_keys.add(job.key)
            if job.running:
                continue
            if job.next_try <= now:
                return job, None
            wake_at = job.next_try if wake_at is None else min(wake_at, job.next_try)
        return None, wake_at

    def _run_job(self, job: _Job) -> Optional[Exception]:
        client = self._s3_client or get_s3_client()
        try:
            if job.action == "upload":
                upload_file(job.local_path, self.bucket_name, job.key, s3_client=client,
                            multipart_threshold=self.multipart_threshold,
                            multipart_chunksize=self.multipart_chunksize)
            else:
                delete_key(self.bucket_name, job.key, s3_client=client)
        except Exception as error:  # any failure is retried; it must not kill the worker
            return error
        return None

    def _finish_job(self, job: _Job, error: Optional[Exception]) -> None:
        with self._cond:
            job.running = False
            if error is None:
                self.num_succeeded += 1
                self._jobs.remove(job)
            else:
                self._record_failure(job, error)
            self._cond.notify_all()

    def _record_failure(self, job: _Job, error: Exception) -> None:
        self.num_failed_attempts += 1
        job.attempts += 1
        reason = _redact(f"{type(error).__name__}: {error}")
        target = f"s3://{self.bucket_name}/{job.key}"
        if self.max_retries is not None and job.attempts > self.max_retries:
            self._jobs.remove(job)
            self._failed.append(job.key)
            logger.error("Giving up S3 %s of %s after %d attempts: %s",
                         job.action, target, job.attempts, reason)
            return
        delay = min(self.retry_interval * 2 ** (job.attempts - 1), self.max_retry_interval)
        job.next_try = time.monotonic() + delay
        logger.warning("S3 %s of %s failed (attempt %d), retrying in %.1fs: %s",
                       job.action, target, job.attempts, delay, reason)
