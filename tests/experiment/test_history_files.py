"""The training history on disk and in plots: each value at the epoch it belongs to."""
import csv
import io
import os

import pytest

from aitoolbox.experiment.result_package.basic_packages import ClassificationResultPackage
from aitoolbox.experiment.result_writers import history_epochs, history_to_csv, metric_figure, plot_history
from aitoolbox.torchtrain.callbacks.performance_eval import ModelPerformanceEvaluation
from aitoolbox.torchtrain.train_loop import TrainLoop, TrainLoopEndSave
from tests.tracking.helpers import loop_args

BATCHES_PER_EPOCH = 6  # 48 samples, batch 8


def _csv_rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_train_end_values_belong_to_the_last_epoch():
    history = {"loss": [3.0, 2.0, 1.0], "val_loss": [3.5, 2.5, 1.5], "train_end_test_loss": [0.9]}
    assert history_epochs(history) == {"loss": [1, 2, 3], "val_loss": [1, 2, 3], "train_end_test_loss": [3]}
    rows = _csv_rows(history_to_csv(history))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert [r["train_end_test_loss"] for r in rows] == ["", "", "0.9"]
    assert [r["loss"] for r in rows] == ["3.0", "2.0", "1.0"]


def test_train_end_values_of_several_fits_fill_the_last_rows():
    history = {"loss": [3.0, 2.0, 1.0, 0.5], "train_end_test_loss": [0.9, 0.4]}
    assert history_epochs(history)["train_end_test_loss"] == [3, 4]
    assert history_epochs({"train_end_test_loss": [0.9]}) == {"train_end_test_loss": [1]}


def test_csv_written_by_a_tracking_loop_has_the_test_loss_in_the_last_epochs_row(tmp_path):
    loop = TrainLoopEndSave(*loop_args(), "p", "e", tmp_path, {}, cloud_save_mode=None, show_progress=False)
    loop.fit(num_epochs=3)
    with open(os.path.join(loop.experiment_dir, "results", "train_history.csv")) as f:
        rows = _csv_rows(f.read())
    assert len(rows) == 3
    assert [r["train_end_test_loss"] for r in rows[:2]] == ["", ""]
    assert float(rows[2]["train_end_test_loss"]) == loop.train_history["train_end_test_loss"][0]
    assert [float(r["val_loss"]) for r in rows] == loop.train_history["val_loss"]


def _fit(*fits):
    evaluation = ModelPerformanceEvaluation(ClassificationResultPackage(), {}, on_train_data=False, on_val_data=True)
    loop = TrainLoop(*loop_args(), show_progress=False)
    for fit_args in fits:
        loop.fit(callbacks=[evaluation], **fit_args)
    return loop.train_history


@pytest.mark.parametrize("first", [dict(num_iterations=8), dict(num_iterations=5), dict(num_epochs=1)])
def test_one_value_per_epoch_whatever_the_mix_of_num_iterations_and_num_epochs(first):
    split = _fit(first, dict(num_epochs=3))
    straight = _fit(dict(num_epochs=3))
    for key in ("loss", "accumulated_loss", "val_loss", "val_Accuracy"):
        assert len(split[key]) == 3, (key, split[key])
        # the completed epoch's values: the same as a run without the stop
        assert split[key] == pytest.approx(straight[key]), key
    assert len(split["train_end_test_loss"]) == 2  # one per fit
    assert len(_csv_rows(history_to_csv(split.get_train_history_dict()))) == 3


def test_a_num_iterations_stop_records_its_partial_epoch():
    history = _fit(dict(num_iterations=BATCHES_PER_EPOCH + 2))
    assert len(history["val_loss"]) == 2 and len(history["accumulated_loss"]) == 2
    assert len(history["val_Accuracy"]) == 2


def test_iterations_across_several_stops_in_one_epoch():
    history = _fit(dict(num_iterations=2), dict(num_iterations=4), dict(num_epochs=2))
    assert len(history["val_loss"]) == 2 and len(history["val_Accuracy"]) == 2
    assert history["val_loss"] == pytest.approx(_fit(dict(num_epochs=2))["val_loss"])


def _line_data(figure):
    (line,) = figure.axes[0].get_lines()
    return list(line.get_xdata()), list(line.get_ydata())


def test_plotted_data_epochs_and_integer_ticks():
    pytest.importorskip("matplotlib")
    history = {"loss": [3.0, 2.0, 1.0], "train_end_test_loss": [0.9]}
    epochs = history_epochs(history)
    figure = metric_figure("loss", history["loss"], epochs["loss"])
    assert _line_data(figure) == ([1, 2, 3], [3.0, 2.0, 1.0])
    figure.canvas.draw()
    ticks = [t for t in figure.axes[0].get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)
    figure = metric_figure("train_end_test_loss", history["train_end_test_loss"], epochs["train_end_test_loss"])
    assert _line_data(figure) == ([3], [0.9])  # at the last epoch, not at epoch 1
    figure.canvas.draw()
    assert all(float(t).is_integer() for t in figure.axes[0].get_xticks())


def test_plot_history_plots_each_value_at_its_epoch(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import aitoolbox.experiment.result_writers as writers
    figures = {}
    original = writers.metric_figure

    def keep(name, values, epochs=None):
        figures[name] = original(name, values, epochs)
        return figures[name]

    monkeypatch.setattr(writers, "metric_figure", keep)
    history = _fit(dict(num_iterations=8), dict(num_epochs=3)).get_train_history_dict()
    written = plot_history(history, str(tmp_path))
    assert sorted(os.path.basename(p) for p in written) == sorted(
        f"{m}.png" for m in ("loss", "accumulated_loss", "val_loss", "val_Accuracy", "train_end_test_loss",
                             "train_end_val_Accuracy"))
    assert _line_data(figures["val_loss"]) == ([1, 2, 3], history["val_loss"])
    assert _line_data(figures["val_Accuracy"]) == ([1, 2, 3], history["val_Accuracy"])
    # one value per fit: the first fit ended in epoch 2 (stopped mid-epoch), the second in epoch 3
    assert _line_data(figures["train_end_test_loss"]) == ([2, 3], history["train_end_test_loss"])
    assert _line_data(figures["train_end_val_Accuracy"]) == ([2, 3], history["train_end_val_Accuracy"])
