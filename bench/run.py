"""Benchmark entry point: ``python bench/run.py [--quick] [--scenarios a,b] [--peers]``.

Every scenario runs as a ratio against a hand-written PyTorch loop: its arms run interleaved
(A B A B ...) in fresh processes, ``--repeats`` times; the report gives the median, min and max
over the repeats of the paired numbers and writes ``performance.json``, ``performance.png`` and
the table in ``performance.md`` into ``--out`` (``docs/``; ``bench/results-quick/`` with
``--quick``). Results of scenarios not run now are kept, so that ``--peers`` runs from another
interpreter add to the same file. See docs/performance.md.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench import common, report  # noqa: E402
from bench.child import MARKER  # noqa: E402
from bench.registry import BY_KEY, SCENARIOS, Scenario  # noqa: E402
from bench.scenarios.peers import REQUIRES  # noqa: E402

CHILD_TIMEOUT_S = 1200


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny workloads, 2 repeats: a smoke run (time targets are shown, not judged)")
    parser.add_argument("--scenarios", default=",".join(s.key for s in SCENARIOS),
                        help=f"comma-separated subset of {[s.key for s in SCENARIOS]}")
    parser.add_argument("--peers", action="store_true",
                        help="add the installed peers (lightning, accelerate, pytorch-accelerated, "
                             "ignite) to the training scenarios")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per arm (default 7; 2 quick)")
    parser.add_argument("--out", default=None, help="output folder (default docs/)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.scenarios.split(",")) - set(BY_KEY))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {sorted(BY_KEY)}")
    args.repeats = args.repeats or (2 if args.quick else 7)
    default_out = os.path.join(REPO, "bench", "results-quick") if args.quick else os.path.join(REPO, "docs")
    args.out = args.out or default_out
    return args


def run_child(arm: str, params: dict, extra_env: Optional[dict] = None) -> dict:
    """Run one arm in a fresh process; its result, plus ``wall_s`` of the whole process.

    Raises:
        RuntimeError: the process failed or printed no result (with the end of its output).
    """
    module, name = arm.split(":")
    env = common.child_env(REPO, extra_env)
    env["BENCH_LAUNCH_TIME"] = repr(time.time())
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.child", module, name, json.dumps(params)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise RuntimeError(f"{arm} exited with {proc.returncode}: {failure_summary(proc.stderr)}\n{tail}")
    return {**json.loads(lines[-1][len(MARKER):]), "wall_s": wall}


def failure_summary(stderr: str) -> str:
    """One line saying why a child failed: its last error line, and a C++ abort message if any.

    A rank that aborts at exit prints ``terminate called ...`` well above the parent's traceback,
    whose last line alone ("process 1 terminated with signal SIGABRT") does not say why.
    """
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if not lines:
        return "(no output on stderr)"
    aborts = [ln for ln in lines if ln.startswith("terminate called")]
    last = lines[-1]
    return f"{last} ({aborts[0]})" if aborts and aborts[0] != last else last


def runnable_arms(sc: Scenario, args) -> Dict[str, Optional[str]]:
    """Every arm of the scenario -> None when it runs here, else the reason it does not."""
    arms = {arm: None for arm in sc.arms}
    if args.peers:
        for arm in sc.peer_arms:
            module = REQUIRES[arm.split(":")[1]]
            arms[arm] = None if importlib.util.find_spec(module) else f"{module} is not installed"
    for arm in arms:
        if sc.needs and arms[arm] is None:
            arms[arm] = sc.needs(REPO, arm)
    return arms


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (asked in a separate process)."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                         capture_output=True, text=True)
    return out.stdout.strip() == "True"


def run_scenario(sc: Scenario, args) -> dict:
    """Run the arms of one scenario interleaved, ``args.repeats`` times, and summarize."""
    params = sc.params(args.quick)
    repeats = args.repeats * sc.repeat_factor
    out = {"title": sc.title, "params": params, "status": "ok", "note": "",
           "run": {"at": _now(), "repeats": repeats, "quick": args.quick,
                   "python": sys.executable, "loadavg_start": os.getloadavg()}}
    if sc.cuda_only and not cuda_available():
        return {**out, "status": "skipped", "note": "no CUDA device on this machine"}
    arms = runnable_arms(sc, args)
    runs = {arm: [] for arm, why in arms.items() if why is None}
    errors = {}
    for rep in range(repeats):
        for arm in runs:
            runs[arm].append(_run_logged(arm, params, rep, repeats, errors, sc.env))
    out["run"]["loadavg_end"] = os.getloadavg()
    out.update(arms=runs, not_run={a: why for a, why in arms.items() if why}, errors=errors,
               noise=report.noise(runs[sc.arms[0]]) if sc.arms[0] in runs else {})
    out["results"] = _results(sc, runs, out["not_run"], errors, args.quick)
    return out


def _run_logged(arm: str, params: dict, rep: int, repeats: int, errors: dict,
                extra_env: Optional[dict] = None) -> Optional[dict]:
    try:
        result = run_child(arm, params, extra_env)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        errors.setdefault(arm, str(exc))
        print(f"  [{rep + 1}/{repeats}] {arm}: FAILED ({str(exc).splitlines()[0]})", flush=True)
        return None
    timed = result.get("cpu_seconds", result.get("seconds"))
    shown = f"{timed:.4f} s timed, " if timed is not None else ""
    print(f"  [{rep + 1}/{repeats}] {arm}: {shown}process {result['wall_s']:.2f} s", flush=True)
    return result


def _results(sc: Scenario, runs: dict, not_run: dict, errors: dict, quick: bool = False) -> List[dict]:
    results = []
    for comp in sc.comparisons:
        involved = [a for a in (comp.arm, comp.baseline) if a]
        if any(a not in runs and a not in not_run for a in involved):
            continue  # a peer arm without --peers
        res = report.summarize(comp, runs, wall_too=True, quick=quick)
        why = [not_run.get(a) or (f"failed: {errors[a].splitlines()[0]}" if a in errors else None)
               for a in involved]
        res["note"] = "; ".join(w for w in why if w)
        results.append(res)
    return results


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def _versions() -> dict:
    out = {}
    for dist in ("torch", "lightning", "accelerate", "pytorch-accelerated", "pytorch-ignite"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def meta(args) -> dict:
    """Where and how the results were made."""
    return {"created": _now(), "command": " ".join(sys.argv), "python": platform.python_version(),
            "interpreter": sys.executable, "machine": platform.platform(), "cpus": os.cpu_count(),
            "torch_threads": 1, "repeats": args.repeats, "quick": args.quick,
            "versions": _versions(), "timing": "cpu_seconds = CPU time of the measured process "
            "(every thread); seconds = its wall time; wall_s = the whole process from launch"}


def main(argv: Optional[List[str]] = None) -> int:
    """Run the chosen scenarios and write the report; 0 unless a run failed."""
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    done = {}
    for key in args.scenarios.split(","):
        sc = BY_KEY[key]
        print(f"== {sc.title}", flush=True)
        if args.quick:  # the title gives the full workload
            print(f"   quick workload: {json.dumps(sc.params(True))}", flush=True)
        done[key] = run_scenario(sc, args)
    doc = report.merge_json(os.path.join(args.out, "performance.json"), meta(args), done)
    table = report.markdown_table(doc)
    report.chart(doc, os.path.join(args.out, "performance.png"))
    report.update_markdown(os.path.join(args.out, "performance.md"), table)
    print(table)
    return 1 if any(sc.get("errors") for sc in done.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
