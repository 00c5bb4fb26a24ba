"""Smoke test of the benchmark entry point: it runs, and its JSON has the documented shape.

Timings are not checked here (they belong to ``bench/``, not to the test suite).
"""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_quick_run_writes_json_with_expected_keys(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "bench", "run.py"), "--quick", "--scenarios", "tiny",
         "--repeats", "1", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    doc = json.loads((tmp_path / "performance.json").read_text())
    assert {"created", "repeats", "quick", "versions", "timing"} <= set(doc["meta"])
    assert doc["meta"]["quick"] is True
    tiny = doc["scenarios"]["tiny"]
    assert tiny["status"] == "ok" and not tiny["errors"]
    assert {"title", "params", "arms", "results", "noise", "run"} <= set(tiny)
    assert set(tiny["arms"]) == {"train:hand", "train:aitoolbox"}
    run = tiny["arms"]["train:aitoolbox"][0]
    assert {"cpu_seconds", "seconds", "hand_cpu_seconds", "steps", "wall_s"} <= set(run)
    assert run["checksum"] == run["hand_checksum"]  # the TrainLoop made the hand-written updates

    ours = [r for r in tiny["results"] if r["arm"] == "train:aitoolbox"]
    assert {r["label"] for r in ours} == {"per-step overhead", "time ratio"}
    for res in ours:
        assert {"median", "min", "max", "target", "met", "unit", "n"} <= set(res)
        assert res["n"] == 1 and res["min"] <= res["median"] <= res["max"]
        # 20 steps are mostly start-up: a quick run shows the numbers but no verdict
        assert res["judged"] is False and res["met"] is None
    assert "not judged (quick run)" in proc.stdout
    assert (tmp_path / "performance.png").stat().st_size > 0
