"""A 2-rank DDP run (CPU, gloo) with a LoggerCallback: it logs once, on rank 0, and does not hang;
the throughput is global; a profiler with ``ranks='all'`` writes a trace per rank."""
import csv
import json

import pytest
import torch
from torch.utils.data import DataLoader

from aitoolbox import TrainLoop
from aitoolbox.experiment.loggers.csv_logger import CSVLogger
from aitoolbox.torchtrain.callbacks.loggers import LoggerCallback
from aitoolbox.torchtrain.callbacks.profiler import ProfilerCallback
from aitoolbox.torchtrain.callbacks.throughput import ThroughputMonitor
from tests.torchtrain import ddp_helpers as helpers
from tests.torchtrain.logger_helpers import SaveThroughputCounts


@pytest.mark.timeout(180)
def test_ddp_run_logs_once_on_rank_0_with_global_throughput(tmp_path, monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    model = helpers.RegressionNet()
    data = torch.utils.data.TensorDataset(torch.randn(48, helpers.NUM_FEATURES), torch.randn(48, 1))
    loader = DataLoader(data, batch_size=8)  # each rank: 24 samples, 3 batches per epoch
    loop = TrainLoop(model, loader, None, None, torch.optim.SGD(model.parameters(), lr=0.05), torch.nn.MSELoss(),
                     gpu_mode="ddp", show_progress=False)
    monitor = ThroughputMonitor()
    callbacks = [monitor, SaveThroughputCounts(str(tmp_path)),
                 LoggerCallback(CSVLogger(tmp_path / "logs"), flush_every_n_steps=2),
                 ProfilerCallback(wait=1, warmup=1, active=1, save_dir=str(tmp_path / "prof"), ranks="all")]
    loop.fit(num_epochs=2, callbacks=callbacks, num_gpus=2, on_gpu=False, backend="gloo", timeout=60)

    with open(tmp_path / "logs" / "steps.csv", newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [1, 2, 3, 4, 5, 6]  # one writer: every step once, one header
    with open(tmp_path / "logs" / "epochs.csv", newline="") as f:
        epochs = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in epochs] == [0, 1]
    assert [float(r["samples_per_s"]) for r in epochs] == loop.train_history["samples_per_s"]

    for rank in (0, 1):  # ranks='all': every rank profiled its window, in its own file
        with open(tmp_path / "prof" / f"trace_rank{rank}_step3.json") as f:
            assert any(e.get("name") == "ProfilerStep#2" for e in json.load(f)["traceEvents"])

    counts = [json.load(open(tmp_path / f"counts_rank{rank}.json")) for rank in (0, 1)]
    for rank_counts in counts:
        assert rank_counts["world_size"] == 2
        # the last epoch: both ranks' 24 samples (no batch left out for the FLOP count)
        assert rank_counts["counts"]["samples"] == 48 and rank_counts["counts"]["batches"] == 6
    rank0 = counts[0]
    assert loop.train_history["samples_per_s"][-1] == pytest.approx(48 / rank0["counts"]["seconds"])
    assert rank0["samples_per_s"] == loop.train_history["samples_per_s"][-1]
