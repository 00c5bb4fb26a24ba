"""aitoolbox 1.8's plain S3 file savers and loaders, on our S3 layer (:mod:`aitoolbox.cloud.AWS.s3`).

The client honours the standard AWS configuration (environment, config files,
``AWS_ENDPOINT_URL``); boto3 is imported when a saver or loader is built, not at import.
"""
from __future__ import annotations

import logging
import os
import shutil
from abc import ABC, abstractmethod
from typing import Any, List, Optional, Union

from aitoolbox.cloud.AWS import s3

logger = logging.getLogger("aitoolbox")


class BaseDataSaver:
    """Upload local files and folders to an S3 bucket.

    Args:
        bucket_name: the bucket the files go to.
    """

    #: URI scheme of the storage service, in messages (the Google Cloud Storage subclasses: ``gs://``).
    cloud_scheme = "s3://"

    def __init__(self, bucket_name: str = "model-result"):
        self.bucket_name = bucket_name
        self.s3_client = s3.get_s3_client()

    def save_file(self, local_file_path: Union[str, os.PathLike], cloud_file_path: str) -> None:
        """Upload one file (waiting for it) to ``s3://<bucket_name>/<cloud_file_path>``.

        Raises:
            FileNotFoundError: ``local_file_path`` does not exist.
            botocore.exceptions.BotoCoreError, boto3.exceptions.S3UploadFailedError: S3 refused it.
        """
        local_file_path = os.path.expanduser(os.fspath(local_file_path))
        if not os.path.isfile(local_file_path):
            raise FileNotFoundError(f"local_file_path {local_file_path!r} is not a file.")
        s3.upload_file(local_file_path, self.bucket_name, cloud_file_path, s3_client=self.s3_client)

    def save_folder(self, local_folder_path: Union[str, os.PathLike], cloud_folder_path: str) -> List[str]:
        """Upload every file inside ``local_folder_path`` under the key prefix ``cloud_folder_path``.

        The folder's *content* is uploaded: ``a/b.txt`` inside it becomes
        ``<cloud_folder_path>/a/b.txt`` (just ``a/b.txt`` with an empty prefix).

        Returns:
            The keys written.
        """
        local_folder_path = os.path.expanduser(os.fspath(local_folder_path))
        prefix = cloud_folder_path.strip("/")
        keys = []
        for folder, sub_dirs, files in os.walk(local_folder_path):
            sub_dirs.sort()
            for file_name in sorted(files):
                path = os.path.join(folder, file_name)
                relative = os.path.relpath(path, local_folder_path).replace(os.sep, "/")
                key = f"{prefix}/{relative}" if prefix else relative
                self.save_file(path, key)
                keys.append(key)
        return keys


class BaseDataLoader:
    """Download files from an S3 bucket into a local data folder.

    Args:
        bucket_name: the bucket the files come from.
        local_base_data_folder_path: the local folder data sets are kept in (``~`` is expanded).
    """

    #: URI scheme of the storage service, in messages (the Google Cloud Storage subclasses: ``gs://``).
    cloud_scheme = "s3://"

    def __init__(self, bucket_name: str = "dataset-store",
                 local_base_data_folder_path: Union[str, os.PathLike] = "~/project/data"):
        self.bucket_name = bucket_name
        self.s3_client = s3.get_s3_client()
        self.local_base_data_folder_path = os.path.expanduser(os.fspath(local_base_data_folder_path))
        self.available_prepocessed_datasets: List[str] = []
        self._s3_resource = None

    @property
    def s3(self) -> Any:
        """A boto3 S3 resource (aitoolbox 1.8's ``self.s3``), built on first use."""
        if self._s3_resource is None:
            import boto3
            self._s3_resource = boto3.session.Session().resource("s3")
        return self._s3_resource

    def load_file(self, cloud_file_path: str, local_file_path: Union[str, os.PathLike], *,
                  log_missing: bool = True) -> bool:
        """Download ``s3://<bucket_name>/<cloud_file_path>`` unless the local file already exists.

        The download is atomic (temporary file, then rename). A missing object is logged, not
        raised, as in aitoolbox 1.8.

        Args:
            cloud_file_path: the object's key in the bucket.
            local_file_path: where to put the file.
            log_missing: False: a missing object is not logged (the caller tries another name).

        Returns:
            True when the local file exists afterwards.

        Raises:
            botocore.exceptions.ClientError: S3 refused the download for another reason.
        """
        from botocore.exceptions import ClientError

        local_file_path = os.path.expanduser(os.fspath(local_file_path))
        if os.path.isfile(local_file_path):
            logger.info("%s is on the local disk already: not downloading it from S3.", local_file_path)
            return True
        try:
            s3.download_file(self.bucket_name, cloud_file_path, local_file_path, s3_client=self.s3_client)
        except ClientError as error:
            if str(error.response.get("Error", {}).get("Code")) not in ("404", "NoSuchKey", "NotFound"):
                raise
            if log_missing:
                logger.warning("s3://%s/%s does not exist: nothing downloaded.", self.bucket_name, cloud_file_path)
            return False
        return True

    def exists_local_data_folder(self, data_folder_name: str, protect_local_folder: bool = True) -> bool:
        """Whether ``data_folder_name`` exists in the data folder; creates it (empty) when it does not.

        Args:
            data_folder_name: folder inside ``local_base_data_folder_path``.
            protect_local_folder: False deletes an existing folder and recreates it empty.

        Returns:
            True when the folder existed and was kept.
        """
        path = os.path.join(self.local_base_data_folder_path, data_folder_name)
        if os.path.exists(path):
            if protect_local_folder:
                logger.info("Local folder %s exists and protect_local_folder=True: keeping it.", path)
                return True
            logger.info("Local folder %s exists and protect_local_folder=False: deleting it.", path)
            shutil.rmtree(path)
        os.makedirs(path)
        return False

    def preproc_dataset_available(self, preproc_dataset_name: str) -> bool:
        """Whether a preprocessed version of the data set is listed as available."""
        return preproc_dataset_name in self.available_prepocessed_datasets


class AbstractDatasetFetcher(ABC):
    """Interface of the data-set fetchers."""

    @abstractmethod
    def fetch_dataset(self, dataset_name: Optional[str] = None, protect_local_folder: bool = True):
        """Download (and unpack) a data set into the local data folder."""
