"""aitoolbox 1.8's plain Google Cloud Storage file savers and loaders, on our GCS layer.

They are the S3 classes of :mod:`aitoolbox.cloud.AWS.data_access` with the two storage primitives
(``save_file`` / ``load_file``) taken from :mod:`aitoolbox.cloud.GoogleCloud.gcs`; everything built
on those primitives (``save_folder``, the model and results savers and loaders) is shared.
``google-cloud-storage`` is imported when a saver or loader is built, not at import.
"""
from __future__ import annotations

import logging
import os
from typing import Any, List, Union

from aitoolbox.cloud.AWS.data_access import BaseDataLoader, BaseDataSaver
from aitoolbox.cloud.GoogleCloud import gcs

logger = logging.getLogger("aitoolbox")


def _bucket(bucket_name: str) -> Any:
    """``(client, bucket)`` of an existing bucket; ValueError naming the fix otherwise."""
    client = gcs.get_gcs_client()
    gcs.check_bucket_exists(bucket_name, gcs_client=client)
    return client, client.bucket(bucket_name)


class BaseGoogleStorageDataSaver(BaseDataSaver):
    """Upload local files and folders to a Google Cloud Storage bucket.

    Args:
        bucket_name: the bucket the files go to.

    Raises:
        ImportError: ``google-cloud-storage`` is not installed.
        ValueError: the bucket does not exist or is not accessible (checked at construction).
    """

    cloud_scheme = gcs.GCS_SCHEME

    def __init__(self, bucket_name: str = "model-result"):
        self.bucket_name = bucket_name
        self.gcs_client, self.gcs_bucket = _bucket(bucket_name)

    def save_file(self, local_file_path: Union[str, os.PathLike], cloud_file_path: str) -> None:
        """Upload one file (waiting for it) to ``gs://<bucket_name>/<cloud_file_path>``.

        Raises:
            FileNotFoundError: ``local_file_path`` does not exist.
            google.api_core.exceptions.GoogleAPIError: the service refused it.
        """
        local_file_path = os.path.expanduser(os.fspath(local_file_path))
        if not os.path.isfile(local_file_path):
            raise FileNotFoundError(f"local_file_path {local_file_path!r} is not a file.")
        gcs.upload_file(local_file_path, self.bucket_name, cloud_file_path, gcs_client=self.gcs_client)


class BaseGoogleStorageDataLoader(BaseDataLoader):
    """Download files from a Google Cloud Storage bucket into a local data folder.

    Args:
        bucket_name: the bucket the files come from.
        local_dataset_folder_path: the local folder data sets are kept in (``~`` is expanded).

    Raises:
        ImportError: ``google-cloud-storage`` is not installed.
        ValueError: the bucket does not exist or is not accessible (checked at construction).
    """

    cloud_scheme = gcs.GCS_SCHEME

    def __init__(self, bucket_name: str = "dataset-store",
                 local_dataset_folder_path: Union[str, os.PathLike] = "~/project/data"):
        self.bucket_name = bucket_name
        self.gcs_client, self.gcs_bucket = _bucket(bucket_name)
        self.local_dataset_folder_path = os.path.expanduser(os.fspath(local_dataset_folder_path))
        self.local_base_data_folder_path = self.local_dataset_folder_path
        self.available_prepocessed_datasets: List[str] = []

    def load_file(self, cloud_file_path: str, local_file_path: Union[str, os.PathLike], *,
                  log_missing: bool = True) -> bool:
        """Download ``gs://<bucket_name>/<cloud_file_path>`` unless the local file already exists.

        The download is atomic (temporary file, then rename). A missing object is logged, not
        raised, as the S3 loader does.

        Args:
            cloud_file_path: the object's key in the bucket.
            local_file_path: where to put the file.
            log_missing: False: a missing object is not logged (the caller tries another name).

        Returns:
            True when the local file exists afterwards.

        Raises:
            google.api_core.exceptions.GoogleAPIError: the service refused the download for another reason.
        """
        from google.api_core.exceptions import NotFound

        local_file_path = os.path.expanduser(os.fspath(local_file_path))
        if os.path.isfile(local_file_path):
            logger.info("%s is on the local disk already: not downloading it from Google Cloud Storage.",
                        local_file_path)
            return True
        try:
            gcs.download_file(self.bucket_name, cloud_file_path, local_file_path, gcs_client=self.gcs_client)
        except NotFound:
            if log_missing:
                logger.warning("gs://%s/%s does not exist: nothing downloaded.", self.bucket_name, cloud_file_path)
            return False
        return True


__all__ = ["BaseGoogleStorageDataSaver", "BaseGoogleStorageDataLoader"]
