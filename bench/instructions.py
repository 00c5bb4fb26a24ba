"""Scenarios counted in CPU instructions: ``python -m bench.instructions [--scenario tiny|loggers]``.

Timings on a shared machine move with its load (the hand-written step of scenario 8 took 210 µs
on a quiet machine and 500-780 µs on a busy one, and the per-step overhead moved with it). The
number of instructions a run executes does not: this harness runs the two arms of a scenario
under valgrind's callgrind (``--instr-atstart=no``: counting starts after the imports and the data
set are built, and stops when the run returns), each at two step counts, so that

* the slope (instructions per step) separates the per-step cost from the set-up, and
* the difference of the two arms at ``--at-steps`` steps, set-up included, is the overhead.

Scenarios (the arms are the timed scenarios' own functions):

* ``tiny`` (scenario 8): the hand-written loop against the default ``fit`` (1,000 steps).
* ``loggers`` (scenario 10): ``fit`` without loggers against the same ``fit`` logging every step
  to CSV and TensorBoard (``LoggerCallback``, without the timing wrapper of the timed harness).

What is counted runs as on a user's machine, where pip has compiled every module to ``.pyc``:
``measure`` gives the children a fresh temporary ``PYTHONPYCACHEPREFIX`` (so nothing is written
into the repository or site-packages), drops ``PYTHONDONTWRITEBYTECODE`` from their environment and
first runs each arm once uncounted (``--warm-up``), which writes the bytecode of every module the
arm imports, the ones imported lazily during the run included. The counted runs then load those
modules from ``.pyc`` (the lazy imports are still counted, as a process pays them once) instead of
compiling them from source, which this machine's ``PYTHONDONTWRITEBYTECODE=1`` would otherwise
make every run do (about 27,000 instructions per step over a 2,000-step logged run).

The overhead is reported in instructions per step, as a fraction of the baseline arm's step, and
as µs at a given baseline step time (``--base-us``: the quiet machine's 210 µs by default; the
conversion assumes the overhead runs at the instructions per cycle of the baseline step, which is
itself mostly Python and the dispatcher's C++, not arithmetic kernels). Without ``--tty`` the runs
are deterministic (a non-terminal stderr: the progress display writes no bar). With ``--tty`` they
get a pseudo-terminal (``script``), so ``fit`` shows its tqdm bar: the bar redraws on a clock and a
run under valgrind is ~50x slower, so it redraws far more often per step than at full speed - the
count is then an upper bound of the bar's cost, and it varies with the machine's load. Needs
``valgrind`` (and ``script`` for ``--tty``).
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
from typing import Callable, Dict, NamedTuple, Sequence

from bench.scenarios import fit_tiny, loggers


class Counted(NamedTuple):
    """A scenario's two arms for counting: ``make(arm, steps)`` builds the workload, returns the run."""
    imports: Sequence[str]
    arms: Sequence[str]  # (baseline, measured)
    make: Callable[[str, int], Callable[[], None]]
    at_steps: int  # the step count the whole-run overhead is reported at


def _make_tiny(arm: str, steps: int):
    p = {**fit_tiny.BASE, "steps": steps}
    built = fit_tiny.build(p)
    run = fit_tiny.hand_run if arm == "hand" else fit_tiny.aitoolbox_run
    return lambda: run(*built, p)


def _make_loggers(arm: str, steps: int):
    built = loggers.build(loggers.BASE, steps)
    if arm == "plain":
        return lambda: loggers.plain_run(*built)
    return lambda: loggers.logged_run(*built, timed=False)


SCENARIOS: Dict[str, Counted] = {
    "tiny": Counted(fit_tiny.IMPORTS + ["aitoolbox.torchtrain.train_loop.strategies.single"],
                    ("hand", "aitoolbox"), _make_tiny, 1000),
    "loggers": Counted(loggers.IMPORTS + ["aitoolbox.torchtrain.train_loop.strategies.single"],
                       ("plain", "logged"), _make_loggers, loggers.BASE["steps"]),
}


def _child(scenario: str, arm: str, steps: int, counted_run: bool = True) -> None:
    """Build the workload, then count one run of ``arm`` (callgrind on only around it; a warm-up,
    ``counted_run=False``, runs it without valgrind, to write the bytecode of what it imports)."""
    counted = SCENARIOS[scenario]
    for name in counted.imports:
        __import__(name)
    from bench import common
    common.limit_threads()
    run = counted.make(arm, steps)
    if counted_run:
        _callgrind("on")
    run()
    if counted_run:
        _callgrind("off")


def _callgrind(state: str) -> None:
    subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], capture_output=True, check=False)


def child_env(pycache_prefix: str) -> Dict[str, str]:
    """The children's environment: bytecode cached (in ``pycache_prefix``) as on a user's machine, a
    fixed hash seed (dict and set layouts, and so the counts, are the same from run to run), this
    checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    path = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
    return {**env, "PYTHONHASHSEED": "0", "PYTHONPYCACHEPREFIX": pycache_prefix, "PYTHONPATH": path}


def warm_up(scenario: str, arm: str, steps: int, env: Dict[str, str]) -> None:
    """One uncounted run of ``arm`` (no valgrind): writes the bytecode of every module it imports."""
    subprocess.run([sys.executable, "-m", "bench.instructions", "--child", scenario, arm, str(steps), "--warm-up"],
                   check=True, capture_output=True, env=env)


def count(scenario: str, arm: str, steps: int, tty: bool, env: Dict[str, str], keep: str = None) -> int:
    """Instructions executed by one run of ``arm`` over ``steps`` steps (``keep``: a folder to copy
    callgrind's output file into, for ``callgrind_annotate``)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
               sys.executable, "-m", "bench.instructions", "--child", scenario, arm, str(steps)]
        if tty:
            cmd = ["script", "-qec", shlex.join(cmd), os.devnull]
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        if keep:
            os.makedirs(keep, exist_ok=True)
            shutil.copy(out, os.path.join(keep, f"callgrind.{scenario}.{arm}.{steps}.out"))
        with open(out) as f:
            totals = re.search(r"^totals:\s*(\d+)", f.read(), re.M)
        return int(totals.group(1))


def measure(scenario: str = "tiny", steps=(200, 600), tty: bool = False, base_us: float = 210.0,
            at_steps: int = None, keep: str = None) -> dict:
    """Per-step instructions, set-up and overhead of the measured arm over the baseline arm."""
    counted = SCENARIOS[scenario]
    at_steps = counted.at_steps if at_steps is None else at_steps
    base, arm = counted.arms
    with tempfile.TemporaryDirectory(prefix="aitoolbox_bench_pycache_") as pycache:
        env = child_env(pycache)
        for a in counted.arms:
            warm_up(scenario, a, min(steps), env)
        counts = {a: {n: count(scenario, a, n, tty, env, keep) for n in steps} for a in counted.arms}
    lo, hi = steps
    slope = {a: (c[hi] - c[lo]) / (hi - lo) for a, c in counts.items()}
    setup = {a: c[lo] - slope[a] * lo for a, c in counts.items()}
    overhead = slope[arm] - slope[base] + (setup[arm] - setup[base]) / at_steps
    fraction = overhead / slope[base]
    return {"scenario": scenario, "instructions": counts, "per_step": {a: round(s) for a, s in slope.items()},
            "setup": {a: round(s) for a, s in setup.items()},
            "per_step_overhead": round(slope[arm] - slope[base]),
            f"overhead_per_step_at_{at_steps}_steps": round(overhead),
            "overhead_fraction_of_base_step": round(fraction, 4),
            "overhead_us_at_base_us": {"base_us": base_us, "overhead_us": round(fraction * base_us, 2)},
            "tty": tty, "bytecode": "cached (.pyc, written by an uncounted warm-up run)"}


def main() -> None:
    if len(sys.argv) in (5, 6) and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]), counted_run=sys.argv[5:] != ["--warm-up"])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="tiny", choices=sorted(SCENARIOS))
    parser.add_argument("--steps", default="200,600", help="the two step counts, e.g. 200,600")
    parser.add_argument("--tty", action="store_true", help="run under a pseudo-terminal (tqdm bar on)")
    parser.add_argument("--base-us", "--hand-us", type=float, default=210.0,
                        help="the baseline arm's step time to convert to µs")
    parser.add_argument("--keep", metavar="DIR", help="keep callgrind's output files in DIR")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control") + (("script",) if args.tty else ()):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench.instructions needs {tool!r} on the PATH")
    steps = tuple(int(s) for s in args.steps.split(","))
    print(json.dumps(measure(args.scenario, steps, args.tty, args.base_us, keep=args.keep), indent=1))


if __name__ == "__main__":
    main()
