"""Scenario 8 counted in CPU instructions: ``python -m bench.instructions``.

Timings on a shared machine move with its load (the hand-written step of scenario 8 took 210 µs
on a quiet machine and 500-620 µs on a busy one, and the per-step overhead moved with it). The
number of instructions a run executes does not: this harness runs the hand-written loop and the
default ``fit`` of scenario 8 under valgrind's callgrind (``--instr-atstart=no``: counting starts
after the imports and the data set are built, and stops when the run returns), each at two step
counts, so that

* the slope (instructions per step) separates the per-step cost from the set-up, and
* the difference of the two arms at 1,000 steps, set-up included, is the overhead of ``fit``.

The overhead is reported in instructions per step, as a fraction of a hand-written step, and as
µs at a given hand-written step time (``--hand-us``: the quiet machine's 210 µs by default; the
conversion assumes our Python runs at the same instructions per cycle as the step's torch code).
With ``--tty`` the runs get a pseudo-terminal (``script``), so ``fit`` shows its tqdm bar: the bar
redraws on a clock and a run under valgrind is ~50x slower, so it redraws far more often per step
than at full speed - the count is then an upper bound of the bar's cost. Needs ``valgrind`` (and
``script`` for ``--tty``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

from bench.scenarios import fit_tiny

ARMS = ("hand", "aitoolbox")


def _child(arm: str, steps: int) -> None:
    """Build scenario 8's workload, then count one run of ``arm`` (callgrind on only around it)."""
    for name in fit_tiny.IMPORTS + ["aitoolbox.torchtrain.train_loop.strategies.single"]:
        __import__(name)
    from bench import common
    common.limit_threads()
    p = {**fit_tiny.BASE, "steps": steps}
    built = fit_tiny.build(p)
    run = fit_tiny.hand_run if arm == "hand" else fit_tiny.aitoolbox_run
    _callgrind("on")
    run(*built, p)
    _callgrind("off")


def _callgrind(state: str) -> None:
    subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], capture_output=True, check=False)


def count(arm: str, steps: int, tty: bool) -> int:
    """Instructions executed by one run of ``arm`` over ``steps`` steps."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
               sys.executable, "-m", "bench.instructions", "--child", arm, str(steps)]
        if tty:
            cmd = ["script", "-qec", shlex.join(cmd), os.devnull]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        with open(out) as f:
            totals = re.search(r"^totals:\s*(\d+)", f.read(), re.M)
        return int(totals.group(1))


def measure(steps=(200, 600), tty: bool = False, hand_us: float = 210.0, at_steps: int = 1000) -> dict:
    """Per-step instructions, set-up and overhead of the default ``fit`` over the hand loop."""
    counts = {arm: {n: count(arm, n, tty) for n in steps} for arm in ARMS}
    lo, hi = steps
    slope = {arm: (c[hi] - c[lo]) / (hi - lo) for arm, c in counts.items()}
    setup = {arm: c[lo] - slope[arm] * lo for arm, c in counts.items()}
    overhead = slope["aitoolbox"] - slope["hand"] + (setup["aitoolbox"] - setup["hand"]) / at_steps
    fraction = overhead / slope["hand"]
    return {"instructions": counts, "per_step": {a: round(s) for a, s in slope.items()},
            "setup": {a: round(s) for a, s in setup.items()},
            f"overhead_per_step_at_{at_steps}_steps": round(overhead),
            "overhead_fraction_of_hand_step": round(fraction, 4),
            "overhead_us_at_hand_us": {"hand_us": hand_us, "overhead_us": round(fraction * hand_us, 2)},
            "tty": tty}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="200,600", help="the two step counts, e.g. 200,600")
    parser.add_argument("--tty", action="store_true", help="run under a pseudo-terminal (tqdm bar on)")
    parser.add_argument("--hand-us", type=float, default=210.0, help="hand-written step time to convert to µs")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control") + (("script",) if args.tty else ()):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench.instructions needs {tool!r} on the PATH")
    steps = tuple(int(s) for s in args.steps.split(","))
    print(json.dumps(measure(steps, args.tty, args.hand_us), indent=1))


if __name__ == "__main__":
    main()
