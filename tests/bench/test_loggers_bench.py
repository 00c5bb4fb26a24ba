"""bench/scenarios/loggers: the harness runs and reports the logging cost with its spread (no timing verdict here)."""
from bench import registry
from bench.scenarios import loggers


def test_in_process_harness_reports_median_and_spread():
    out = loggers.measure(rounds=2, p={**loggers.BASE, "steps": 30})
    for key in ("hook_us_per_step", "per_step_us", "whole_fit_per_step_us", "noise_floor_per_step_us"):
        spread = out[key]
        assert spread["min"] <= spread["q1"] <= spread["median"] <= spread["q3"] <= spread["max"]
    assert out["hook_us_per_step"]["min"] > 0  # the callback did work in every logged run
    assert out["steps"] == 30 and out["rounds"] == 2


def test_scenario_is_registered_with_the_2_us_target():
    scenario = registry.BY_KEY["loggers"]
    assert scenario.arms == ["loggers:plain", "loggers:logged"]
    [judged] = [c for c in scenario.comparisons if c.target is not None]
    assert (judged.arm, judged.field, judged.target) == ("loggers:logged", "hook_us_per_step", ("<=", 2.0))


def test_the_timed_callback_logs_every_step(tmp_path):
    from aitoolbox import TrainLoop
    from aitoolbox.experiment.loggers.csv_logger import CSVLogger
    model, loader, opt, crit = loggers.build(loggers.BASE, 25)
    callback = loggers.timed_callback_class()(CSVLogger(tmp_path))
    TrainLoop(model, loader, None, None, opt, crit, end_auto_eval=False, show_progress=False).fit(
        num_epochs=1, callbacks=[callback])
    assert callback.calls == 25 + 3  # every batch end, plus train begin, epoch end and train end
    with open(tmp_path / "steps.csv") as f:
        assert len(f.readlines()) == 1 + 25


def test_logger_cost_runs_every_part_of_the_logging_path(tmp_path):
    # bench.logger_cost times (or counts) each part in turn: every part runs, in order, and the
    # files hold every driven step
    from bench import logger_cost
    seen = []

    def part(label, fn):
        seen.append(label)
        return fn()
    logger_cost.run_parts(str(tmp_path), part)
    assert seen == logger_cost.PARTS
    with open(tmp_path / "csv" / "steps.csv") as f:
        assert len(f.readlines()) == 1 + logger_cost.STEPS
