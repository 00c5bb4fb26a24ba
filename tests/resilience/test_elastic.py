"""``torchrun --max-restarts=1`` restarts the group after a rank dies; the new processes resume from
the newest exact checkpoint (``resume=True``) and end with the uninterrupted run's weights."""
import os
import subprocess
import sys

import pytest
import torch

from tests.resilience.signal_helpers import assert_same_weights, script_env

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "elastic_script.py")


def _torchrun(root, out, *args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--max-restarts=1", "--monitor-interval=0.2", SCRIPT, "--root", str(root), "--out", str(out), *args]
    return subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=240)


@pytest.mark.timeout(500)
def test_rank_killed_mid_run_is_restarted_and_resumes_exactly(tmp_path):
    reference = _torchrun(tmp_path / "reference", tmp_path / "reference.pt")
    assert reference.returncode == 0, reference.stderr[-4000:]

    run = _torchrun(tmp_path / "run", tmp_path / "run.pt", "--die-at", "4")  # epoch 2, batch 1 (3 per epoch)
    assert run.returncode == 0, run.stderr[-4000:]
    assert os.path.exists(tmp_path / "run" / "died")  # rank 1 did die once, and the group was restarted
    assert "resume=True: continuing" in run.stderr
    assert len(os.listdir(tmp_path / "run" / "proj")) == 1  # the same experiment folder
    result, expected = (torch.load(tmp_path / name, weights_only=True) for name in ("run.pt", "reference.pt"))
    assert_same_weights(result["model"], expected["model"])
    assert len(result["history"]["loss"]) == 2
