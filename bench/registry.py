"""The scenarios: their arms, their workloads and the comparisons (with targets) made from them.

An arm is ``"module:name"``: ``bench.scenarios.<module>.arm_<name>``, run in a fresh process. A
comparison turns the runs of an arm (and of its baseline, paired repeat by repeat) into one number
per repeat; the report gives the median, min and max of those numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from bench.scenarios import cuda, ddp, fit_defaults, fit_tiny, fsdp, imports, loggers, peers, predict, train

PEER_ARMS = [f"peers:{name}" for name in peers.REQUIRES]


@dataclass
class Comparison:
    """One reported number.

    Attributes:
        label: what it measures, for the table.
        arm: the arm measured.
        baseline: the arm it is paired with (None for ``kind='value'``).
        kind: ``ratio`` (arm / baseline), ``overhead_us`` ((arm - baseline) per step, in µs),
            ``delta`` (arm - baseline) or ``value`` (the arm's own field). With ``base_field``
            the baseline is that field of the same run (the in-process hand-written runs).
        field: the result field compared (``cpu_seconds``, ``wall_s``, ...).
        unit: unit shown in the table.
        target: ``(operator, bound)`` with operator ``<=`` or ``<``, or None (informative).
        scale: the number is multiplied by this (e.g. 1e3 for milliseconds).
        base_field: compare with this field of the same run instead of the baseline arm's.
        quick_judged: the target is judged in a ``--quick`` run too. Only for numbers that do not
            depend on the size of the workload (import time, copies of the outputs, a cached
            call); a time ratio or a per-step overhead over a few steps is mostly start-up, so a
            quick run shows it without a verdict.
    """

    label: str
    arm: str
    baseline: Optional[str]
    kind: str
    field: str = "cpu_seconds"
    unit: str = "x"
    target: Optional[Tuple[str, float]] = None
    scale: float = 1.0
    base_field: Optional[str] = None
    quick_judged: bool = False


@dataclass
class Scenario:
    """A workload, its arms and its comparisons.

    Attributes:
        key: name used by ``--scenarios`` and in the JSON.
        title: one line for the table.
        params: ``quick -> workload parameters``, passed to every arm.
        arms: the arms, baseline first, in the order they are interleaved.
        comparisons: what the report computes.
        peer_arms: arms added with ``--peers``.
        needs: ``(repo_root, arm) -> note`` when an arm cannot run here, else None.
        cuda_only: skip the whole scenario without a CUDA device.
        repeat_factor: runs ``factor`` times the requested repeats (cheap, noisy scenarios).
        env: environment variables of this scenario's processes.
    """

    key: str
    title: str
    params: Callable[[bool], dict]
    arms: List[str]
    comparisons: List[Comparison]
    peer_arms: List[str] = field(default_factory=list)
    needs: Optional[Callable[[str, str], Optional[str]]] = None
    cuda_only: bool = False
    repeat_factor: int = 1
    env: dict = field(default_factory=dict)


def _train_comparisons(target_ratio: float, target_us: Optional[float], tiny: bool) -> List[Comparison]:
    out = []
    for arm in ["train:hand", "train:aitoolbox"] + PEER_ARMS:
        ours = arm == "train:aitoolbox"
        label = " (noise floor: hand vs hand)" if arm == "train:hand" else ""
        if tiny:
            out.append(Comparison("per-step overhead" + label, arm, None, "overhead_us", unit="µs",
                                  target=("<=", target_us) if ours else None,
                                  base_field="hand_cpu_seconds"))
        out.append(Comparison("time ratio" + label, arm, None, "ratio", base_field="hand_cpu_seconds",
                              target=("<=", target_ratio) if ours else None))
    return out


def _cuda_comparisons() -> List[Comparison]:
    return [Comparison("AMP float16 time ratio", "cuda:aitoolbox_amp", "cuda:hand_amp", "ratio",
                       field="seconds"),
            Comparison("pinned / non-blocking time ratio", "cuda:aitoolbox_pinned", "cuda:hand_pinned",
                       "ratio", field="seconds")]


SCENARIOS = [
    Scenario("tiny", "1. tiny MLP 32-64-10, batch 32, 3,000 steps",
             lambda quick: train.params(train.TINY, quick), ["train:hand", "train:aitoolbox"],
             _train_comparisons(1.025, 10.0, tiny=True), peer_arms=PEER_ARMS),
    Scenario("medium", "2. medium MLP 784-1024-1024-10, batch 128, 300 steps",
             lambda quick: train.params(train.MEDIUM, quick), ["train:hand", "train:aitoolbox"],
             _train_comparisons(1.005, None, tiny=False), peer_arms=PEER_ARMS),
    Scenario("fit_defaults", "3. fit() with the defaults (end_auto_eval, progress bar), medium MLP",
             fit_defaults.params,
             ["fit_defaults:hand", "fit_defaults:aitoolbox", "fit_defaults:hand_eval",
              "fit_defaults:aitoolbox_eval"],
             [Comparison("default fit / (hand loop + 1 forward pass per evaluated set) (noise floor: "
                         "hand vs hand)", "fit_defaults:hand", None, "ratio", base_field="hand_cpu_seconds"),
              Comparison("default fit / (hand loop + 1 forward pass per evaluated set)",
                         "fit_defaults:aitoolbox", None, "ratio", base_field="hand_cpu_seconds",
                         target=("<=", 1.02)),
              Comparison("end-of-epoch evaluation / plain inference_mode pass (noise floor: hand "
                         "vs hand)", "fit_defaults:hand_eval", None, "ratio", base_field="hand_cpu_seconds"),
              Comparison("end-of-epoch evaluation / plain inference_mode pass",
                         "fit_defaults:aitoolbox_eval", None, "ratio", base_field="hand_cpu_seconds",
                         target=("<=", 1.02))]),
    Scenario("predict", "4. predict_on_validation_set, 20,000 samples, 1,000 outputs each",
             predict.params, ["predict:hand", "predict:aitoolbox"],
             [Comparison("time ratio", "predict:aitoolbox", "predict:hand", "ratio", target=("<=", 1.01)),
              Comparison("peak extra memory (copies of the outputs)", "predict:aitoolbox", None, "value",
                         field="extra_copies", unit="copies", target=("<=", 1.0),
                         quick_judged=True),
              Comparison("peak extra memory (copies of the outputs)", "predict:hand", None, "value",
                         field="extra_copies", unit="copies"),
              Comparison("cached second call", "predict:aitoolbox", None, "value",
                         field="cached_seconds", unit="ms", target=("<", 1.0), scale=1e3,
                         quick_judged=True)],
             env=predict.ENV),
    Scenario("ddp", "5. DDP on CPU, gloo, 2 processes, 1,000 steps per rank", ddp.params,
             ["ddp:hand", "ddp:aitoolbox"],
             [Comparison("wall time ratio (whole program)", "ddp:aitoolbox", "ddp:hand", "ratio",
                         field="wall_s", target=("<=", 1.05)),
              Comparison("wall time (whole program)", "ddp:hand", None, "value", field="wall_s", unit="s"),
              Comparison("wall time (whole program)", "ddp:aitoolbox", None, "value", field="wall_s",
                         unit="s"),
              Comparison("start-up (launch to first step)", "ddp:hand", None, "value",
                         field="startup_seconds", unit="s"),
              Comparison("start-up (launch to first step)", "ddp:aitoolbox", None, "value",
                         field="startup_seconds", unit="s"),
              Comparison("of which: building the optimizer in the parent", "ddp:aitoolbox", None,
                         "value", field="parent_optimizer_seconds", unit="s")]),
    Scenario("import", "6. import aitoolbox against import torch (fresh interpreters)", imports.params,
             ["imports:torch", "imports:aitoolbox"],
             [Comparison("import time minus import torch", "imports:aitoolbox", "imports:torch", "delta",
                         field="seconds", unit="s", target=("<=", 0.15), quick_judged=True),
              Comparison("import torch", "imports:torch", None, "value", field="seconds", unit="s"),
              Comparison("boto3 / matplotlib / tensorboard / ... imported", "imports:aitoolbox", None,
                         "value", field="num_heavy_modules", unit="modules", target=("<=", 0),
                         quick_judged=True)],
             repeat_factor=3),
    Scenario("cuda", "7. CUDA: AMP float16 and pinned-memory throughput", cuda.params,
             ["cuda:hand_amp", "cuda:aitoolbox_amp", "cuda:hand_pinned", "cuda:aitoolbox_pinned"],
             _cuda_comparisons(), cuda_only=True),
    Scenario("fit_tiny", "8. default fit (progress bar on, no evaluation), tiny MLP 32-64-10, batch 32, "
             "1,000 steps, set-up included", fit_tiny.params, ["fit_tiny:hand", "fit_tiny:aitoolbox"],
             [Comparison("per-step overhead (noise floor: hand vs hand)", "fit_tiny:hand", None, "overhead_us",
                         unit="µs", base_field="hand_cpu_seconds"),
              Comparison("per-step overhead", "fit_tiny:aitoolbox", None, "overhead_us", unit="µs",
                         target=("<=", 10.0), base_field="hand_cpu_seconds")]),
    Scenario("fsdp", "9. FSDP2 on CPU, gloo, 2 processes, MLP 64-256-256-10 (each Linear a unit), 400 steps per "
             "rank", fsdp.params, ["fsdp:hand", "fsdp:aitoolbox"],
             [Comparison("time ratio after start-up (first step to end of training)", "fsdp:aitoolbox",
                         "fsdp:hand", "ratio", field="train_seconds", target=("<=", 1.05)),
              Comparison("training time after start-up", "fsdp:hand", None, "value", field="train_seconds",
                         unit="s"),
              Comparison("training time after start-up", "fsdp:aitoolbox", None, "value",
                         field="train_seconds", unit="s")]),
    Scenario("loggers", "10. logging every step to CSV + TensorBoard, tiny MLP 32-64-10, batch 32, fit of "
             "2,000 vs 4,000 steps against the same fit without loggers", loggers.params,
             ["loggers:plain", "loggers:logged"],
             [Comparison("per-step cost, growth from 2,000 to 4,000 steps (noise floor: plain vs plain)",
                         "loggers:plain", None, "overhead_us", unit="µs", base_field="hand_cpu_seconds"),
              Comparison("per-step cost, growth from 2,000 to 4,000 steps", "loggers:logged", None,
                         "overhead_us", unit="µs", base_field="hand_cpu_seconds"),
              Comparison("the callback's own time per step (hooks timed, 4,000-step fit)", "loggers:logged", None,
                         "value", field="hook_us_per_step", unit="µs", target=("<=", 2.0))]),
]

BY_KEY = {s.key: s for s in SCENARIOS}
