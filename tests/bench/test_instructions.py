"""bench.instructions: the slope / set-up arithmetic (the valgrind runs themselves are minutes long)."""
import pytest

from bench import instructions


def test_measure_separates_per_step_cost_from_set_up(monkeypatch):
    # hand: 1000 instructions per step + 50 set-up; aitoolbox: 1010 per step + 5050 set-up
    fake = {"hand": (1000, 50), "aitoolbox": (1010, 5050)}
    monkeypatch.setattr(instructions, "count",
                        lambda scenario, arm, steps, tty: fake[arm][0] * steps + fake[arm][1])
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

    def fake_count(scenario, arm, steps, tty):
        seen.append((scenario, arm, steps))
        return {"plain": 2000, "logged": 2004}[arm] * steps
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
