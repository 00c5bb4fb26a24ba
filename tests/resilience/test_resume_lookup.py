"""SIGKILL while keep-N-best checkpoints are saved and deleted: the lookup never goes back further
than the last checkpoint that was completed, and the next run leaves no temporary file behind."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from aitoolbox.experiment.checkpoint_registry import find_latest_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = r'''
import sys
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.train_loop import TrainLoopCheckpoint

class Report(AbstractCallback):
    """Runs after the checkpoint callback: prints the batches done once their checkpoint is complete."""
    def __init__(self):
        super().__init__("report", execution_order=1001)
    def on_batch_end(self):
        print(self.train_loop_obj.total_iteration_idx + 1, flush=True)

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 700), nn.ReLU(), nn.Linear(700, 700), nn.Linear(700, 3))
data = TensorDataset(torch.randn(64, 6), torch.randint(0, 3, (64,)))
loop = TrainLoopCheckpoint(model, DataLoader(data, batch_size=8), None, None,
                           torch.optim.SGD(model.parameters(), lr=0.01), nn.CrossEntropyLoss(),
                           "proj", "exp", sys.argv[1], {}, cloud_save_mode=None, rm_subopt_local_models=True,
                           num_best_checkpoints_kept=1, iteration_save_freq=1, end_auto_eval=False,
                           show_progress=False, quiet=True, resume=True)
loop.fit(num_epochs=1000, callbacks=[Report()])
'''


def _start(root):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(root)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=dict(os.environ, PYTHONPATH=REPO))


def _checkpoint_dir(root):
    (experiment,) = os.listdir(root / "proj")
    return os.path.join(root / "proj", experiment, "checkpoint_model")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_during_keep_best_saves_never_loses_the_last_completed_checkpoint(tmp_path):
    rng = random.Random(0)
    root = tmp_path / "results"
    for _ in range(4):  # each round resumes the previous one (resume=True) and is killed again
        process = _start(root)
        try:
            completed = int(process.stdout.readline())  # one checkpoint of this round completed
            assert completed >= 1
            deadline = time.monotonic() + rng.uniform(0.1, 0.6)
            while time.monotonic() < deadline:
                line = process.stdout.readline()
                completed = int(line) if line.strip() else completed
            process.send_signal(signal.SIGKILL)
            rest, _ = process.communicate(timeout=30)
            completed = max([completed] + [int(v) for v in rest.split()])
        finally:
            if process.poll() is None:
                process.kill()
        newest = find_latest_checkpoint(_checkpoint_dir(root))
        assert newest is not None
        assert torch.load(newest, weights_only=True, mmap=True)["total_iteration_idx"] >= completed

    process = _start(root)  # the next run removes what the killed writes left
    try:
        process.stdout.readline()
    finally:
        process.kill()
        process.wait(timeout=30)
    tmp_left = [n for n in os.listdir(_checkpoint_dir(root)) if n.endswith(".tmp")]
    # the run removed the leftovers at its start; only the write in flight at this last kill may remain
    assert len(tmp_left) <= 1, tmp_left
    assert len(os.listdir(root / "proj")) == 1  # every round continued in the same experiment folder
