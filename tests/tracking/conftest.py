"""Fixtures of the experiment-tracking tests."""
import pytest

from aitoolbox.experiment.experiment_store import ExperimentStore


@pytest.fixture
def fast_uploads(monkeypatch):
    """Short S3 retry backoff and flush budget, so outage tests run in seconds."""
    monkeypatch.setattr(ExperimentStore, "retry_interval", 0.1)
    monkeypatch.setattr(ExperimentStore, "max_retry_interval", 0.3)
    monkeypatch.setattr(ExperimentStore, "client_max_attempts", 1)
    monkeypatch.setattr(ExperimentStore, "flush_timeout", 20.0)
