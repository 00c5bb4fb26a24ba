"""A process killed with SIGKILL while writing checkpoints never leaves a corrupt checkpoint behind."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from aitoolbox.experiment.checkpoint_registry import find_latest_checkpoint

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WRITER = textwrap.dedent("""
    import sys, torch
    from aitoolbox.utils.io import atomic_torch_save
    folder = sys.argv[1]
    state = {"weights": torch.randn(1_500_000), "step": 0}   # ~6 MB: kills land mid-write
    step = 0
    while True:
        step += 1
        state["step"] = step
        atomic_torch_save(state, f"{folder}/model_iteration_{step % 3}.pt")
        atomic_torch_save(state, f"{folder}/latest.pt")
        print(step, flush=True)
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_while_saving_never_leaves_a_corrupt_checkpoint(tmp_path):
    rng = random.Random(0)
    interrupted_writes = 0
    for round_idx in range(5):
        folder = tmp_path / f"round{round_idx}"
        folder.mkdir()
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], cwd=REPO_ROOT,
                                   stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": REPO_ROOT})
        assert process.stdout.readline()  # at least one full save happened
        time.sleep(rng.uniform(0.0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        interrupted_writes += sum(p.endswith(".tmp") for p in os.listdir(folder))
        checkpoints = sorted(p for p in os.listdir(folder) if p.endswith(".pt"))
        assert "latest.pt" in checkpoints
        for name in checkpoints:  # every checkpoint file present loads completely
            state = torch.load(folder / name, weights_only=True)
            assert state["weights"].numel() == 1_500_000 and state["step"] >= 1
        newest = find_latest_checkpoint(str(folder))
        assert torch.load(newest, weights_only=True)["step"] >= 1
    assert interrupted_writes > 0  # the kills did land in the middle of writes
