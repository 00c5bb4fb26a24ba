"""ThroughputMonitor and ProfilerCallback."""
import csv
import glob
import json
import os

import pytest

from aitoolbox.experiment.loggers.csv_logger import CSVLogger
from aitoolbox.torchtrain.callbacks.loggers import LoggerCallback
from aitoolbox.torchtrain.callbacks.profiler import ProfilerCallback
from aitoolbox.torchtrain.callbacks.throughput import ThroughputMonitor
from tests.callbacks.cb_testkit import NUM_FEATURES, make_loop


def hand_counted_flops(batch_size=8, hidden=8):
    """Matmul FLOPs of one step of the test MLP (4 -> 8 -> 1): forward, then the backward's
    weight gradients of both layers and the input gradient of the second (the first layer's input
    needs no gradient)."""
    forward = 2 * batch_size * NUM_FEATURES * hidden + 2 * batch_size * hidden * 1
    backward = 2 * batch_size * NUM_FEATURES * hidden + 2 * (2 * batch_size * hidden * 1)
    return forward + backward


def test_throughput_flops_and_mfu_go_into_the_history_and_the_loggers(tmp_path):
    loop = make_loop()  # 48 samples, batches of 8
    monitor = ThroughputMonitor(count_tokens=lambda batch: batch[0].numel(), peak_flops=1e9)
    loop.fit(num_epochs=2, callbacks=[monitor, LoggerCallback(CSVLogger(tmp_path))])
    history = loop.train_history
    assert monitor.flops_per_batch == hand_counted_flops()
    assert history["flops_per_batch"] == [hand_counted_flops()] * 2
    for epoch in range(2):
        samples, batches = history["samples_per_s"][epoch], history["batches_per_s"][epoch]
        assert samples > 0 and samples / batches == pytest.approx(8.0)  # full batches of 8
        assert history["tokens_per_s"][epoch] == pytest.approx(samples * NUM_FEATURES)
        assert history["mfu"][epoch] == pytest.approx(hand_counted_flops() * batches / 1e9)
    with open(tmp_path / "epochs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["samples_per_s"]) for r in rows] == history["samples_per_s"]


def test_no_mfu_without_a_known_peak_and_bad_arguments():
    loop = make_loop()
    loop.fit(num_epochs=1, callbacks=[ThroughputMonitor(measure_flops=False)])
    assert "mfu" not in loop.train_history and "flops_per_batch" not in loop.train_history
    assert loop.train_history["samples_per_s"][0] > 0
    with pytest.raises(TypeError, match="count_tokens"):
        ThroughputMonitor(count_tokens=3)
    with pytest.raises(ValueError, match="peak_flops"):
        ThroughputMonitor(peak_flops=0)


def test_profiler_writes_a_chrome_trace_that_loads_and_the_plugin_copy(tmp_path):
    loop = make_loop()
    profiler = ProfilerCallback(wait=1, warmup=1, active=2, save_dir=str(tmp_path / "prof"))
    loop.fit(num_epochs=2, callbacks=[profiler])
    [trace] = profiler.trace_files
    assert os.path.basename(trace) == "trace_rank0_step4.json"
    with open(trace) as f:
        events = json.load(f)["traceEvents"]
    names = {e.get("name") for e in events}
    assert "ProfilerStep#2" in names and "ProfilerStep#3" in names and "ProfilerStep#1" not in names
    assert any(name and name.startswith("aten::addmm") for name in names)  # the model's forward
    [plugin_file] = glob.glob(str(tmp_path / "prof" / "tensorboard" / "rank0.*.pt.trace.json"))
    with open(plugin_file) as f:
        assert json.load(f)["traceEvents"]
    assert profiler.profiler is None  # stopped once the window was recorded


def test_profiler_bad_arguments_and_missing_folder():
    with pytest.raises(ValueError, match="ranks"):
        ProfilerCallback(ranks="some")
    with pytest.raises(ValueError, match="active"):
        ProfilerCallback(active=0)
    with pytest.raises(ValueError, match="no folder"):
        make_loop().fit(num_epochs=1, callbacks=[ProfilerCallback()])
