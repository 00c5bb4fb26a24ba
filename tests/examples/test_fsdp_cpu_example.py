"""``examples/fsdp_cpu.py`` trains with FSDP on the CPU in 2 processes; its final model loads into a plain one."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.timeout(180)
def test_fsdp_cpu_example_trains_shards_and_consolidates(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["PYTHONPATH"] = ROOT
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "fsdp_cpu.py"), "--epochs", "3",
                             "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=170)
    assert result.returncode == 0, result.stderr[-2000:]
    log = result.stdout + result.stderr
    assert "gpu_mode='fsdp': starting 2 process(es)" in log
    accuracy = re.search(r"validation accuracy (\d\.\d+) over 360 samples", log)
    assert accuracy and float(accuracy.group(1)) > 0.85
    assert re.search(r"newest sharded checkpoint model_epoch_3\.pt: 2 shard file\(s\)", log)
    assert "joined shards equal the final model: True" in log
