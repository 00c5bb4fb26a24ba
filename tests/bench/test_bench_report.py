"""The benchmark's verdicts and failure messages (no timing is checked)."""
import json
import os
import subprocess
import sys

import pytest

from bench import report
from bench.registry import BY_KEY, Comparison
from bench.run import failure_summary

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _runs(value):
    return {"a:arm": [{"cpu_seconds": value, "hand_cpu_seconds": 1.0, "steps": 10}]}


def test_quick_run_shows_a_size_dependent_target_without_a_verdict():
    comp = Comparison("time ratio", "a:arm", None, "ratio", base_field="hand_cpu_seconds", target=("<=", 1.02))
    quick = report.summarize(comp, _runs(1.5), wall_too=False, quick=True)
    assert quick["median"] == 1.5 and quick["met"] is None and quick["judged"] is False
    full = report.summarize(comp, _runs(1.5), wall_too=False)
    assert full["met"] is False and full["judged"] is True
    assert "not judged (quick run)" in report._row("t", quick, [])
    assert "**no**" in report._row("t", full, [])


def test_quick_run_judges_targets_that_do_not_depend_on_the_workload():
    comp = Comparison("copies", "a:arm", None, "value", field="cpu_seconds", target=("<=", 1.0),
                      quick_judged=True)
    assert report.summarize(comp, _runs(2.0), wall_too=False, quick=True)["met"] is False
    judged = {c.label for sc in BY_KEY.values() for c in sc.comparisons if c.quick_judged}
    assert "import time minus import torch" in judged
    assert not any(c.quick_judged for c in BY_KEY["tiny"].comparisons)


def test_failure_summary_names_the_abort_behind_a_signal():
    stderr = ("terminate called without an active exception\nW1201 spawn.py:165] Terminating process\n"
              "Traceback (most recent call last):\n  File ...\n"
              "torch.multiprocessing.spawn.ProcessExitedException: process 1 terminated with signal SIGABRT\n")
    assert failure_summary(stderr) == ("torch.multiprocessing.spawn.ProcessExitedException: process 1 "
                                       "terminated with signal SIGABRT (terminate called without an "
                                       "active exception)")
    assert failure_summary("ValueError: bad\n") == "ValueError: bad"
    assert failure_summary("") == "(no output on stderr)"


@pytest.mark.timeout(300)
def test_hand_written_ddp_baseline_exits_cleanly():
    """The baseline ends its ranks cleanly: exit status 0, a result, no C++ abort on stderr."""
    params = {"sizes": [32, 64, 10], "batch_size": 32, "steps": 5, "world_size": 2}
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "bench.child", "ddp", "hand", json.dumps(params)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "terminate called" not in proc.stderr
        assert "@@BENCH_RESULT@@" in proc.stdout
