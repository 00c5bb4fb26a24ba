"""The cloud storage services experiments can be mirrored to, behind one interface.

A :class:`CloudBackend` names a service (``'s3'``, ``'gcs'``), its URI scheme and the module
that implements it. Every backend module offers the same functions - ``parse_uri``, ``is_uri``,
``check_bucket_exists``, ``upload_file``, ``download_file``, ``list_keys``, ``list_objects``,
``delete_key`` and
``create_uploader`` (a :class:`~aitoolbox.cloud.uploader.CloudUploader`) - so the experiment
store, checkpoint files and model loaders work with any of them. The modules import their
client libraries (boto3, google-cloud-storage) only when a function is called.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple


@dataclass(frozen=True)
class CloudBackend:
    """One cloud storage service.

    Attributes:
        name: Short name (``'s3'``, ``'gcs'``), the value of ``ExperimentStore.backend``.
        label: Name shown in messages.
        scheme: URI scheme with its ``://``.
        module_path: Dotted path of the module implementing the backend functions.
        endpoint_hint: How to point the backend at a compatible server (for error messages).
    """

    name: str
    label: str
    scheme: str
    module_path: str
    endpoint_hint: str

    @property
    def module(self) -> Any:
        """The implementing module (cheap to import: no client library is loaded)."""
        return importlib.import_module(self.module_path)

    def is_uri(self, path: Any) -> bool:
        """Whether ``path`` is a URI of this service with a bucket name."""
        return isinstance(path, str) and path.startswith(self.scheme) and self.module.is_uri(path)

    def parse_uri(self, uri: str) -> Tuple[str, str]:
        """Split a URI of this service into ``(bucket, key)``."""
        return self.module.parse_uri(uri)

    def uri(self, bucket: str, key: str) -> str:
        """The URI of ``key`` in ``bucket``."""
        return f"{self.scheme}{bucket}/{key}"

    def check_bucket_exists(self, bucket: str) -> None:
        """Raise ValueError naming the fix if ``bucket`` is missing or not accessible."""
        self.module.check_bucket_exists(bucket)

    def upload_file(self, local_path: str, bucket: str, key: str) -> None:
        """Upload a complete local file (blocking)."""
        self.module.upload_file(local_path, bucket, key)

    def download_file(self, bucket: str, key: str, local_path: str) -> None:
        """Download an object to ``local_path`` atomically (blocking)."""
        self.module.download_file(bucket, key, local_path)

    def list_keys(self, bucket: str, prefix: str = "") -> List[str]:
        """The object keys of ``bucket`` under ``prefix``, sorted."""
        return sorted(self.module.list_keys(bucket, prefix))

    def list_objects(self, bucket: str, prefix: str = "") -> List[Tuple[str, float]]:
        """``(key, last-modified time in seconds since the epoch)`` of the objects under ``prefix``."""
        return self.module.list_objects(bucket, prefix)

    def delete_key(self, bucket: str, key: str) -> None:
        """Delete one object; a missing object is not an error."""
        self.module.delete_key(bucket, key)

    def create_uploader(self, bucket: str, **options: Any) -> Any:
        """A background :class:`~aitoolbox.cloud.uploader.CloudUploader` for ``bucket``.

        Args:
            bucket: Bucket that receives the objects.
            **options: ``retry_interval``, ``max_retry_interval``, ``client_max_attempts``.
        """
        return self.module.create_uploader(bucket, **options)


BACKENDS = {
    "s3": CloudBackend("s3", "S3", "s3://", "aitoolbox.cloud.AWS.s3",
                       "set AWS_ENDPOINT_URL for an S3-compatible endpoint"),
    "gcs": CloudBackend("gcs", "Google Cloud Storage", "gs://", "aitoolbox.cloud.GoogleCloud.gcs",
                        "set STORAGE_EMULATOR_HOST for a GCS emulator"),
}


def get_backend(name: str) -> CloudBackend:
    """The backend called ``name`` (``'s3'`` or ``'gcs'``).

    Raises:
        ValueError: an unknown name.
    """
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"Unknown cloud backend {name!r}; known: {sorted(BACKENDS)}.") from None


def backend_for_uri(path: Any) -> Optional[CloudBackend]:
    """The backend whose URI scheme ``path`` uses (``s3://``, ``gs://``), or None for a local path."""
    for backend in BACKENDS.values():
        if backend.is_uri(path):
            return backend
    return None
