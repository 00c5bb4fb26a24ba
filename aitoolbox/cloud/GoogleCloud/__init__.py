"""Google Cloud Storage integrations: the GCS layer that mirrors experiment files to a bucket.

google-cloud-storage (the ``gcs`` extra) is imported lazily, so importing this package does not
require or load it.
"""
from aitoolbox.cloud.GoogleCloud.gcs import (
    GCSUploader,
    check_bucket_exists,
    delete_key,
    download_file,
    get_gcs_client,
    is_gcs_uri,
    list_keys,
    parse_gcs_uri,
    upload_file,
)

__all__ = [
    "GCSUploader",
    "check_bucket_exists",
    "delete_key",
    "download_file",
    "get_gcs_client",
    "is_gcs_uri",
    "list_keys",
    "parse_gcs_uri",
    "upload_file",
]
