"""Reading checkpoint files: the file a path means, its integrity, and a safe ``torch.load``.

A local folder means its newest exact checkpoint (see ``experiment/checkpoint_registry.py``), a
sharded (``gpu_mode='fsdp'``) checkpoint folder is read whole, an ``s3://`` / ``gs://`` URI is
downloaded first; a file is verified against the checksums ``torch.save`` wrote and loaded with
``weights_only=True`` only.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from typing import Optional

import torch


def is_sharded_checkpoint_folder(path: str) -> bool:
    """Whether ``path`` is a sharded (``gpu_mode='fsdp'``) checkpoint folder, not a folder of checkpoints."""
    from aitoolbox.experiment.checkpoint_registry import SHARDED_LOOP_STATE_FILE

    return os.path.isdir(path) and os.path.isfile(os.path.join(path, SHARDED_LOOP_STATE_FILE))


def resolve_checkpoint_path(path) -> str:
    """``path`` with ``~`` expanded; a local folder becomes its newest exact checkpoint.

    Raises:
        FileNotFoundError: a folder without a loadable checkpoint.
    """
    from aitoolbox.cloud.backends import backend_for_uri
    from aitoolbox.experiment.checkpoint_registry import find_latest_checkpoint

    path = os.fspath(path)
    if backend_for_uri(path) is not None:
        return path
    path = os.path.expanduser(path)
    if os.path.isdir(path) and not is_sharded_checkpoint_folder(path):
        found = find_latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"No loadable checkpoint in the folder {path!r} (nor in its checkpoint_model/).")
        return found
    return path


def read_checkpoint(path: str, map_location=None) -> dict:
    """``torch.load(path, weights_only=True)``; an ``s3://`` or ``gs://`` URI is downloaded first.

    A sharded checkpoint folder (``gpu_mode='fsdp'``) is read whole, its shards joined into full
    tensors, whatever number of ranks wrote it.
    """
    from aitoolbox.cloud.backends import backend_for_uri

    cloud = backend_for_uri(path)
    if cloud is None:
        path = os.path.expanduser(os.fspath(path))
    if cloud is None and os.path.isdir(path):
        from aitoolbox.torchtrain.train_loop.strategies.fsdp import read_sharded_checkpoint

        return read_sharded_checkpoint(path)  # a sharded (FSDP) checkpoint folder, joined here
    if cloud is None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No checkpoint file at {path!r}.")
        return safe_torch_load(path, map_location)
    bucket, key = cloud.parse_uri(path)
    with tempfile.TemporaryDirectory() as tmp_dir:
        local_path = os.path.join(tmp_dir, os.path.basename(key) or "checkpoint.pt")
        cloud.download_file(bucket, key, local_path)
        return safe_torch_load(local_path, map_location, shown_path=path)


def safe_torch_load(path: str, map_location=None, shown_path: Optional[str] = None):
    """``torch.load(path, weights_only=True)``, with a clear error for a file it refuses.

    Raises:
        ValueError: the file holds objects other than tensors, containers, numbers and strings
            (e.g. a pickled class in the hyperparameters), or is no torch file at all.
    """
    shown_path = shown_path or path
    verify_checkpoint_file(path, shown_path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # A refused class is "Unsupported global"; both torch.save formats (zip, and the legacy
        # one of torch < 1.6 that aitoolbox 1.8's older files have) can hold one.
        refused = [line.strip() for line in str(error).splitlines() if "Unsupported global" in line]
        if not zipfile.is_zipfile(path) and not refused:
            raise ValueError(f"{shown_path!r} is not a file written by torch.save ({error}).") from error
        lines = refused or [line.strip() for line in str(error).splitlines() if "Unsupported" in line]
        raise ValueError(
            f"{shown_path!r} holds objects that torch.load(weights_only=True) refuses to unpickle"
            f"{': ' + lines[0] if lines else ''}. aitoolbox loads checkpoints with weights_only=True only "
            "(no code runs from a file). If you trust the file, load it yourself with "
            "torch.load(path, weights_only=False), drop or convert the offending entries (often numpy "
            "values or objects in 'hyperparams') and save it again with torch.save.") from error
    except (KeyError, RuntimeError, EOFError) as error:
        if zipfile.is_zipfile(path):
            raise
        raise ValueError(f"{shown_path!r} is not a file written by torch.save ({type(error).__name__}: "
                         f"{error}).") from error


def verify_checkpoint_file(path: str, shown_path: Optional[str] = None) -> None:
    """Check a file before it is loaded: empty, truncated, or damaged since it was written.

    ``torch.save`` writes a zip archive with a CRC-32 checksum of every part; they are verified
    here (torch's own reader does not), so that a damaged file is refused instead of loading
    wrong numbers.

    Raises:
        ValueError: the file is empty, truncated or fails its checksums (message names it).
    """
    shown_path = shown_path or path
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(f"{shown_path!r} is empty (0 bytes): its write was interrupted. Load an older "
                         "checkpoint (find_latest_checkpoint / resume=True skip such files).")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not zipfile.is_zipfile(path):
        if magic == b"PK\x03\x04":
            raise ValueError(f"{shown_path!r} is truncated ({size} bytes; the end of the archive is missing): its "
                             "write was interrupted. Load an older checkpoint (find_latest_checkpoint / "
                             "resume=True skip such files).")
        return  # the legacy torch.save format, or no torch file (torch.load says which)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(f"{shown_path!r} is truncated or damaged ({size} bytes): {error}.") from error
    if bad is not None:
        raise ValueError(f"{shown_path!r} is corrupt: its part {bad!r} fails the CRC-32 checksum written with it "
                         "(the file changed after it was written). Load an older checkpoint "
                         "(find_latest_checkpoint / resume=True skip such files).")
