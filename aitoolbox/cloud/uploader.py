"""A background uploader for any object store: upload and delete jobs, retries, flush.

:class:`CloudUploader` holds the whole mechanism - the job queue on a daemon thread, the
per-key ordering, the retries with exponential backoff, ``flush`` / ``close`` and the list of
given-up jobs. A storage service supplies three things by subclassing it: how one file is
uploaded (:meth:`CloudUploader._upload`), how one object is deleted
(:meth:`CloudUploader._delete`), and its URI scheme. :class:`aitoolbox.cloud.AWS.s3.S3Uploader`
and :class:`aitoolbox.cloud.GoogleCloud.gcs.GCSUploader` are those two backends.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    seq: int
    action: str
    key: str
    local_path: Optional[str] = None
    attempts: int = 0
    next_try: float = 0.0
    running: bool = False


class CloudUploader:
    """Upload and delete objects of one bucket on a background thread so training never waits.

    Jobs run one at a time on a daemon worker thread, in the order they were queued,
    except that a failed job is retried later (exponential backoff capped at
    ``max_retry_interval``) while the jobs behind it go ahead. Jobs on the same key
    always keep their relative order. Failures are logged as warnings, never raised
    to the caller, and local files are never modified.

    Subclasses implement :meth:`_upload` and :meth:`_delete` (and may override
    :meth:`_redact` to hide secrets in logged errors); ``label`` and ``scheme`` name the
    service in log messages.

    Args:
        bucket_name: Bucket that receives the objects.
        max_retries: Retries per job before it is given up (logged as an error and
            listed by :meth:`failed_keys`); ``None`` retries forever.
        retry_interval: Seconds to wait before the first retry of a failed job.
        max_retry_interval: Upper bound in seconds for the backoff between retries.

    Attributes:
        num_failed_attempts: Number of job attempts that failed so far.
        num_succeeded: Number of jobs that completed successfully so far.
    """

    label = "cloud"
    scheme = ""

    def __init__(self, bucket_name: str, max_retries: Optional[int] = None,
                 retry_interval: float = 1.0, max_retry_interval: float = 30.0) -> None:
        self.bucket_name = bucket_name
        self.max_retries = max_retries
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self.num_failed_attempts = 0
        self.num_succeeded = 0
        self._jobs: List[_Job] = []
        self._failed: List[str] = []
        self._seq = 0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._worker, name=type(self).__name__, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ backend hooks
    def _upload(self, local_path: str, key: str) -> None:
        """Upload one complete local file to ``key`` (raise on failure)."""
        raise NotImplementedError

    def _delete(self, key: str) -> None:
        """Delete the object ``key``; a missing object is not an error (raise on failure)."""
        raise NotImplementedError

    def _redact(self, text: str) -> str:
        """Remove secrets from an error message before it is logged."""
        return text

    def uri(self, key: str) -> str:
        """The URI of ``key`` in the uploader's bucket, as shown in log messages."""
        return f"{self.scheme}{self.bucket_name}/{key}"

    # ------------------------------------------------------------------ public API
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
                logger.warning("%s jobs still pending for bucket '%s': %s", self.label,
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

    def __enter__(self) -> "CloudUploader":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ the queue
    def _jobs_up_to(self, last_seq: int) -> List[_Job]:
        return [job for job in self._jobs if job.seq <= last_seq]

    @staticmethod
    def _timed_out(deadline: Optional[float]) -> bool:
        return deadline is not None and time.monotonic() >= deadline

    def _enqueue(self, action: str, key: str, local_path: Optional[str] = None) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{type(self).__name__} for bucket '{self.bucket_name}' is closed")
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
        try:
            if job.action == "upload":
                self._upload(job.local_path, job.key)
            else:
                self._delete(job.key)
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
        reason = self._redact(f"{type(error).__name__}: {error}")
        target = self.uri(job.key)
        if self.max_retries is not None and job.attempts > self.max_retries:
            self._jobs.remove(job)
            self._failed.append(job.key)
            logger.error("Giving up %s %s of %s after %d attempts: %s",
                         self.label, job.action, target, job.attempts, reason)
            return
        delay = min(self.retry_interval * 2 ** (job.attempts - 1), self.max_retry_interval)
        job.next_try = time.monotonic() + delay
        logger.warning("%s %s of %s failed (attempt %d), retrying in %.1fs: %s",
                       self.label, job.action, target, job.attempts, delay, reason)
