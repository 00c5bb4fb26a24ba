"""result_reporting: HyperParamSourceReporter, TrainingHistoryWriter / Plotter and GradientPlotter."""
import csv
import os
import zipfile

import numpy as np
import pytest

from aitoolbox.experiment.result_reporting.hyperparam_reporter import HyperParamSourceReporter
from aitoolbox.experiment.result_reporting.report_generator import (GradientPlotter, TrainingHistoryPlotter,
                                                                    TrainingHistoryWriter)
from aitoolbox.experiment.training_history import TrainingHistory

RULE = "=" * 28


def history(values):
    return TrainingHistory().wrap_pre_prepared_history(values)


def test_hyperparam_reporter_writes_the_text_file_in_the_experiment_folder(tmp_path):
    reporter = HyperParamSourceReporter("proj", "exp", "2019_01_01_00_11", str(tmp_path))
    assert reporter.experiment_dir_path == os.path.join(str(tmp_path), "proj", "exp_2019_01_01_00_11")
    assert reporter.local_hyperparams_file_path == os.path.join(reporter.experiment_dir_path, "hyperparams_list.txt")
    params = {"lr": 0.0002, "a": 103, "path": "x/y"}
    path = reporter.save_hyperparams_to_text_file(params)
    assert open(path).read() == "lr:\t0.0002\na:\t103\npath:\tx/y\n"
    reporter.save_hyperparams_to_text_file(params, sort_names=True)
    assert open(path).read().splitlines() == ["a:\t103", "lr:\t0.0002", "path:\tx/y"]


def test_hyperparam_reporter_copies_script_and_zips_sources(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    src = tmp_path / "pkg"
    src.mkdir()
    (src / "mod.py").write_text("X = 1\n")
    reporter = HyperParamSourceReporter("proj", "exp", "ts", str(tmp_path / "res"))
    copied = reporter.save_experiment_python_file({"experiment_file_path": str(script)})
    assert open(copied).read() == "print('hi')\n"
    assert reporter.save_experiment_python_file({}) is None
    assert reporter.save_experiment_python_file({"experiment_file_path": str(tmp_path / "nope.py")}) is None
    zip_path = reporter.save_experiment_source_files({"source_dirs_paths": [str(src)]})
    with zipfile.ZipFile(zip_path) as archive:
        assert any(name.endswith("mod.py") for name in archive.namelist())
    assert reporter.save_experiment_source_files({"source_dirs_paths": []}) is None


def test_hyperparam_reporter_uploads_with_a_cloud_saver(tmp_path):
    calls = []

    class Saver:
        def create_experiment_cloud_storage_folder_structure(self, project, experiment, timestamp):
            return f"prefix/{project}/{experiment}_{timestamp}/results"

        def save_file(self, local_file_path, cloud_file_path):
            calls.append((local_file_path, cloud_file_path))

    reporter = HyperParamSourceReporter("proj", "exp", "ts", str(tmp_path))
    path = reporter.save_hyperparams_to_text_file({"a": 1})
    assert reporter.copy_to_cloud_storage(path, Saver()) == "prefix/proj/exp_ts/hyperparams_list.txt"
    assert calls == [(path, "prefix/proj/exp_ts/hyperparams_list.txt")]


def test_history_writer_txt_appends_an_epoch_block(tmp_path):
    hist = history({"loss": [123.4, 99999], "accumulated_loss": [], "val_loss": [], "NEW_METRIC": [1.5, 2.5]})
    writer = TrainingHistoryWriter(str(tmp_path))
    rel, path = writer.generate_report(hist, epoch=0, file_name="results.txt", results_folder_name="results_txt")
    assert (rel, path) == ("results_txt/results.txt", str(tmp_path / "results_txt" / "results.txt"))
    hist.insert_single_result_into_history("NEW_METRIC", 3.5)
    hist.insert_single_result_into_history("brand_new", 7.0)
    writer.generate_report(hist, epoch=1, file_name="results.txt", results_folder_name="results_txt")
    lines = [line.strip() for line in open(path)]
    assert lines == [RULE, "Epoch: 0", RULE, "loss:\t99999", "NEW_METRIC:\t2.5", "", "",
                     RULE, "Epoch: 1", RULE, "loss:\t99999", "NEW_METRIC:\t3.5", "brand_new:\t7.0", "", ""]
    rel, path = TrainingHistoryWriter(str(tmp_path)).generate_report(hist, 0, "top.txt")
    assert rel == "top.txt" and path == str(tmp_path / "top.txt")


@pytest.mark.parametrize("file_format,delimiter", [("tsv", "\t"), ("csv", ",")])
def test_history_writer_tables_restart_the_header_for_new_metrics(tmp_path, file_format, delimiter):
    hist = TrainingHistory(has_validation=False, has_test=False)
    writer = TrainingHistoryWriter(str(tmp_path))
    name = f"results.{file_format}"
    for epoch, (loss, metric) in enumerate([(1.0, 10.0), (2.0, 20.0)]):
        hist.insert_single_result_into_history("loss", loss)
        hist.insert_single_result_into_history("M", metric)
        _, path = writer.generate_report(hist, epoch, name, "t", file_format=file_format)
    hist.insert_single_result_into_history("loss", 3.0)
    hist.insert_single_result_into_history("M", 30.0)
    hist.insert_single_result_into_history("NEW", 5.0)
    writer.generate_report(hist, 2, name, "t", file_format=file_format)
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter=delimiter))
    assert rows == [["Epoch", "loss", "M"], ["0", "1.0", "10.0"], ["1", "2.0", "20.0"], ["NEW_METRICS_DETECTED"],
                    ["Epoch", "loss", "M", "NEW"], ["2", "3.0", "30.0", "5.0"]]
    with pytest.raises(ValueError, match="file_format"):
        writer.generate_report(hist, 3, name, file_format="xlsx")


def test_history_plotter_png_and_pdf(tmp_path):
    pytest.importorskip("matplotlib")
    hist = history({"loss": [3.0, 2.0, 1.0], "val_loss": [3.5, 2.5, 2.0], "single": [1.0], "empty": []})
    plotter = TrainingHistoryPlotter(str(tmp_path))
    paths = plotter.generate_report(hist, plots_folder_name="plots")
    assert paths == [["plots/loss.png", str(tmp_path / "plots" / "loss.png")],
                     ["plots/val_loss.png", str(tmp_path / "plots" / "val_loss.png")]]
    for _, local in paths:
        assert open(local, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    [[rel, local]] = plotter.generate_report(hist, plots_folder_name="all_plots", file_format="pdf")
    assert rel == "all_plots.pdf" and open(local, "rb").read(5) == b"%PDF-"
    with pytest.raises(ValueError, match="file_format"):
        plotter.generate_report(hist, file_format="svg")


def test_gradient_plotter_skips_layers_without_gradients(tmp_path):
    pytest.importorskip("matplotlib")
    import torch

    grads = [np.random.default_rng(0).normal(size=100), None, torch.ones(3, 4)]
    paths = GradientPlotter(str(tmp_path)).generate_report(grads, "epoch_0")
    assert [p[0] for p in paths] == ["epoch_0/layer_0.png", "epoch_0/layer_2.png"]
    assert all(os.path.getsize(p[1]) > 0 for p in paths)
    [[rel, local]] = GradientPlotter(str(tmp_path)).generate_report(grads, "epoch_1", file_format="pdf")
    assert rel == "epoch_1.pdf" and open(local, "rb").read(5) == b"%PDF-"


def test_plotters_without_matplotlib_name_the_extra(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "aitoolbox\[plots\]"'):
        TrainingHistoryPlotter(str(tmp_path)).generate_report(history({"loss": [1.0, 2.0]}))
