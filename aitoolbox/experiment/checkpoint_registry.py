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
from typing import Any, Dict, List, Optional, Union

logger = logging.getLogger("aitoolbox")

MANIFEST_FILE = "checkpoints.json"
CHECKPOINT_DIR = "checkpoint_model"  # as aitoolbox.experiment.experiment_folder.CHECKPOINT_DIR
#: the loop state inside a sharded checkpoint folder (as ``strategies.fsdp.LOOP_STATE_FILE``; not
#: imported from there: that module imports torch.distributed)
SHARDED_LOOP_STATE_FILE = "loop_state.pt"
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
    """The ``checkpoints.json`` of a checkpoint folder, or None when absent, unreadable or malformed."""
    path = os.path.join(folder, MANIFEST_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("checkpoints", []), list):
        logger.warning("%s is malformed (not a checkpoint manifest); the checkpoint files are used instead.", path)
        return None
    manifest["checkpoints"] = [e for e in manifest.get("checkpoints", [])
                               if isinstance(e, dict) and isinstance(e.get("file"), str)
                               and isinstance(e.get("total_iteration"), int) and isinstance(e.get("kind"), str)]
    return manifest


def checkpoint_folder_of(path: Union[str, os.PathLike]) -> str:
    """The ``checkpoint_model/`` folder of ``path``: an experiment folder or a checkpoint folder (``~`` expanded)."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    nested = os.path.join(path, CHECKPOINT_DIR)
    return nested if os.path.isdir(nested) else path


#: what an interrupted atomic write leaves behind (see ``aitoolbox.utils.io.atomic_write_path``)
_TEMPORARY_PATTERN = re.compile(r"^\..+\.tmp$")


def remove_stale_temporaries(folder: Union[str, os.PathLike]) -> List[str]:
    """Delete the hidden ``.<name>.<random>.tmp`` files that killed writes left in ``folder``.

    Call it only when no other process writes into ``folder`` (at the start of a run).

    Returns:
        The removed paths.
    """
    folder = os.fspath(folder)
    removed = []
    for name in (os.listdir(folder) if os.path.isdir(folder) else []):
        path = os.path.join(folder, name)
        if _TEMPORARY_PATTERN.match(name) and os.path.isfile(path):
            try:
                os.remove(path)
                removed.append(path)
            except OSError as error:
                logger.warning("Could not remove the stale temporary file %s: %s", path, error)
    if removed:
        logger.info("Removed %d temporary file(s) of interrupted writes in %s.", len(removed), folder)
    return removed


def inspect_checkpoint(path: str) -> Optional[Dict[str, Any]]:
    """What a checkpoint file says about itself, read from the file; None when it does not load.

    Returns:
        ``{"total_iteration": int or None, "exact": bool, "kind": str}``: the batches done (None
        for a file of another format), whether it is an exact resume point (crash checkpoints
        record it), and its kind (from the name).
    """
    import torch  # lazily: importing aitoolbox.experiment must not import torch

    name = os.path.basename(path)
    if os.path.isdir(path):  # a sharded (gpu_mode='fsdp') checkpoint folder: its loop state tells
        path = os.path.join(path, SHARDED_LOOP_STATE_FILE)
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # reads no tensor data
        except RuntimeError:
            state = torch.load(path, map_location="cpu", weights_only=True)  # the legacy (non-zip) format
    except Exception:  # truncated, empty, not a torch file: not a resume point
        return None
    if not isinstance(state, dict):
        return None
    crash = state.get("crash")
    total = state.get("total_iteration_idx")
    kind = "crash" if name.startswith("model_crash_") else "iteration" if name.startswith("model_iteration_") \
        else "epoch"
    return {"total_iteration": total if isinstance(total, int) else None,
            "exact": not (isinstance(crash, dict) and crash.get("exact_resume") is False), "kind": kind}


def find_latest_checkpoint(folder: Union[str, os.PathLike]) -> Optional[str]:
    """Path of the checkpoint that continues the run furthest, exactly; None when there is none.

    ``folder``: a ``checkpoint_model/`` folder or the experiment folder holding one (``~`` is
    expanded). Every ``*.pt`` file (or sharded checkpoint folder, ``gpu_mode='fsdp'``) is checked by loading it (memory-mapped: its tensors are not
    read): a truncated or corrupt file is skipped with a warning, and so is a crash checkpoint
    flagged as not exact when an exact one exists. The newest by progress (batches done; then
    epoch end, then crash) wins; ``checkpoints.json`` is not trusted for that (it can name a file
    that a killed run deleted). Files of another format rank by modification time. A folder
    holding only aitoolbox 1.8 checkpoints (``*_E<n>.pth``) yields the newest of them. The
    experiment's bucket is not looked at: :func:`fetch_latest_cloud_checkpoint` downloads the
    newest checkpoint from there (``resume=True`` does so when the local folder has none).
    """
    folder = checkpoint_folder_of(folder)
    files = sorted(p for p in glob.glob(os.path.join(folder, "*.pt"))
                   if os.path.isfile(p) or os.path.isfile(os.path.join(p, SHARDED_LOOP_STATE_FILE)))
    candidates, broken = [], []
    for path in files:
        info = inspect_checkpoint(path)
        if info is None:
            broken.append(path)
        else:
            candidates.append((path, info))
    if broken:
        logger.warning("Skipped %d checkpoint file(s) that do not load (truncated or corrupt): %s",
                       len(broken), [os.path.basename(p) for p in broken])
    if not candidates:
        return find_latest_original_checkpoint(folder)

    def progress(item):
        path, info = item
        total = info["total_iteration"]
        return (total is not None, total or 0, KIND_ORDER.get(info["kind"], 0), os.path.getmtime(path))

    newest = max(candidates, key=progress)
    exact = [item for item in candidates if item[1]["exact"]]
    if not newest[1]["exact"] and exact:
        logger.warning("The newest checkpoint %s was taken mid-update (not an exact resume point); the newest "
                       "exact one is used.", os.path.basename(newest[0]))
    # exact ones first, newest first; the first whose checksums verify is the resume point
    for path, _ in sorted(candidates, key=lambda item: (item[1]["exact"], progress(item)), reverse=True):
        if _checksums_ok(path):
            return path
    return None


def _checksums_ok(path: str) -> bool:
    """Whether the CRC-32 checksums of a ``torch.save`` zip archive verify (reads the whole file)."""
    import zipfile

    if os.path.isdir(path):
        if not _shards_complete(path):
            logger.warning("Skipped the sharded checkpoint %s: shard files that its metadata names are missing or "
                           "short (an interrupted copy or upload).", path)
            return False
        path = os.path.join(path, SHARDED_LOOP_STATE_FILE)
    if not zipfile.is_zipfile(path):
        return True  # the legacy format carries no checksum; it loaded in inspect_checkpoint
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError):
        bad = "?"
    if bad is not None:
        logger.warning("Skipped the checkpoint %s: it fails its CRC-32 checksums (damaged after it was written).",
                       path)
        return False
    return True


def _shards_complete(path: str) -> bool:
    """Whether every shard file named by a sharded checkpoint folder's DCP metadata is there, long enough."""
    try:
        from torch.distributed.checkpoint import FileSystemReader

        storage = FileSystemReader(path).read_metadata().storage_data or {}
    except Exception:  # pylint: disable=broad-except  # no or unreadable .metadata
        return False
    ends: Dict[str, int] = {}
    for info in storage.values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    return all(os.path.isfile(os.path.join(path, name)) and os.path.getsize(os.path.join(path, name)) >= end
               for name, end in ends.items())


# ---------------------------------------------------------------------- the bucket as a fallback
#: this aitoolbox's checkpoint names: kind and the number in the name (epochs or batches done)
_CHECKPOINT_NAME = re.compile(r"^model_(epoch|iteration|crash_iteration)_(\d+)\.pt$")


def fetch_latest_cloud_checkpoint(uri: str, folder: Union[str, os.PathLike]) -> Optional[str]:
    """Download the newest complete checkpoint of a ``checkpoint_model/`` folder in a bucket.

    The fallback of :func:`find_latest_checkpoint` on a machine whose local folder holds no
    checkpoint. ``uri`` is the folder's bucket URI (``s3://bucket/<prefix>/<project>/
    <experiment>_<timestamp>/checkpoint_model``, or ``gs://...``). The ``*.pt`` objects are
    ranked as the local lookup ranks files, from what the bucket says without a download: the
    ``checkpoints.json`` the run uploaded (batches done, kind, exact resume point), else the file
    name and upload time. They are downloaded one at a time (atomically) into ``folder`` and
    checked as the local lookup checks a file: it loads and its CRC-32 checksums verify. One that
    fails is deleted again (with a warning) and the next is tried; an exact resume point is
    preferred to a crash checkpoint flagged as not exact. A sharded (``gpu_mode='fsdp'``)
    checkpoint folder is downloaded object by object into ``<name>.partial`` and renamed into
    place; it passes when its loop state loads and verifies and every shard file that its
    metadata names is there (an upload cut short fails this).

    Args:
        uri: the bucket URI of a ``checkpoint_model/`` folder.
        folder: the local folder that receives the checkpoint (created when needed).

    Returns:
        The local path of the downloaded checkpoint; None when the bucket holds none that passes.

    Raises:
        ValueError: ``uri`` is not an ``s3://`` or ``gs://`` URI.
    """
    from aitoolbox.cloud.backends import backend_for_uri

    cloud = backend_for_uri(uri)
    if cloud is None:
        raise ValueError(f"uri must be an s3:// or gs:// URI of a checkpoint_model/ folder, got {uri!r}.")
    bucket, prefix = cloud.parse_uri(uri)
    prefix = prefix.rstrip("/")
    folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
    fallback = None
    for name, parts in _ranked_cloud_checkpoints(cloud, bucket, prefix):
        path = _download_checkpoint(cloud, bucket, parts, os.path.join(folder, name))
        info = inspect_checkpoint(path)
        if info is None or not _checksums_ok(path):
            logger.warning("Skipped the checkpoint %s in the bucket: it does not load or fails its checksums.",
                           cloud.uri(bucket, f"{prefix}/{name}"))
            _remove(path)
        elif info["exact"]:
            if fallback is not None:
                _remove(fallback)
            return path
        elif fallback is None:
            fallback = path  # not exact: used only when no exact one passes
        else:
            _remove(path)
    return fallback


def _download_checkpoint(cloud, bucket: str, parts: List[tuple], path: str) -> str:
    """Download a checkpoint file (``parts`` = ``[("", key)]``) or a sharded folder (``[(relative path, key)]``)."""
    import shutil

    os.makedirs(os.path.dirname(path), exist_ok=True)
    if len(parts) == 1 and parts[0][0] == "":
        cloud.download_file(bucket, parts[0][1], path)
        return path
    partial = f"{path}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    for relative, key in parts:
        target = os.path.join(partial, *relative.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        cloud.download_file(bucket, key, target)
    _remove(path)
    os.replace(partial, path)
    return path


def _remove(path: str) -> None:
    import shutil

    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def _ranked_cloud_checkpoints(cloud, bucket: str, prefix: str) -> List[tuple]:
    """``(name, parts)`` of the checkpoints under ``prefix/``, the likely resume point first.

    ``parts``: ``[("", key)]`` for a checkpoint file, ``[(path inside the folder, key), ...]`` for
    a sharded checkpoint folder (its loop state's upload time stands for the folder's).
    """
    objects = {key[len(prefix) + 1:]: (key, mtime) for key, mtime in cloud.list_objects(bucket, prefix + "/")}
    folders: Dict[str, List[tuple]] = {}
    for relative, (key, _) in objects.items():
        top, _, inside = relative.partition("/")
        if inside and top.endswith(".pt") and not top.endswith(".partial"):
            folders.setdefault(top, []).append((inside, key))
    for top in list(folders):
        loop_state = objects.get(f"{top}/{SHARDED_LOOP_STATE_FILE}")
        if loop_state is None:
            del folders[top]  # not (yet) a complete sharded checkpoint
        else:
            objects[top] = (None, loop_state[1])
    described = {entry["file"]: entry for entry in _cloud_manifest(cloud, bucket, objects.get(MANIFEST_FILE))}

    def rank(name: str) -> tuple:
        entry = described.get(name, {})
        match = _CHECKPOINT_NAME.match(name)
        kind = entry.get("kind") or (match.group(1).replace("crash_iteration", "crash") if match else "epoch")
        total = entry.get("total_iteration")
        if not isinstance(total, int) and match and kind != "epoch":
            total = int(match.group(2))  # the batches done are in the name; epochs done are not
        exact = bool(entry.get("exact_resume", kind != "crash"))
        return exact, isinstance(total, int), total if isinstance(total, int) else 0, KIND_ORDER.get(kind, 0), \
            objects[name][1]

    names = [name for name in objects if name.endswith(".pt") and "/" not in name]
    return [(name, sorted(folders[name]) if name in folders else [("", objects[name][0])])
            for name in sorted(names, key=rank, reverse=True)]


def _cloud_manifest(cloud, bucket: str, manifest: Optional[tuple]) -> List[Dict[str, Any]]:
    """The entries of a ``checkpoints.json`` in the bucket (``(key, mtime)``); none when absent or unreadable."""
    import tempfile

    if manifest is None:
        return []
    with tempfile.TemporaryDirectory() as tmp_dir:
        try:
            cloud.download_file(bucket, manifest[0], os.path.join(tmp_dir, MANIFEST_FILE))
        except Exception as error:  # ranking then falls back on the names
            logger.warning("Could not read %s: %s", cloud.uri(bucket, manifest[0]), error)
            return []
        found = read_manifest(tmp_dir)
    return found["checkpoints"] if found else []


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
