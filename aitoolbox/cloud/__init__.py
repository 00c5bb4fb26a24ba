"""Cloud storage integrations used by experiment tracking.

``s3_available_options`` / ``gcs_available_options``: the ``cloud_save_mode`` values selecting
AWS S3 and Google Cloud Storage (any other value saves locally only), as in the original aitoolbox.
"""

s3_available_options = ["s3", "aws_s3", "aws"]
gcs_available_options = ["gcs", "google_storage", "google storage"]

__all__ = ["s3_available_options", "gcs_available_options"]
