"""What a user sees: the per-epoch log line, the progress display, levels and the quiet switch."""
import io
import logging
import os
import re
import subprocess
import sys

import pytest

from aitoolbox.torchtrain.callbacks.progress import EpochProgress, LineEpochProgress, TqdmEpochProgress
from tests.callbacks.cb_testkit import HistoryFeeder, Recorder, make_loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUMBER = r"(-?[0-9.]+(?:e[-+]\d+)?)"


def _info_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "aitoolbox" and r.levelno == logging.INFO]


def test_one_line_per_epoch_with_mean_batch_loss_losses_and_metrics(caplog):
    loop = make_loop(test=True)
    with caplog.at_level(logging.INFO, logger="aitoolbox"):
        loop.fit(num_epochs=2, callbacks=[HistoryFeeder("val_acc", [0.5, 0.123456789])])
    lines = _info_lines(caplog)
    epoch_lines = [m for m in lines if m.startswith("Epoch ")]
    assert len(epoch_lines) == 2
    history = loop.train_history
    for epoch, line in enumerate(epoch_lines):
        match = re.fullmatch(rf"Epoch {epoch + 1}/2: mean batch loss {NUMBER}, train-set loss {NUMBER}, "
                             rf"val_loss {NUMBER}, val_acc {NUMBER} \(\d+\.\ds\)", line)
        assert match, line
        expected = [history[k][epoch] for k in ("accumulated_loss", "loss", "val_loss", "val_acc")]
        assert list(match.groups()) == [f"{v:.4g}" for v in expected]
    assert "val_acc 0.1235 (" in epoch_lines[1]
    # the mean batch loss is the mean of the training batches' losses, not the re-evaluation
    assert history["accumulated_loss"][0] != history["loss"][0]
    assert lines[-1] == f"End of training: test loss {history['train_end_test_loss'][0]:.4g}"
    assert not any(re.search(r"\d{7,}", m) for m in lines), lines  # no 16-digit floats


def test_num_iterations_stop_says_where_it_stopped(caplog):
    with caplog.at_level(logging.INFO, logger="aitoolbox"):
        make_loop().fit(num_iterations=8)  # 6 batches per epoch
    lines = [m for m in _info_lines(caplog) if m.startswith("Epoch ")]
    assert lines[1].startswith("Epoch 2 (stopped after batch 2/6): mean batch loss ")


def test_quiet_silences_progress_and_epoch_lines(caplog):
    loop = make_loop(show_progress=True, quiet=True)
    loop.progress_stream = stream = io.StringIO()
    with caplog.at_level(logging.DEBUG, logger="aitoolbox"):
        loop.fit(num_epochs=2)
    assert stream.getvalue() == ""
    assert _info_lines(caplog) == []
    assert len(loop.train_history["val_loss"]) == 2  # still recorded


def test_logger_level_warning_silences_info_lines(caplog):
    caplog.set_level(logging.WARNING, logger="aitoolbox")
    make_loop().fit(num_epochs=1)
    assert [r for r in caplog.records if r.name.startswith("aitoolbox") and r.levelno < logging.WARNING] == []


def test_debug_level_shows_each_evaluated_loss(caplog):
    with caplog.at_level(logging.DEBUG, logger="aitoolbox"):
        make_loop().fit(num_epochs=1)
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(m.startswith("Epoch 1 train-set (eval mode) loss (loss): ") for m in debug), debug


def _batch_losses(loop_obj):
    return float(loop_obj.loss_batch_accum[-1])


def test_non_terminal_stream_gets_plain_progress_lines(monkeypatch):
    monkeypatch.setattr(LineEpochProgress, "every_n_batches", 2)
    monkeypatch.setattr(LineEpochProgress, "interval_s", 3600.0)
    loop = make_loop(show_progress=True)  # 6 batches per epoch
    loop.progress_stream = stream = io.StringIO()  # not a TTY
    recorder = Recorder("on_batch_end", _batch_losses)
    loop.fit(num_epochs=2, callbacks=[recorder])
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    pattern = (r"Epoch (\d)/2: (\d)/6 batches \((\d+)%\), [0-9.]+ batches/s, [0-9.]+s elapsed, "
               rf"ETA [0-9.]+s, loss {NUMBER}")
    parsed = [re.fullmatch(pattern, line) for line in lines]
    assert all(parsed), lines
    assert [(int(m.group(1)), int(m.group(2))) for m in parsed] == [(1, 2), (1, 4), (1, 6), (2, 2), (2, 4), (2, 6)]
    for m in parsed:  # the running mean of the epoch's batch losses so far
        epoch, done = int(m.group(1)), int(m.group(2))
        batch_losses = recorder.records[(epoch - 1) * 6:(epoch - 1) * 6 + done]
        assert m.group(4) == f"{sum(batch_losses) / done:.4g}"
        assert int(m.group(3)) == 100 * done // 6


def test_non_terminal_lines_by_time(monkeypatch):
    monkeypatch.setattr(LineEpochProgress, "interval_s", 0.0)
    loop = make_loop(show_progress=True)
    loop.progress_stream = stream = io.StringIO()
    loop.fit(num_epochs=1)
    lines = stream.getvalue().splitlines()
    assert lines and all(re.match(r"Epoch 1/1: \d/6 batches", line) for line in lines)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_terminal_gets_a_tqdm_bar_with_the_running_mean_loss(monkeypatch):
    monkeypatch.setattr(TqdmEpochProgress, "mininterval", 0.0)
    monkeypatch.setattr(EpochProgress, "update_interval_s", 0.0)  # update after every batch
    loop = make_loop(show_progress=True)
    loop.progress_stream = stream = FakeTerminal()
    loop.fit(num_epochs=1)
    text = stream.getvalue()
    assert "\r" in text and "Epoch 1/1" in text
    means = [float(v) for v in re.findall(r"loss=([0-9.e+-]+)", text)]
    assert means, text
    assert means[-1] == pytest.approx(loop.train_history["accumulated_loss"][0], rel=1e-3)


def test_progress_is_updated_on_a_stride_not_every_batch(monkeypatch):
    calls = []
    original = EpochProgress.update
    monkeypatch.setattr(EpochProgress, "update", lambda self: (calls.append(self.loop.iteration), original(self)))
    loop = make_loop(show_progress=True, num_train=8 * 400)  # 400 fast batches
    loop.progress_stream = io.StringIO()
    loop.fit(num_epochs=1)
    assert 0 < len(calls) < 100
    assert calls == sorted(calls)


def test_no_progress_on_other_ranks_or_when_off():
    loop = make_loop(show_progress=False)
    loop.progress_stream = stream = io.StringIO()
    loop.fit(num_epochs=1)
    assert stream.getvalue() == ""


SCRIPT = """
import logging, sys
sys.path.insert(0, {root!r})
if sys.argv[1] == "configured":
    logging.basicConfig(level=logging.INFO, format="ROOT %(name)s: %(message)s")
from tests.callbacks.cb_testkit import make_loop
make_loop().fit(num_epochs=1)
if sys.argv[1] == "late":
    logging.basicConfig(level=logging.INFO, format="ROOT %(name)s: %(message)s")
    make_loop().fit(num_epochs=1)
"""


@pytest.mark.parametrize("mode, prefix", [("default", "Epoch 1/1: mean batch loss "),
                                          ("configured", "ROOT aitoolbox: Epoch 1/1: mean batch loss "),
                                          ("late", None)])
def test_default_handler_and_application_logging(tmp_path, mode, prefix):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(root=ROOT))
    proc = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "Epoch 1/1" in line]
    if mode == "late":  # the default handler until basicConfig, then the application's only: never twice
        assert len(lines) == 2 and lines[0].startswith("Epoch 1/1") and lines[1].startswith("ROOT aitoolbox: ")
    else:
        assert len(lines) == 1 and lines[0].startswith(prefix), proc.stderr
