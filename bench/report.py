"""From raw runs to numbers: paired statistics, the JSON file, the markdown table and the chart."""
from __future__ import annotations

import json
import os
import statistics
from typing import Dict, List, Optional

from bench.registry import Comparison

TABLE_START, TABLE_END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def _per_repeat(comp: Comparison, runs: Dict[str, List[Optional[dict]]]) -> List[float]:
    """One number per repeat in which the arm (and its baseline) succeeded."""
    values = []
    base_runs = runs.get(comp.baseline, []) if comp.baseline else None
    for idx, run in enumerate(runs.get(comp.arm, [])):
        base = base_runs[idx] if base_runs is not None and idx < len(base_runs) else None
        if run is None or run.get(comp.field) is None or (base_runs is not None and base is None):
            continue
        value = run[comp.field]
        reference = run.get(comp.base_field) if comp.base_field else (base or {}).get(comp.field)
        if comp.kind == "ratio":
            value = value / reference
        elif comp.kind == "delta":
            value = value - reference
        elif comp.kind == "overhead_us":
            value = (value - reference) / run["steps"] * 1e6
        values.append(value * comp.scale)
    return values


def _met(target, median: float) -> Optional[bool]:
    if target is None:
        return None
    op, bound = target
    return median <= bound if op == "<=" else median < bound


def summarize(comp: Comparison, runs: Dict[str, List[Optional[dict]]], wall_too: bool,
              quick: bool = False) -> dict:
    """Median, min and max of a comparison over the repeats, and whether the target is met.

    In a ``quick`` run a target is judged only when the comparison says it may be
    (:attr:`Comparison.quick_judged`); otherwise ``met`` is None and ``judged`` False.
    """
    values = _per_repeat(comp, runs)
    judged = comp.target is not None and (comp.quick_judged or not quick)
    out = {"label": comp.label, "arm": comp.arm, "baseline": comp.baseline, "kind": comp.kind,
           "field": comp.field, "unit": comp.unit, "n": len(values),
           "target": None if comp.target is None else f"{comp.target[0]} {comp.target[1]:g}",
           "judged": judged}
    if not values:
        return {**out, "median": None, "min": None, "max": None, "met": None}
    median = statistics.median(values)
    out.update(median=median, min=min(values), max=max(values),
               met=_met(comp.target, median) if judged else None)
    if wall_too and comp.field == "cpu_seconds":
        base_field = "hand_seconds" if comp.base_field else None
        wall = _per_repeat(Comparison(**{**comp.__dict__, "field": "seconds", "base_field": base_field}), runs)
        out["wall_median"] = statistics.median(wall) if wall else None
    return out


def noise(runs: List[Optional[dict]]) -> dict:
    """How steady the baseline arm was: spread of its times, and CPU time over wall time."""
    ok = [r for r in runs if r]
    out = {}
    for key in ("cpu_seconds", "seconds", "wall_s"):
        vals = [r[key] for r in ok if r.get(key)]
        if len(vals) >= 2:
            out[f"{key}_cv"] = statistics.pstdev(vals) / statistics.mean(vals)
            out[f"{key}_spread"] = max(vals) / min(vals) - 1
    pairs = [r["cpu_seconds"] / r["seconds"] for r in ok if r.get("cpu_seconds") and r.get("seconds")]
    if pairs:
        out["cpu_over_wall_median"] = statistics.median(pairs)
    return out


def merge_json(path: str, meta: dict, scenarios: Dict[str, dict]) -> dict:
    """Write ``scenarios`` into the JSON file at ``path``, keeping the scenarios not run now."""
    doc = {"meta": meta, "scenarios": {}}
    if os.path.exists(path):
        with open(path) as fh:
            doc["scenarios"] = json.load(fh).get("scenarios", {})
    doc["scenarios"].update(scenarios)
    with open(path, "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=False)
        fh.write("\n")
    return doc


def _fmt(value, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.3f}x"
    if unit in ("modules", "copies"):
        return f"{value:.3g}" if unit == "copies" else f"{value:.0f}"
    return f"{value:.3g} {unit}" if abs(value) < 100 else f"{value:.0f} {unit}"


def _arm_name(arm: Optional[str]) -> str:
    return arm.split(":", 1)[1] if arm else ""


def markdown_table(doc: dict) -> str:
    """The results as a markdown table, one row per comparison; notes listed below it."""
    lines = ["| scenario | metric | arm | median | min | max | target | met |",
             "|---|---|---|---|---|---|---|---|"]
    notes: List[str] = []
    for sc in doc["scenarios"].values():
        title = sc["title"]
        if sc["status"] != "ok":
            lines.append(f"| {title} | *{sc['status']}: {sc.get('note', '')}* | | | | | | |")
            continue
        for res in sc["results"]:
            lines.append(_row(title, res, notes))
            title = ""
    lines += [""] + [f"[{idx + 1}] {note}" for idx, note in enumerate(notes)]
    return "\n".join(lines).rstrip()


def _row(title: str, res: dict, notes: List[str]) -> str:
    met = {True: "yes", False: "**no**", None: ""}[res.get("met")]
    if res.get("target") and res.get("judged") is False and res["median"] is not None:
        met = "not judged (quick run)"
    label = res["label"]
    if res.get("note"):
        if res["note"] not in notes:
            notes.append(res["note"])
        label += f" [{notes.index(res['note']) + 1}]"
    cells = [_fmt(res[k], res["unit"]) for k in ("median", "min", "max")]
    if res["median"] is None:
        cells = ["not run", "", ""]
    return (f"| {title} | {label} | {_arm_name(res['arm'])} | {' | '.join(cells)} | "
            f"{res['target'] or ''} | {met} |")


def update_markdown(md_path: str, table: str) -> bool:
    """Replace the table between the markers of ``md_path``; False when the markers are absent."""
    if not os.path.exists(md_path):
        return False
    with open(md_path) as fh:
        text = fh.read()
    if TABLE_START not in text or TABLE_END not in text:
        return False
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    with open(md_path, "w") as fh:
        fh.write(f"{head}{TABLE_START}\n{table}\n{TABLE_END}{tail}")
    return True


def _ratio_rows(doc: dict) -> List[dict]:
    rows = []
    for sc in doc["scenarios"].values():
        for res in sc.get("results", []):
            if res["kind"] == "ratio" and res["median"] is not None:
                rows.append({**res, "scenario": sc["title"].split(" ", 1)[0].rstrip(".")})
    return rows


def chart(doc: dict, png_path: str) -> None:
    """Bar chart of every time ratio (median, min-max whiskers, target ticks) and of the
    tiny-model per-step overheads."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = _ratio_rows(doc)
    overheads = [r for r in doc["scenarios"].get("tiny", {}).get("results", [])
                 if r["kind"] == "overhead_us" and r["median"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(13, max(3.0, 0.38 * len(rows) + 1.2)),
                             gridspec_kw={"width_ratios": [3, 2]})
    _bars(axes[0], rows, "time ratio against the hand-written loop (1.0 = equal; log scale)", ref=1.0)
    axes[0].set_xscale("log")
    _bars(axes[1], [{**r, "scenario": "1"} for r in overheads],
          "tiny MLP: overhead per training step (µs; symlog)", ref=0.0)
    axes[1].set_xscale("symlog", linthresh=10)
    fig.suptitle("aitoolbox benchmark: medians of interleaved fresh-process runs")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def _bars(ax, rows: List[dict], title: str, ref: float) -> None:
    labels = [f"{r['scenario']}: {_arm_name(r['arm'])}" for r in rows]
    med = [r["median"] for r in rows]
    err = [[m - r["min"] for m, r in zip(med, rows)], [r["max"] - m for m, r in zip(med, rows)]]
    colors = ["tab:blue" if "aitoolbox" in r["arm"] else "tab:gray" for r in rows]
    ys = list(range(len(rows)))[::-1]
    ax.barh(ys, [m - ref for m in med], left=ref, xerr=err, color=colors, capsize=3)
    for y, r in zip(ys, rows):
        ax.annotate(f"{r['median']:.3g}", (max(r["median"], ref), y), xytext=(4, -3),
                    textcoords="offset points", fontsize=7)
        if r.get("target"):
            bound = float(r["target"].split()[-1])
            ax.plot([bound, bound], [y - 0.4, y + 0.4], color="tab:red", lw=2)
    ax.axvline(ref, color="black", lw=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_title(title, fontsize=10)
