"""Atomic file writing: a crash or kill mid-write never leaves a truncated file behind."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any, Iterator

import torch


@contextlib.contextmanager
def atomic_write_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed to ``path``.

    On an exception the temporary file is removed and ``path`` keeps its previous content.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    except OSError as error:
        raise FileWriteError(path, error) from error
    os.close(fd)
    try:
        apply_umask(tmp_path)
        yield tmp_path  # the caller's errors propagate as they are (see atomic_torch_save)
        try:
            with open(tmp_path, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp_path, path)
        except OSError as error:
            raise FileWriteError(path, error) from error
        _fsync_dir(folder)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


class FileWriteError(OSError):
    """A file could not be written; the file at ``path`` (if any) is unchanged.

    The message names the path and the cause (e.g. "no space left on the device, 12 kB free").
    """

    def __init__(self, path: str, error: BaseException):
        self.path = path
        super().__init__(getattr(error, "errno", None), f"Could not write {path}: {_write_failure_cause(path, error)}. "
                         "The previous file at that path, if any, is unchanged.")

    def __str__(self) -> str:
        return self.strerror


def _write_failure_cause(path: str, error: BaseException) -> str:
    import errno
    import shutil

    if isinstance(error, PermissionError):
        return f"permission denied ({error})"
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    except OSError:
        free = None
    if getattr(error, "errno", None) == errno.ENOSPC or (free is not None and free < 1 << 20):
        return f"no space left on the device ({free // 1024 if free is not None else '?'} kB free)"
    return f"{type(error).__name__}: {error}"


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_torch_save(obj: Any, path: str) -> str:
    """``torch.save(obj, path)`` atomically; returns ``path``.

    Raises:
        FileWriteError: the file could not be written (names the path and the cause).
    """
    with atomic_write_path(path) as tmp_path:
        try:
            torch.save(obj, tmp_path)
        except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
            raise FileWriteError(path, error) from error
    return path


def atomic_write_text(text: str, path: str) -> str:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_write_path(path) as tmp_path:
        with open(tmp_path, "w", encoding="utf-8") as f:
            f.write(text)
    return path


def apply_umask(path: str) -> None:
    """Give a ``mkstemp`` file (always mode 0600) the permissions a plain ``open`` would give it
    under the process's umask, so that written files are as readable as the user expects."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
