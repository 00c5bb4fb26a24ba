"""TensorboardFullTracking (skipped without tensorboard) and its optional import."""
import subprocess
import sys

import pytest

from aitoolbox.torchtrain.callbacks.tensorboard import TensorboardFullTracking
from tests.callbacks.cb_testkit import make_loop


def test_tensorboard_writes_history_metrics_and_batch_losses(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    loop = make_loop()  # 6 batches per epoch
    callback = TensorboardFullTracking(log_dir=str(tmp_path / "tb"), batch_log_every_n_steps=4)
    loop.fit(num_epochs=3, callbacks=[callback])
    assert callback.writer is None  # closed at the end of training
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    for name in ("loss", "val_loss", "accumulated_loss"):
        scalars = events.Scalars(name)
        assert [s.step for s in scalars] == [0, 1, 2]
        assert [s.value for s in scalars] == pytest.approx(loop.train_history[name], rel=1e-6)
    batch = events.Scalars("batch/loss")
    assert [s.step for s in batch] == [3, 7, 11, 15]
    assert list(tmp_path.joinpath("tb").glob("events.out.tfevents.*"))


def test_tensorboard_missing_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        make_loop().fit(num_epochs=1, callbacks=[TensorboardFullTracking()])


def test_importing_aitoolbox_and_the_callback_does_not_import_tensorboard():
    code = ("import sys, aitoolbox, aitoolbox.torchtrain.callbacks.tensorboard; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorboard', 'matplotlib', 'boto3')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
