"""Which checkpoints an experiment holds, which are the best, and which is the newest.

The registry is kept by the checkpoint callback (and saved with its state) and written next to
the checkpoints as ``checkpoints.json``, so that a later run finds the newest checkpoint without
opening every file.

File names in ``checkpoint_model/``:

* ``model_epoch_<E>.pt`` - after ``E`` complete epochs;
* ``model_iteration_<T>.pt`` - after ``T`` training batches (mid-epoch);
* ``model_crash_iteration_<T>.pt`` - written when training raised, ``T`` batches done.

aitoolbox 1.8 named its checkpoints ``model_<experiment>_<timestamp>_E<epoch>[_ITER<i>].pth``
(``epoch`` the 0-based index of the finished epoch); a folder holding only such files yields the
newest of them.
"""
from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
from typing import Any, Dict, List, Optional

logger = logging.getLogger("aitoolbox")

MANIFEST_FILE = "checkpoints.json"
#: tie-break between checkpoints taken after the same number of batches: later kinds are newer
KIND_ORDER = {"iteration": 0, "epoch": 1, "crash": 2}
_LOWER_IS_BETTER = ("loss", "mse", "mae", "rmse", "error", "perplexity")


def checkpoint_file_name(kind: str, epochs_done: int, total_iteration: int) -> str:
    """The file name of a checkpoint of ``kind`` (``'epoch'``, ``'iteration'`` or ``'crash'``)."""
    if kind == "epoch":
        return f"model_epoch_{epochs_done}.pt"
    if kind == "iteration":
        return f"model_iteration_{total_iteration}.pt"
    if kind == "crash":
        return f"model_crash_iteration_{total_iteration}.pt"
    raise ValueError(f"unknown checkpoint kind {kind!r}; expected one of {list(KIND_ORDER)}.")


def lower_is_better(metric_name: str) -> bool:
    """Whether smaller values of ``metric_name`` are better (losses and errors)."""
    name = metric_name.lower()
    return any(token in name for token in _LOWER_IS_BETTER)


def newest_entry(entries: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The entry that continues the run furthest (most batches; then epoch end, then crash)."""
    if not entries:
        return None
    return max(entries, key=lambda e: (e["total_iteration"], KIND_ORDER.get(e["kind"], 0)))


class CheckpointRegistry:
    """The checkpoints of one experiment and the rule for which to keep.

    Args:
        metric_name: rank epoch checkpoints by this history metric; None keeps every checkpoint.
        num_best: how many of the best epoch checkpoints to keep (the newest checkpoint is always
            kept too, as the resume point).
    """

    def __init__(self, metric_name: Optional[str] = None, num_best: int = 2):
        self.metric_name = metric_name
        self.num_best = num_best
        self.entries: List[Dict[str, Any]] = []

    def add(self, entry: Dict[str, Any]) -> None:
        """Record a checkpoint (a dict with at least ``file``, ``kind`` and ``total_iteration``)."""
        self.entries = [e for e in self.entries if e["file"] != entry["file"]] + [entry]

    def discard(self, file_name: str) -> None:
        """Forget the checkpoint ``file_name``."""
        self.entries = [e for e in self.entries if e["file"] != file_name]

    def newest(self) -> Optional[Dict[str, Any]]:
        """The newest checkpoint's entry, or None."""
        return newest_entry(self.entries)

    def suboptimal(self) -> List[Dict[str, Any]]:
        """Entries to delete under the ranking rule (none when ``metric_name`` is None).

        Epoch checkpoints outside the ``num_best`` best by the metric go; of the mid-epoch
        (iteration) checkpoints only the newest is kept. The newest checkpoint and crash
        checkpoints are never deleted; a checkpoint without a metric value is kept.
        """
        if self.metric_name is None:
            return []
        newest = self.newest()
        ranked = [e for e in self.entries if e["kind"] == "epoch" and _is_number(e.get("metric_value"))]
        ranked.sort(key=lambda e: e["metric_value"], reverse=not lower_is_better(self.metric_name))
        drop = ranked[self.num_best:]
        iterations = [e for e in self.entries if e["kind"] == "iteration"]
        drop += [e for e in iterations if e is not newest_entry(iterations)]
        return [e for e in drop if e is not newest]

    def manifest(self) -> Dict[str, Any]:
        """The content of ``checkpoints.json``."""
        return {"ranked_by": self.metric_name, "num_best_kept": self.num_best,
                "newest": (self.newest() or {}).get("file"), "checkpoints": list(self.entries)}

    def state_dict(self) -> Dict[str, Any]:
        """The entries, for the callback's checkpoint state."""
        return {"entries": [dict(e) for e in self.entries]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the entries saved by :meth:`state_dict`."""
        self.entries = [dict(e) for e in state.get("entries", [])]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_manifest(folder: str) -> Optional[Dict[str, Any]]:
    """The ``checkpoints.json`` of a checkpoint folder, or None when absent or unreadable."""
    path = os.path.join(folder, MANIFEST_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def find_latest_checkpoint(folder: str) -> Optional[str]:
    """Path of the newest checkpoint in ``folder`` (a ``checkpoint_model/`` folder), or None.

    Uses ``checkpoints.json`` when present (entries whose file exists); otherwise the most
    recently modified ``*.pt`` file (or sharded checkpoint folder, ``gpu_mode='fsdp'``).
    """
    manifest = read_manifest(folder)
    if manifest:
        present = [e for e in manifest.get("checkpoints", [])
                   if os.path.exists(os.path.join(folder, e["file"]))]
        newest = newest_entry(present)
        if newest is not None:
            return os.path.join(folder, newest["file"])
    files = glob.glob(os.path.join(folder, "*.pt"))
    if files:
        return max(files, key=os.path.getmtime)
    return find_latest_original_checkpoint(folder)


#: aitoolbox 1.8's checkpoint names: ``model_<experiment>_<timestamp>_E<epoch>[_ITER<iteration>].pth``
ORIGINAL_CHECKPOINT_PATTERN = re.compile(r"^model_.+_E(\d+)(?:_ITER(\d+))?\.pth$")


def original_checkpoint_order(file_name: str) -> Optional[tuple]:
    """Sort key of an aitoolbox 1.8 checkpoint name (later is newer), or None for other names.

    An end-of-epoch checkpoint ``_E<n>`` comes after the mid-epoch ones ``_E<n>_ITER<i>``.
    """
    match = ORIGINAL_CHECKPOINT_PATTERN.match(file_name)
    if match is None:
        return None
    epoch, iteration = match.groups()
    return int(epoch), iteration is None, int(iteration or 0)


def newest_original_checkpoint_name(file_names) -> Optional[str]:
    """The newest of the aitoolbox 1.8 checkpoint names in ``file_names``, or None."""
    named = [(original_checkpoint_order(name), name) for name in file_names]
    named = [(order, name) for order, name in named if order is not None]
    return max(named)[1] if named else None


def find_latest_original_checkpoint(folder: str) -> Optional[str]:
    """Path of the newest aitoolbox 1.8 checkpoint (``*_E<n>.pth``) in ``folder``, or None."""
    names = [name for name in os.listdir(folder) if os.path.isfile(os.path.join(folder, name))] \
        if os.path.isdir(folder) else []
    newest = newest_original_checkpoint_name(names)
    return None if newest is None else os.path.join(folder, newest)
