"""``examples/ddp_cpu.py`` trains with DDP on the CPU in 2 processes and evaluates the whole validation set."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.timeout(180)
def test_ddp_cpu_example_trains_with_two_processes():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["PYTHONPATH"] = ROOT
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "ddp_cpu.py"), "--epochs", "3"],
                            capture_output=True, text=True, env=env, timeout=170)
    assert result.returncode == 0, result.stderr[-2000:]
    log = result.stdout + result.stderr
    assert "starting 2 process(es)" in log
    reports = re.findall(r"epoch (\d+): validation accuracy (\d\.\d+) over (\d+) samples", log)
    assert [int(epoch) for epoch, _, _ in reports] == [1, 2, 3]  # logged once per epoch: main process only
    assert all(int(n) == 360 for _, _, n in reports)  # every validation sample, once
    assert float(reports[-1][1]) > float(reports[0][1])
