"""Folder and archive helpers (the original aitoolbox's ``aitoolbox.utils.file_system``)."""
from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from typing import List, Sequence, Tuple


def create_folder_hierarchy(base_folder_path: str, folder_names: Sequence[str]) -> Tuple[str, List[str]]:
    """Create ``base/f1/f2/...`` (existing folders are kept).

    Args:
        base_folder_path: an existing folder.
        folder_names: names of the folders, each inside the previous one.

    Returns:
        The deepest folder's path and the list of every path from the base down to it.

    Raises:
        ValueError: ``base_folder_path`` does not exist.
    """
    if not os.path.exists(base_folder_path):
        raise ValueError(f"base_folder_path does not exist: {base_folder_path!r}. Create it first.")
    folder_path = base_folder_path
    paths = [folder_path]
    for name in folder_names:
        folder_path = os.path.join(folder_path, name)
        paths.append(folder_path)
        os.makedirs(folder_path, exist_ok=True)
    return folder_path, paths


def zip_folder(source_dir_path: str, zip_path: str) -> str:
    """Zip the contents of a folder.

    Args:
        source_dir_path: the folder to zip.
        zip_path: path of the archive, with or without the ``.zip`` extension.

    Returns:
        The archive's path (ending with ``.zip``).
    """
    if zip_path.endswith(".zip"):
        zip_path = zip_path[:-4]
    shutil.make_archive(zip_path, "zip", source_dir_path)
    return zip_path + ".zip"


def unzip_file(file_path: str, target_dir_path: str) -> None:
    """Extract a ``.zip`` or ``.tar.gz`` archive into ``target_dir_path``.

    Members that would land outside ``target_dir_path`` (absolute paths, ``..``) are refused.

    Raises:
        ValueError: another extension, or an unsafe member path.
    """
    if file_path.endswith(".zip"):
        with zipfile.ZipFile(file_path, "r") as archive:
            _check_members(archive.namelist(), target_dir_path)
            archive.extractall(target_dir_path)
    elif file_path.endswith(".tar.gz"):
        with tarfile.open(file_path, "r") as archive:
            _check_members(archive.getnames(), target_dir_path)
            archive.extractall(target_dir_path, filter="data")
    else:
        raise ValueError(f"unzip_file supports .zip and .tar.gz archives, got {file_path!r}.")


def _check_members(names: Sequence[str], target_dir_path: str) -> None:
    root = os.path.realpath(target_dir_path)
    for name in names:
        path = os.path.realpath(os.path.join(root, name))
        if path != root and not path.startswith(root + os.sep):
            raise ValueError(f"archive member {name!r} would be extracted outside {target_dir_path!r}.")
