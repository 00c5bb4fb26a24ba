"""AWS integrations: the S3 layer that mirrors experiment files to a bucket, and aitoolbox 1.8's
S3 savers and loaders (``model_save``, ``model_load``, ``results_save``, ``data_access``).

boto3 is imported lazily, so importing this package does not require or load it.
"""
from aitoolbox.cloud.AWS.s3 import (
    S3Uploader,
    check_bucket_exists,
    delete_key,
    download_file,
    get_s3_client,
    is_s3_uri,
    list_keys,
    parse_s3_uri,
    upload_file,
)

__all__ = [
    "S3Uploader",
    "check_bucket_exists",
    "delete_key",
    "download_file",
    "get_s3_client",
    "is_s3_uri",
    "list_keys",
    "parse_s3_uri",
    "upload_file",
]
