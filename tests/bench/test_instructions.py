"""bench.instructions: the slope / set-up arithmetic (the valgrind runs themselves are minutes long)."""
import pytest

from bench import instructions


def test_measure_separates_per_step_cost_from_set_up(monkeypatch):
    # hand: 1000 instructions per step + 50 set-up; aitoolbox: 1010 per step + 5050 set-up
    fake = {"hand": (1000, 50), "aitoolbox": (1010, 5050)}
    monkeypatch.setattr(instructions, "count", lambda arm, steps, tty: fake[arm][0] * steps + fake[arm][1])
    out = instructions.measure(steps=(100, 300), hand_us=200.0, at_steps=1000)
    assert out["per_step"] == {"hand": 1000, "aitoolbox": 1010}
    assert out["setup"] == {"hand": 50, "aitoolbox": 5050}
    # 10 per step + 5000 set-up over 1000 steps = 15 per step = 1.5 % of a 1000-instruction step
    assert out["overhead_per_step_at_1000_steps"] == 15
    assert out["overhead_fraction_of_hand_step"] == pytest.approx(0.015)
    assert out["overhead_us_at_hand_us"]["overhead_us"] == pytest.approx(3.0)
