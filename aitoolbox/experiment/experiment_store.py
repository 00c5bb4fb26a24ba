"""One experiment's storage: the local experiment folder, mirrored to the cloud in the background.

Every file is first written completely (and atomically) to the local folder, then queued for
upload to ``<scheme>://<bucket>/<cloud_dir_prefix>/<project>/<experiment>_<timestamp>/<same path>``
on S3 (``s3://``) or Google Cloud Storage (``gs://``), the backends of
:mod:`aitoolbox.cloud.backends`. Uploads run on a background thread
(:class:`~aitoolbox.cloud.uploader.CloudUploader`): training never waits for the cloud, failed
uploads are retried (an outage is logged once, then summarised) without ever raising into
training, and a file stays on local disk until the run deletes it: a checkpoint that the
keep-N-best rule drops is deleted locally at once, its upload cancelled if it has not happened
yet, so an outage does not fill the disk. :meth:`ExperimentStore.finish_run` waits - for a
bounded time, ``flush_timeout`` - for the queue to drain at the end of ``fit`` and logs the files
that did not reach the bucket.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Union

from aitoolbox.experiment import experiment_folder as ef
from aitoolbox.experiment.result_writers import write_json
from aitoolbox.utils.io import atomic_write_path

logger = logging.getLogger("aitoolbox")

#: ``cloud_save_mode`` value -> storage backend name (None: local disk only). The aliases are the
#: original aitoolbox's.
CLOUD_SAVE_MODES = {None: None, "local": None,
                    "s3": "s3", "aws_s3": "s3", "aws": "s3",
                    "gcs": "gcs", "google_storage": "gcs", "google storage": "gcs"}


def validate_cloud_save_mode(cloud_save_mode: Any) -> Optional[str]:
    """The backend of ``cloud_save_mode``: ``'s3'``, ``'gcs'`` or None (local only).

    Raises:
        ValueError: an unknown mode.
    """
    if not isinstance(cloud_save_mode, (str, type(None))) or cloud_save_mode not in CLOUD_SAVE_MODES:
        raise ValueError(f"cloud_save_mode must be one of {list(CLOUD_SAVE_MODES)}, got {cloud_save_mode!r}. "
                         "Use 's3' to mirror the experiment to S3, 'gcs' for Google Cloud Storage, or "
                         "None / 'local' for local disk only.")
    return CLOUD_SAVE_MODES[cloud_save_mode]


def cloud_backend(backend: Optional[str]):
    """The :class:`~aitoolbox.cloud.backends.CloudBackend` of a backend name, None for local."""
    if backend is None:
        return None
    from aitoolbox.cloud.backends import get_backend
    return get_backend(backend)


class ExperimentStore:
    """The experiment folder on local disk and, optionally, its mirror on S3 or GCS.

    Validates names, the root folder and ``cloud_save_mode`` at construction, and that the bucket
    exists at the start of ``fit`` (:meth:`check_cloud`), so that mistakes surface before any
    training work (constructing a store does not talk to the network). The folder
    itself is created by :meth:`ensure_created` (at training start, or lazily at the first write).

    Class attributes, the defaults of every store (change them on the class or an instance):

    - ``flush_timeout``: seconds the end of ``fit`` (:meth:`finish_run`, all savers together) and
      :meth:`close` wait at most for pending uploads; the files still pending then are logged.
    - ``retry_interval`` / ``max_retry_interval``: backoff of failed uploads (seconds).
    - ``client_max_attempts``: attempts per S3 request inside one upload try (botocore retries;
      a GCS try is always one request).
    - ``upload_summary_interval``: seconds between two summary lines while the bucket fails.

    Args:
        project_name: project folder name.
        experiment_name: experiment name (folder ``<experiment_name>_<timestamp>``).
        local_model_result_folder_path: the results root folder.
        hyperparams: dict, or the path of a YAML / JSON file; never mutated.
        cloud_save_mode: ``'s3'`` / ``'aws_s3'`` / ``'aws'`` (S3), ``'gcs'`` / ``'google_storage'`` /
            ``'google storage'`` (Google Cloud Storage), or None / ``'local'`` for local disk only.
        bucket_name: the bucket of the cloud mirror.
        cloud_dir_prefix: key prefix inside the bucket.
        source_dirs: folders zipped into ``source_code.zip``.

    Raises:
        TypeError, ValueError: an invalid argument, a root folder that is not writable, or (cloud) a
            bucket that does not exist or cannot be reached - named in the message.
        ImportError: the cloud backend's client library is not installed (named with its extra).
    """

    flush_timeout: float = 120.0
    retry_interval: float = 1.0
    max_retry_interval: float = 30.0
    client_max_attempts: Optional[int] = 2
    upload_summary_interval: float = 60.0

    def __init__(self, project_name: str, experiment_name: str,
                 local_model_result_folder_path: Union[str, os.PathLike], hyperparams: Any,
                 cloud_save_mode: Optional[str] = "s3", bucket_name: str = "model-result",
                 cloud_dir_prefix: str = "", source_dirs: Sequence = ()):
        self.folder = ef.ExperimentFolder(local_model_result_folder_path, project_name, experiment_name)
        self.hyperparams, self.hyperparams_file = ef.load_hyperparams(hyperparams)
        self.backend = validate_cloud_save_mode(cloud_save_mode)
        self.cloud_dir_prefix = ef.validate_cloud_dir_prefix(cloud_dir_prefix)
        self.source_dirs = ef.validate_source_dirs(source_dirs)
        self.bucket_name = bucket_name
        self.experiment_script = ef.find_experiment_script(self.hyperparams)
        if self.backend is not None and (not isinstance(bucket_name, str) or not bucket_name):
            raise ValueError(f"bucket_name must be a non-empty str with cloud_save_mode={self.backend!r}, "
                             f"got {bucket_name!r}.")
        self._cloud_checked = False
        self._uploader = None
        self._lock = threading.RLock()
        self._deferred_removals: List[str] = []
        self._flush_deadline: Optional[float] = None
        self._reported_missing: Optional[List[str]] = None

    def check_cloud(self) -> None:
        """Check once that the bucket exists and answers (at the start of ``fit``, before any work;
        constructing a store does not talk to the network, as in aitoolbox 1.8).

        Raises:
            ValueError: naming the bucket and the fix.
        """
        if self.backend is not None and not self._cloud_checked:
            self.cloud.check_bucket_exists(self.bucket_name)
            self._cloud_checked = True

    # ------------------------------------------------------------------ identity & paths
    @property
    def cloud(self):
        """The :class:`~aitoolbox.cloud.backends.CloudBackend` files are mirrored to, or None."""
        return cloud_backend(self.backend)

    @property
    def uses_cloud(self) -> bool:
        """Whether files are mirrored to a cloud bucket (S3 or GCS)."""
        return self.backend is not None

    @property
    def uses_s3(self) -> bool:
        """Whether files are mirrored to S3."""
        return self.backend == "s3"

    @property
    def path(self) -> str:
        """Absolute path of the experiment folder (it may not exist yet)."""
        return self.folder.path

    def same_experiment(self, other: "ExperimentStore") -> bool:
        """Whether ``other`` describes the same experiment (root, names, cloud target)."""
        mine, theirs = self.folder, other.folder
        return ((mine.root, mine.project_name, mine.experiment_name, self.backend, self.bucket_name,
                 self.cloud_dir_prefix) == (theirs.root, theirs.project_name, theirs.experiment_name,
                                            other.backend, other.bucket_name, other.cloud_dir_prefix))

    def local_path(self, *parts: str) -> str:
        """Absolute local path of ``parts`` in the experiment folder, creating the folder first."""
        self.ensure_created()
        return self.folder.sub_path(*parts)

    @property
    def cloud_prefix(self) -> str:
        """The key prefix of the experiment folder's mirror: ``<cloud_dir_prefix>/<project>/<folder>``."""
        parts = [self.cloud_dir_prefix, self.folder.project_name, self.folder.name]
        return "/".join(part for part in parts if part)

    def cloud_key(self, local_path: str) -> str:
        """The object key that mirrors ``local_path`` (the same on every backend)."""
        return f"{self.cloud_prefix}/{self.folder.relative(local_path)}"

    def cloud_uri(self, local_path: str) -> str:
        """``s3://bucket/key`` or ``gs://bucket/key`` of ``local_path``'s mirror."""
        scheme = self.cloud.scheme if self.uses_cloud else "s3://"
        return f"{scheme}{self.bucket_name}/{self.cloud_key(local_path)}"

    def cloud_runs(self) -> List[str]:
        """Timestamps of this experiment's runs in the bucket (``<experiment_name>_<timestamp>``
        under ``<cloud_dir_prefix>/<project>/``), newest first; empty for a local-only store."""
        if not self.uses_cloud:
            return []
        base = "/".join(part for part in (self.cloud_dir_prefix, self.folder.project_name) if part)
        keys = self.cloud.list_keys(self.bucket_name, f"{base}/{self.folder.experiment_name}_")
        return self.folder.runs_among({key[len(base) + 1:].split("/")[0] for key in keys})

    def cloud_run_uri(self, timestamp: str, *parts: str) -> str:
        """The bucket URI of ``parts`` in the run ``<experiment_name>_<timestamp>`` of this experiment."""
        base = [self.cloud_dir_prefix, self.folder.project_name, f"{self.folder.experiment_name}_{timestamp}"]
        return self.cloud.uri(self.bucket_name, "/".join(part for part in [*base, *parts] if part))

    # The S3-era names, kept for existing code.
    s3_prefix = cloud_prefix
    s3_key = cloud_key
    s3_uri = cloud_uri

    # ------------------------------------------------------------------ creation
    def ensure_created(self) -> str:
        """Create the experiment folder (once) with the hyperparameters, script copy and sources.

        Returns:
            The experiment folder's path.
        """
        with self._lock:
            if self.folder.create():
                self._write_experiment_files()
                target = (f" (mirrored to {self.cloud.uri(self.bucket_name, self.cloud_prefix)}/)"
                          if self.uses_cloud else "")
                logger.info("Experiment folder: %s%s", self.path, target)
        return self.path

    def _write_experiment_files(self) -> None:
        self.publish(write_json(self.hyperparams, self.folder.sub_path(ef.HYPERPARAMS_FILE)))
        if self.hyperparams_file:
            extension = os.path.splitext(self.hyperparams_file)[1]
            self._copy_into_folder(self.hyperparams_file, "hyperparams_source" + extension)
        if self.experiment_script:
            self._copy_into_folder(self.experiment_script, os.path.basename(self.experiment_script))
        if self.source_dirs:
            zip_path = self.folder.sub_path(ef.SOURCE_ZIP_FILE)
            with atomic_write_path(zip_path) as tmp_path:
                ef.write_source_zip(self.source_dirs, tmp_path)
            self.publish(zip_path)

    def _copy_into_folder(self, source: str, file_name: str) -> None:
        destination = self.folder.sub_path(file_name)
        try:
            with atomic_write_path(destination) as tmp_path:
                shutil.copyfile(source, tmp_path)
        except OSError as error:
            logger.warning("Could not copy %s into the experiment folder: %s", source, error)
            return
        self.publish(destination)

    # ------------------------------------------------------------------ writing & mirroring
    def write_json(self, obj: Any, *parts: str) -> str:
        """Write ``obj`` as JSON to ``parts`` in the folder (atomically) and mirror it."""
        return self.publish(write_json(obj, self.local_path(*parts)))

    def publish(self, local_path: str) -> str:
        """Mirror a completely written file of the experiment folder to the cloud (if any).

        Returns:
            ``local_path``.
        """
        if self.uses_cloud:
            for path in _files_under(local_path):  # a sharded checkpoint is a folder
                self._get_uploader().upload(path, self.cloud_key(path))
        self._process_deferred_removals()
        return local_path

    def remove(self, local_path: str, remove_from_cloud: bool = False) -> None:
        """Delete a file (or a sharded checkpoint folder) of the experiment folder, and when asked
        its cloud copy.

        The file is superseded (e.g. by the keep-N-best rule): an upload of it that has not
        happened yet is cancelled, so that local disk stays bounded while the bucket is down. The
        file is deleted at once, or - when its upload is being read right now - as soon as that
        attempt ends (at the next write or wait of this store).
        """
        with self._lock:
            self._deferred_removals.append(local_path)
        if remove_from_cloud and self.uses_cloud:
            for path in _files_under(local_path):
                self._get_uploader().delete(self.cloud_key(path))
        self._process_deferred_removals()

    def _process_deferred_removals(self) -> None:
        with self._lock:
            keep = []
            for path in self._deferred_removals:
                keys = [self.cloud_key(p) for p in _files_under(path)]
                if self._uploader is not None and self._uploader.cancel_uploads(keys):
                    keep.append(path)  # an attempt is reading it now: deleted when it ends
                elif os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                elif os.path.exists(path):
                    os.remove(path)
            self._deferred_removals = keep

    def _get_uploader(self):
        with self._lock:
            if self._uploader is None:
                self._uploader = self.cloud.create_uploader(
                    self.bucket_name, retry_interval=self.retry_interval,
                    max_retry_interval=self.max_retry_interval,
                    client_max_attempts=self.client_max_attempts,
                    summary_interval=self.upload_summary_interval)
            return self._uploader

    # ------------------------------------------------------------------ end of run
    def pending_uploads(self) -> List[str]:
        """Keys whose upload (or deletion) is not done yet."""
        return [] if self._uploader is None else self._uploader.pending_keys()

    def missing_files(self) -> List[str]:
        """The files (relative to the experiment folder) whose upload has not succeeded: still
        pending, or given up. Empty for a local-only store."""
        if self._uploader is None:
            return []
        keys = self._uploader.pending_upload_keys() + self._uploader.failed_keys()
        prefix = self.cloud_prefix + "/"
        return sorted({key[len(prefix):] if key.startswith(prefix) else key for key in keys})

    def start_run(self) -> None:
        """Mark the start of a ``fit`` (the bucket is checked, see :meth:`check_cloud`): the next
        :meth:`finish_run` opens a new wait budget."""
        self.check_cloud()
        self._flush_deadline = None
        self._reported_missing = None

    def finish_run(self, max_wait: Optional[float] = None) -> bool:
        """Wait for the uploads of this run, at most ``flush_timeout`` seconds over all callers.

        Several savers call it at the end of ``fit``; together they wait no longer than one
        ``flush_timeout``. The files still pending then are logged by name (once per run, again
        only when the list changes); they keep being retried in the background and the local
        copies stay complete.

        Args:
            max_wait: wait at most this many seconds from now (a stop signal's bound), and no
                longer than the run's ``flush_timeout`` budget.

        Returns:
            True when everything queued so far reached the cloud (always True locally).
        """
        now = time.monotonic()
        if self._flush_deadline is None:
            self._flush_deadline = now + self.flush_timeout
        if max_wait is not None:
            self._flush_deadline = min(self._flush_deadline, now + max(float(max_wait), 0.0))
        wait = f"the end-of-run upload wait (flush_timeout={self.flush_timeout:g}s)"
        return self._flush(max(self._flush_deadline - time.monotonic(), 0.0), wait)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait up to ``timeout`` seconds (None: without limit) for every queued upload.

        When uploads are still pending after it (or were given up), the files that did not reach
        the bucket are logged by name (not again while that list stays the same).

        Returns:
            True when nothing is pending any more.
        """
        return self._flush(timeout, "the wait" if timeout is None else f"{timeout:g}s")

    def _flush(self, timeout: Optional[float], wait: str) -> bool:
        if self._uploader is None:
            self._process_deferred_removals()
            return True
        done = self._uploader.flush(timeout, report=False)
        self._process_deferred_removals()
        if not done:
            self._report_missing(wait)
        return done

    def _report_missing(self, wait: str) -> None:
        missing = self.missing_files()
        if missing == self._reported_missing or not missing:
            return
        self._reported_missing = missing
        logger.warning("%d file(s) of experiment %s did not reach %s within %s and are still pending: %s. "
                       "They are complete on local disk and keep being retried in the background while the "
                       "process lives (experiment_store.flush(timeout) waits again).", len(missing),
                       self.folder.name, self.cloud.uri(self.bucket_name, self.cloud_prefix + "/"), wait,
                       ", ".join(missing))

    def close(self, timeout: Optional[float] = None) -> bool:
        """Wait for the pending uploads (at most ``timeout`` seconds, default ``flush_timeout``), log
        the files that did not reach the bucket, and stop the upload thread (pending uploads are
        dropped; the local copies stay). The store can be used again afterwards (a new thread).

        Returns:
            True when every upload reached the cloud (always True locally).
        """
        timeout = self.flush_timeout if timeout is None else timeout
        done = self._flush(timeout, f"the {timeout:g}s wait at close")
        with self._lock:
            uploader, self._uploader = self._uploader, None
        if uploader is not None:
            uploader.close(timeout=0, report=False)
        return done

    def __getstate__(self) -> Dict[str, Any]:
        # Sent to DDP worker processes: threads and locks do not travel; they are re-created there.
        state = dict(self.__dict__)
        state["_uploader"], state["_lock"] = None, None
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        target = f", {self.cloud.scheme}{self.bucket_name}" if self.uses_cloud else ""
        return f"ExperimentStore({self.path!r}{target})"


def _files_under(path: str) -> List[str]:
    """``[path]`` for a file (or a missing path), every file inside it for a folder."""
    if not os.path.isdir(path):
        return [path]
    return sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
