"""A background uploader for any object store: upload and delete jobs, retries, flush.

:class:`CloudUploader` holds the whole mechanism - the job queue on a daemon thread, the
per-key ordering, the retries with exponential backoff, the outage log (one warning, then a
periodic summary, then a line when the bucket answers again), ``flush`` / ``close``,
cancelling superseded uploads and the list of given-up jobs. A storage service supplies three
things by subclassing it: how one file is uploaded (:meth:`CloudUploader._upload`), how one
object is deleted (:meth:`CloudUploader._delete`), and its URI scheme.
:class:`aitoolbox.cloud.AWS.s3.S3Uploader` and :class:`aitoolbox.cloud.GoogleCloud.gcs.GCSUploader`
are those two backends.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Set, Tuple

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
    cancelled: bool = False  # superseded while its attempt ran: dropped when the attempt ends


@dataclass
class _Outage:
    """A run of failed attempts, from the first failure until an attempt succeeds again."""

    since: float  # time.time() of the first failure, for the log
    started: float  # time.monotonic() of the first failure
    last_error: str
    failed_attempts: int = 1
    last_summary: float = 0.0  # time.monotonic() of the last log line about it


class CloudUploader:
    """Upload and delete objects of one bucket on a background thread so training never waits.

    Jobs run one at a time on a daemon worker thread, in the order they were queued,
    except that a failed job is retried later (exponential backoff capped at
    ``max_retry_interval``) while the jobs behind it go ahead. Jobs on the same key
    always keep their relative order. An upload queued while the same file waits to be
    uploaded to the same key is not queued twice (the file is read when its job runs).
    Failures are never raised to the caller, and local files are never modified.

    An outage is logged once, not once per attempt: the first failure is a warning naming
    the bucket, the endpoint and the cause; while attempts keep failing, a summary line
    (failed attempts, jobs pending, last error) is logged at most every ``summary_interval``
    seconds; the first success after that logs that the bucket answers again. Every attempt
    is logged at DEBUG level. The retries stay bounded: after a failure no attempt at all is
    made before the backoff has passed, so a long queue does not multiply the attempts.

    Subclasses implement :meth:`_upload` and :meth:`_delete` (and may override
    :meth:`_redact` to hide secrets in logged errors, and :meth:`endpoint`); ``label`` and
    ``scheme`` name the service in log messages.

    Args:
        bucket_name: Bucket that receives the objects.
        max_retries: Retries per job before it is given up (logged as an error and
            listed by :meth:`failed_keys`); ``None`` retries forever.
        retry_interval: Seconds to wait before the first retry of a failed job.
        max_retry_interval: Upper bound in seconds for the backoff between retries.
        summary_interval: Seconds between two summary lines of an outage.

    Attributes:
        num_failed_attempts: Number of job attempts that failed so far.
        num_succeeded: Number of jobs that completed successfully so far.
    """

    label = "cloud"
    scheme = ""

    def __init__(self, bucket_name: str, max_retries: Optional[int] = None,
                 retry_interval: float = 1.0, max_retry_interval: float = 30.0,
                 summary_interval: float = 60.0) -> None:
        self.bucket_name = bucket_name
        self.max_retries = max_retries
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self.summary_interval = summary_interval
        self.num_failed_attempts = 0
        self.num_succeeded = 0
        self._jobs: List[_Job] = []
        self._failed: List[str] = []
        self._seq = 0
        self._closed = False
        self._outage: Optional[_Outage] = None
        self._consecutive_failures = 0
        self._no_attempt_before = 0.0  # time.monotonic(): the backoff after the last failure
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

    def endpoint(self) -> str:
        """The service endpoint the uploads go to, as shown in log messages."""
        return "the default endpoint"

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

    def cancel_uploads(self, keys: Iterable[str]) -> Set[str]:
        """Drop the uploads to ``keys`` that have not completed (their files were superseded).

        A waiting upload is removed from the queue; one whose attempt is running now is
        dropped when that attempt ends, whatever its outcome (no retry). Deletions stay.

        Args:
            keys: Object keys whose uploads are no longer wanted.

        Returns:
            The keys whose upload attempt is still running: their local files are being read.
        """
        keys = set(keys)
        with self._cond:
            busy = set()
            for job in [job for job in self._jobs if job.action == "upload" and job.key in keys]:
                if job.running:
                    job.cancelled = True
                    busy.add(job.key)
                else:
                    self._jobs.remove(job)
            self._cond.notify_all()
            return busy

    def pending_keys(self) -> List[str]:
        """List the keys of jobs that are not done yet, in queue order (cancelled ones excluded).

        Returns:
            One key per unfinished job (a key queued twice appears twice).
        """
        with self._cond:
            return [job.key for job in self._live_jobs()]

    def pending_upload_keys(self) -> List[str]:
        """List the keys of the uploads that have not completed yet, in queue order."""
        with self._cond:
            return [job.key for job in self._live_jobs() if job.action == "upload"]

    def failed_keys(self) -> List[str]:
        """List the keys of jobs given up after ``max_retries`` retries.

        Returns:
            The keys of abandoned jobs, oldest first.
        """
        with self._cond:
            return list(self._failed)

    def flush(self, timeout: Optional[float] = None, report: bool = True) -> bool:
        """Block until every job queued before this call is done or the timeout passes.

        Args:
            timeout: Seconds to wait at most; ``None`` waits as long as needed.
            report: Log the keys still pending when the timeout passes.

        Returns:
            True if every job queued so far succeeded; False if jobs are still
            pending when the timeout passes or a job was given up.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            last_seq = self._seq
            while self._jobs_up_to(last_seq) and not self._timed_out(deadline):
                self._cond.wait(None if deadline is None else deadline - time.monotonic())
            pending = self._jobs_up_to(last_seq)
            if pending and report:
                logger.warning("%s jobs still pending for bucket '%s': %s", self.label,
                               self.bucket_name, [job.key for job in pending])
            return not pending and not self._failed

    def close(self, timeout: Optional[float] = None, report: bool = True) -> bool:
        """Flush the queue, then stop the worker thread.

        Jobs still pending after ``timeout`` are dropped (their keys are logged).

        Args:
            timeout: Seconds to wait for the queue to drain; ``None`` waits as long as needed.
            report: Log the keys of the dropped jobs.

        Returns:
            The result of :meth:`flush`.
        """
        flushed = self.flush(timeout, report)
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
    def _live_jobs(self) -> List[_Job]:
        return [job for job in self._jobs if not job.cancelled]

    def _jobs_up_to(self, last_seq: int) -> List[_Job]:
        return [job for job in self._live_jobs() if job.seq <= last_seq]

    @staticmethod
    def _timed_out(deadline: Optional[float]) -> bool:
        return deadline is not None and time.monotonic() >= deadline

    def _enqueue(self, action: str, key: str, local_path: Optional[str] = None) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{type(self).__name__} for bucket '{self.bucket_name}' is closed")
            same_key = [job for job in self._jobs if job.key == key]
            last = same_key[-1] if same_key else None
            if action == "upload" and last is not None and last.action == "upload" \
                    and last.local_path == local_path and not last.running and not last.cancelled:
                return  # that job reads the file when it runs: it uploads this version too
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
                now = time.monotonic()
                job, wake_at = self._pick_ready_job(now) if now >= self._no_attempt_before \
                    else (None, self._no_attempt_before)
                if job is not None:
                    job.running = True
                    return job
                self._cond.wait(None if wake_at is None else max(wake_at - time.monotonic(), 0.0))
            return None

    def _pick_ready_job(self, now: float) -> Tuple[Optional[_Job], Optional[float]]:
        """Return the runnable job due first, or the time at which one becomes runnable.

        Jobs never tried are due at 0, so they go in queue order, and ahead of jobs that failed:
        one job that keeps failing does not hold the others up.
        """
        seen_keys = set()
        ready, wake_at = [], None
        for job in self._jobs:
            if job.key in seen_keys:
                continue
            seen_keys.add(job.key)
            if job.running:
                continue
            if job.next_try <= now:
                ready.append(job)
            else:
                wake_at = job.next_try if wake_at is None else min(wake_at, job.next_try)
        if ready:
            return min(ready, key=lambda job: (job.next_try, job.seq)), None
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
                self._record_success()
            else:
                self._record_failure(job, error)
            self._cond.notify_all()

    def _record_success(self) -> None:
        self._consecutive_failures = 0
        self._no_attempt_before = 0.0
        outage, self._outage = self._outage, None
        if outage is not None:
            # a warning, like the line that opened the outage: whoever saw that one sees this one
            logger.warning("%s bucket '%s' answers again after %.0fs (%d failed attempt(s) since %s); "
                           "%d job(s) still queued.", self.label, self.bucket_name,
                           time.monotonic() - outage.started, outage.failed_attempts,
                           _clock(outage.since), len(self._live_jobs()))

    def _record_failure(self, job: _Job, error: Exception) -> None:
        self.num_failed_attempts += 1
        job.attempts += 1
        reason = self._redact(f"{type(error).__name__}: {error}")
        target = self.uri(job.key)
        self._consecutive_failures += 1
        now = time.monotonic()
        self._no_attempt_before = now + self._backoff(self._consecutive_failures)
        logger.debug("%s %s of %s failed (attempt %d): %s", self.label, job.action, target, job.attempts, reason)
        if job.cancelled:
            self._jobs.remove(job)
        elif self.max_retries is not None and job.attempts > self.max_retries:
            self._jobs.remove(job)
            self._failed.append(job.key)
            logger.error("Giving up %s %s of %s after %d attempts: %s",
                         self.label, job.action, target, job.attempts, reason)
        else:
            job.next_try = now + self._backoff(job.attempts)
        self._log_outage(job, target, reason, now)

    def _backoff(self, failures: int) -> float:
        return min(self.retry_interval * 2 ** (failures - 1), self.max_retry_interval)

    def _log_outage(self, job: _Job, target: str, reason: str, now: float) -> None:
        outage = self._outage
        if outage is None:
            self._outage = _Outage(since=time.time(), started=now, last_error=reason, last_summary=now)
            logger.warning("%s %s of %s failed: %s (bucket '%s', endpoint %s). Training goes on; the queue "
                           "keeps retrying in the background (backoff up to %gs) and further failures are "
                           "summarised at most every %gs.", self.label, job.action, target, reason,
                           self.bucket_name, self._endpoint_for_log(), self.max_retry_interval,
                           self.summary_interval)
            return
        outage.failed_attempts += 1
        outage.last_error = reason
        if now - outage.last_summary >= self.summary_interval:
            outage.last_summary = now
            logger.warning("%s bucket '%s' still failing: %d attempt(s) failed since %s, %d job(s) pending "
                           "(%d upload(s)); last error: %s", self.label, self.bucket_name, outage.failed_attempts,
                           _clock(outage.since), len(self._live_jobs()),
                           sum(job.action == "upload" for job in self._live_jobs()), reason)

    def _endpoint_for_log(self) -> str:
        try:
            return self._redact(str(self.endpoint()))
        except Exception as error:  # describing the endpoint must not break the worker
            return f"unknown ({type(error).__name__})"


def _clock(timestamp: float) -> str:
    """A wall-clock time for log lines: ``2024-05-01 13:45:12``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
