"""bench.instructions: the slope / set-up arithmetic (the valgrind runs themselves are minutes long)
and the children's environment (bytecode cached as on a user's machine)."""
import os
import sys

import pytest

from bench import common, instructions


def test_measure_separates_per_step_cost_from_set_up(monkeypatch):
    # hand: 1000 instructions per step + 50 set-up; aitoolbox: 1010 per step + 5050 set-up
    fake = {"hand": (1000, 50), "aitoolbox": (1010, 5050)}
    monkeypatch.setattr(instructions, "warm_up", lambda *args: None)
    monkeypatch.setattr(instructions, "count",
                        lambda scenario, arm, steps, tty, env, keep: fake[arm][0] * steps + fake[arm][1])
    out = instructions.measure("tiny", steps=(100, 300), base_us=200.0, at_steps=1000)
    assert out["per_step"] == {"hand": 1000, "aitoolbox": 1010}
    assert out["setup"] == {"hand": 50, "aitoolbox": 5050}
    assert out["per_step_overhead"] == 10
    # 10 per step + 5000 set-up over 1000 steps = 15 per step = 1.5 % of a 1000-instruction step
    assert out["overhead_per_step_at_1000_steps"] == 15
    assert out["overhead_fraction_of_base_step"] == pytest.approx(0.015)
    assert out["overhead_us_at_base_us"]["overhead_us"] == pytest.approx(3.0)


def test_loggers_scenario_compares_the_logged_fit_with_the_plain_one(monkeypatch):
    seen = []

    warmed = []

    def fake_count(scenario, arm, steps, tty, env, keep):
        assert [w[1] for w in warmed] == ["plain", "logged"]  # every arm warmed up before counting
        assert env["PYTHONPYCACHEPREFIX"] == warmed[0][3]["PYTHONPYCACHEPREFIX"]  # into the same cache
        seen.append((scenario, arm, steps))
        return {"plain": 2000, "logged": 2004}[arm] * steps
    monkeypatch.setattr(instructions, "warm_up", lambda *args: warmed.append(args))
    monkeypatch.setattr(instructions, "count", fake_count)
    out = instructions.measure("loggers", steps=(100, 300))
    assert {s[1] for s in seen} == {"plain", "logged"} and {s[0] for s in seen} == {"loggers"}
    assert out["per_step_overhead"] == 4
    assert out[f"overhead_per_step_at_{instructions.SCENARIOS['loggers'].at_steps}_steps"] == 4


def test_each_scenario_builds_a_runnable_workload(monkeypatch):
    # the arms' workloads are the timed scenarios' own; run each once, briefly (no valgrind):
    # every arm trains (its model's weights change)
    import torch
    modules = {"tiny": instructions.fit_tiny, "loggers": instructions.loggers}
    for name, counted in instructions.SCENARIOS.items():
        for arm in counted.arms:
            built = []
            real_build = modules[name].build
            monkeypatch.setattr(modules[name], "build", lambda *a, _b=real_build: built.append(_b(*a)) or built[-1])
            run = counted.make(arm, 5)
            monkeypatch.undo()
            before = [p.detach().clone() for p in built[0][0].parameters()]
            run()
            assert any(not torch.equal(b, p) for b, p in zip(before, built[0][0].parameters())), (name, arm)


def test_children_cache_bytecode_in_a_prefix_with_a_fixed_hash_seed(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    env = instructions.child_env(str(tmp_path))
    assert "PYTHONDONTWRITEBYTECODE" not in env
    assert env["PYTHONPYCACHEPREFIX"] == str(tmp_path) and env["PYTHONHASHSEED"] == "0"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == os.getcwd()


def test_warm_up_runs_the_arm_uncounted_in_the_children_environment(monkeypatch, tmp_path):
    # the warm-up is the child itself with --warm-up, in the counted runs' environment (so the
    # bytecode it writes is where they look); the child then never turns callgrind on
    calls = []
    monkeypatch.setattr(instructions.subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw)))
    env = instructions.child_env(str(tmp_path))
    instructions.warm_up("loggers", "logged", 3, env)
    [(cmd, kw)] = calls
    assert cmd[1:] == ["-m", "bench.instructions", "--child", "loggers", "logged", "3", "--warm-up"]
    assert "valgrind" not in cmd[0] and kw["env"] is env and kw["check"]

    toggles, runs = [], []
    monkeypatch.setattr(instructions, "_callgrind", toggles.append)
    monkeypatch.setattr(common, "limit_threads", lambda: None)  # not in this process
    fake = instructions.Counted([], ("a", "b"), lambda arm, steps: lambda: runs.append((arm, steps)), 1)
    monkeypatch.setitem(instructions.SCENARIOS, "fake", fake)
    monkeypatch.setattr(instructions.sys, "argv", ["x", "--child", "fake", "b", "4", "--warm-up"])
    instructions.main()
    assert runs == [("b", 4)] and toggles == []
    monkeypatch.setattr(instructions.sys, "argv", ["x", "--child", "fake", "b", "4"])
    instructions.main()
    assert runs == [("b", 4)] * 2 and toggles == ["on", "off"]
