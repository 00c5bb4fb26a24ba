"""MLflowLogger against a real ``mlflow server`` on loopback (SQLite store), read back with MlflowClient."""
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from torch.utils.data import DataLoader

from aitoolbox.experiment.loggers.mlflow_logger import MLflowLogger
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.callbacks.loggers import LoggerCallback
from tests.callbacks.cb_testkit import Recorder, make_loop, mlp, regression_dataset

pytest.importorskip("mlflow")
START_TIMEOUT_S = 240  # a cold start (database migrations) takes ~30 s on a loaded 2-core machine


class MlflowServer:
    """``mlflow server`` in its own process group on a fixed loopback port; stop and restart keep the store."""

    def __init__(self, folder):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = str(folder)
        self.proc = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{self.folder}/mlflow.db",
               "--artifacts-destination", os.path.join(self.folder, "artifacts")]
        log = open(os.path.join(self.folder, "server.log"), "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}; see {self.folder}/server.log")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fast_failing_requests(monkeypatch):
    """An unreachable server fails a request at once instead of after MLflow's minutes of retries."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def client(url):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=url)


def metric_history(mlflow_client, run_id, key):
    return [(m.step, m.value) for m in sorted(mlflow_client.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.mark.timeout(600)
def test_params_metrics_with_steps_and_artifacts_on_a_real_server(mlflow_server, tmp_path, monkeypatch,
                                                                   fast_failing_requests):
    from aitoolbox.torchtrain.train_loop import TrainLoopCheckpointEndSave

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)  # MLflowLogger() honours it
    model = mlp()
    loader = DataLoader(regression_dataset(), batch_size=8)  # 6 batches
    loop = TrainLoopCheckpointEndSave(model, loader, loader, None, torch.optim.SGD(model.parameters(), lr=0.05),
                                      torch.nn.MSELoss(), "proj", "exp", str(tmp_path), {"lr": 0.05, "hidden": 8},
                                      val_result_package=None, cloud_save_mode=None, show_progress=False)
    losses = Recorder("on_batch_end", lambda tl: float(tl.loss_batch_accum[-1]), execution_order=0)
    logger = MLflowLogger(experiment_name="aitoolbox-e2e", run_name="run-1")
    loop.fit(num_epochs=2, callbacks=[losses, LoggerCallback(logger, flush_every_n_steps=5)])

    mlflow_client = client(mlflow_server.url)
    run = mlflow_client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run-1"
    assert mlflow_client.get_experiment(run.info.experiment_id).name == "aitoolbox-e2e"
    assert run.data.params == {"lr": "0.05", "hidden": "8"}
    assert metric_history(mlflow_client, logger.run_id, "train/loss") == \
        [(step, pytest.approx(value, rel=1e-6)) for step, value in enumerate(losses.records, start=1)]
    for key in ("loss", "accumulated_loss", "val_loss"):
        assert metric_history(mlflow_client, logger.run_id, key) == \
            [(step, pytest.approx(value, rel=1e-12)) for step, value in zip([6, 12], loop.train_history[key])]
    artifacts = {a.path for a in mlflow_client.list_artifacts(logger.run_id)}
    assert {"model", "results"} <= artifacts, artifacts
    local = sorted(os.listdir(os.path.join(loop.experiment_dir, "model")))
    assert sorted(os.path.basename(a.path) for a in mlflow_client.list_artifacts(logger.run_id, "model")) == local


class StopAndRestart(AbstractCallback):
    """Stops the server at the end of epoch 0 and starts it again when epoch 2 begins."""

    def __init__(self, server):
        super().__init__("StopAndRestart", execution_order=2000)
        self.server = server

    def on_epoch_end(self):
        if self.train_loop_obj.epoch == 0:
            self.server.stop()

    def on_epoch_begin(self):
        if self.train_loop_obj.epoch == 2:
            self.server.start()


@pytest.mark.timeout(600)
def test_server_stopped_mid_run_warns_once_training_finishes_and_values_arrive_after_restart(
        mlflow_server, caplog, fast_failing_requests):
    loop = make_loop()
    losses = Recorder("on_batch_end", lambda tl: float(tl.loss_batch_accum[-1]), execution_order=0)
    logger = MLflowLogger(experiment_name="aitoolbox-outage", tracking_uri=mlflow_server.url)
    callback = LoggerCallback(logger, flush_every_n_steps=2, retry_after_s=0)
    with caplog.at_level(logging.WARNING, logger="aitoolbox"):
        loop.fit(num_epochs=3, callbacks=[losses, callback, StopAndRestart(mlflow_server)])
    assert loop.epoch == 3  # training went on
    failures = [r for r in caplog.records if "MLflow logger failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]
    mlflow_client = client(mlflow_server.url)
    # the steps logged while the server was down (epoch 1) were replayed after it came back
    assert metric_history(mlflow_client, logger.run_id, "train/loss") == \
        [(step, pytest.approx(value, rel=1e-6)) for step, value in enumerate(losses.records, start=1)]
    assert [s for s, _ in metric_history(mlflow_client, logger.run_id, "val_loss")] == [6, 12, 18]
    assert mlflow_client.get_run(logger.run_id).info.status == "FINISHED"


def test_file_store_without_a_server_and_missing_mlflow(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/local.db"
    logger = MLflowLogger(experiment_name="local", tracking_uri=uri)
    make_loop().fit(num_epochs=1, callbacks=[LoggerCallback(logger)])
    assert [s for s, _ in metric_history(client(uri), logger.run_id, "train/loss")] == list(range(1, 7))
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(ImportError, match=r'pip install "aitoolbox\[mlflow\]"'):
        MLflowLogger().setup(None)
