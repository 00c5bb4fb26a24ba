"""bench/scenarios/fit_tiny: the in-process harness runs and reports its spread (no timing verdict here)."""
from bench import registry
from bench.scenarios import fit_tiny


def test_in_process_harness_reports_median_and_spread():
    out = fit_tiny.measure(rounds=2, p={**fit_tiny.BASE, "steps": 40})
    for key in ("cpu_us_per_step", "wall_us_per_step", "noise_floor_cpu_us_per_step"):
        spread = out[key]
        assert spread["min"] <= spread["q1"] <= spread["median"] <= spread["q3"] <= spread["max"]
    assert out["steps"] == 40 and out["rounds"] == 2


def test_scenario_is_registered_with_its_target():
    scenario = registry.BY_KEY["fit_tiny"]
    assert scenario.arms == ["fit_tiny:hand", "fit_tiny:aitoolbox"]
    ours = [c for c in scenario.comparisons if c.arm == "fit_tiny:aitoolbox"]
    assert [c.target for c in ours] == [("<=", 10.0)]


def test_arm_runs_default_fit_with_the_hand_written_updates():
    out = fit_tiny.arm_aitoolbox({**fit_tiny.BASE, "steps": 20})
    assert out["checksum"] == out["hand_checksum"]
