"""The experiment folder: its layout, the checks on its names, and what it holds from the start.

Layout (SPEC 4.9)::

    <root>/<project_name>/<experiment_name>_<timestamp>/
        hyperparams.json            the hyperparameters (plus a copy of a YAML / JSON source file)
        <experiment script>.py      a copy of the script that built the TrainLoop
        source_code.zip             the ``source_dirs``, zipped
        checkpoint_model/           checkpoints and their manifest ``checkpoints.json``
        model/                      the final model
        results/                    results, training history (JSON, CSV) and plots/
"""
from __future__ import annotations

import copy
import datetime
import inspect
import json
import logging
import os
import re
import unicodedata
import zipfile
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

logger = logging.getLogger("aitoolbox")

CHECKPOINT_DIR = "checkpoint_model"
MODEL_DIR = "model"
RESULTS_DIR = "results"
HYPERPARAMS_FILE = "hyperparams.json"
SOURCE_ZIP_FILE = "source_code.zip"
TIMESTAMP_FORMAT = "%Y-%m-%d_%H-%M-%S"
_SKIPPED_SOURCE_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".ipynb_checkpoints"}

PathLike = Union[str, os.PathLike]


def validate_name(value: Any, arg_name: str) -> str:
    """Check that a project / experiment name is one plain folder name.

    Args:
        value: the name.
        arg_name: the argument's name, for the error message.

    Returns:
        The name.

    Raises:
        TypeError: not a string.
        ValueError: empty, ``.`` / ``..``, absolute, or containing a path separator or NUL -
            anything that could escape the results root folder - or a control character
            (newline, tab, ...).
    """
    if not isinstance(value, str):
        raise TypeError(f"{arg_name} must be a str, got {type(value).__name__}.")
    separators = {"/", "\\", os.sep, os.altsep or "/", "\0"}
    if (not value.strip() or value in (".", "..") or os.path.isabs(value)
            or any(sep in value for sep in separators)):
        raise ValueError(f"{arg_name}={value!r} is not a plain folder name: it must be non-empty, not "
                         "'.' or '..', and contain no path separators, so that the experiment stays "
                         "inside local_model_result_folder_path.")
    control = sorted({c for c in value if unicodedata.category(c) in ("Cc", "Zl", "Zp")})
    if control:
        raise ValueError(f"{arg_name}={value!r} contains control character(s) {control} (e.g. a newline or a "
                         "tab): folder and S3 key names must be printable. Remove them (str.strip() "
                         "removes a trailing newline).")
    return value


def validate_cloud_dir_prefix(prefix: Any) -> str:
    """Check ``cloud_dir_prefix`` (an S3 key prefix) and return it without outer slashes.

    Raises:
        TypeError: not a string.
        ValueError: it has a ``.`` or ``..`` segment.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"cloud_dir_prefix must be a str, got {type(prefix).__name__}.")
    prefix = prefix.strip("/")
    if any(part in (".", "..") for part in prefix.split("/") if prefix):
        raise ValueError(f"cloud_dir_prefix={prefix!r} must not contain '.' or '..' segments.")
    return prefix


def check_writable_root(root: PathLike) -> str:
    """Make sure the results root folder exists and is writable, or can be created.

    Args:
        root: ``local_model_result_folder_path``.

    Returns:
        The absolute root path.

    Raises:
        TypeError: not a path.
        ValueError: the path (or its nearest existing parent) is not a writable folder.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"local_model_result_folder_path must be a path, got {type(root).__name__}.")
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    existing = root
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"local_model_result_folder_path={root!r} cannot be created: {existing!r} is "
                         "a file, not a folder. Pass a folder path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"local_model_result_folder_path={root!r} is not writable ({existing!r} "
                         "denies write access). Pass a folder you can write to.")
    return root


def new_timestamp() -> str:
    """The current local time as the experiment folder suffix, e.g. ``2024-05-01_13-45-12``."""
    return datetime.datetime.now().strftime(TIMESTAMP_FORMAT)


class ExperimentFolder:
    """Paths of one experiment folder; the folder is created by :meth:`create`.

    Args:
        root: the results root folder (``local_model_result_folder_path``).
        project_name: project folder name.
        experiment_name: experiment name; the folder is ``<experiment_name>_<timestamp>``.
        timestamp: the folder's timestamp; None takes the current time.

    Raises:
        TypeError, ValueError: a name or the root folder is invalid (see :func:`validate_name`,
            :func:`check_writable_root`).
    """

    def __init__(self, root: PathLike, project_name: str, experiment_name: str,
                 timestamp: Optional[str] = None):
        self.project_name = validate_name(project_name, "project_name")
        self.experiment_name = validate_name(experiment_name, "experiment_name")
        self.root = check_writable_root(root)
        self.timestamp = validate_name(timestamp or new_timestamp(), "experiment timestamp")
        self.created = False

    @property
    def name(self) -> str:
        """The folder's name: ``<experiment_name>_<timestamp>``."""
        return f"{self.experiment_name}_{self.timestamp}"

    @property
    def path(self) -> str:
        """Absolute path of the experiment folder."""
        return os.path.join(self.root, self.project_name, self.name)

    def sub_path(self, *parts: str) -> str:
        """Absolute path of ``parts`` inside the experiment folder."""
        return os.path.join(self.path, *parts)

    def relative(self, path: str) -> str:
        """``path`` relative to the experiment folder, with ``/`` separators.

        Raises:
            ValueError: ``path`` is outside the experiment folder.
        """
        rel = os.path.relpath(os.path.abspath(path), self.path)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
            raise ValueError(f"{path!r} is outside the experiment folder {self.path!r}.")
        return rel.replace(os.sep, "/")

    def create(self) -> bool:
        """Create the folder and its sub-folders; False when it existed already in this run.

        A folder of the same name left by another run (same name, same second) is not reused:
        the timestamp gets a ``_1``, ``_2``, ... suffix.
        """
        if self.created:
            return False
        base, suffix = self.timestamp, 0
        while True:
            try:
                os.makedirs(self.path, exist_ok=False)
                break
            except FileExistsError:
                suffix += 1
                self.timestamp = f"{base}_{suffix}"
        for sub in (CHECKPOINT_DIR, MODEL_DIR, RESULTS_DIR):
            os.makedirs(self.sub_path(sub), exist_ok=True)
        self.created = True
        return True

    def existing_runs(self) -> list:
        """Timestamps of the existing folders of this experiment (``<experiment_name>_<timestamp>``
        under the project folder), newest first."""
        project = os.path.join(self.root, self.project_name)
        names = [name for name in (os.listdir(project) if os.path.isdir(project) else [])
                 if os.path.isdir(os.path.join(project, name))]
        return self.runs_among(names)

    def runs_among(self, folder_names) -> list:
        """The timestamps of the folder names that are runs of this experiment
        (``<experiment_name>_<timestamp>[_<n>]``), newest first, each once."""
        pattern = re.compile(re.escape(self.experiment_name) + r"_(\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)(?:_(\d+))?$")
        found = set()
        for name in folder_names:
            match = pattern.match(name)
            if match:
                found.add(((match.group(1), int(match.group(2) or 0)), name[len(self.experiment_name) + 1:]))
        return [timestamp for _, timestamp in sorted(found, reverse=True)]

    def reuse(self, timestamp: str) -> str:
        """Make this the existing folder ``<experiment_name>_<timestamp>`` (resuming a run): files are
        written into it, nothing of it is re-created. Returns its path."""
        self.timestamp = validate_name(timestamp, "experiment timestamp")
        for sub in (CHECKPOINT_DIR, MODEL_DIR, RESULTS_DIR):
            os.makedirs(self.sub_path(sub), exist_ok=True)
        self.created = True
        return self.path

    def __repr__(self) -> str:
        return f"ExperimentFolder({self.path!r})"

    # ------------------------------------------------------------------ aitoolbox 1.8 helpers
    @staticmethod
    def get_base_folder_paths(project_name: str, experiment_name: str, experiment_timestamp: str,
                              local_model_result_folder_path: PathLike) -> Tuple[str, str]:
        """The project folder and the experiment folder paths, without creating them.

        Args:
            project_name: project folder name.
            experiment_name: experiment name.
            experiment_timestamp: the experiment folder's timestamp.
            local_model_result_folder_path: the results root folder (``~`` is expanded).

        Returns:
            ``(project_folder_path, experiment_folder_path)``, joined as ``os.path.join`` does
            (the names are checked by :meth:`create_base_folder`, not here).
        """
        project_path = os.path.join(os.path.expanduser(os.fspath(local_model_result_folder_path)), project_name)
        return project_path, os.path.join(project_path, f"{experiment_name}_{experiment_timestamp}")

    @staticmethod
    def create_base_folder(project_name: str, experiment_name: str, experiment_timestamp: str,
                           local_model_result_folder_path: PathLike) -> str:
        """Create (or reuse) the experiment folder ``<root>/<project>/<experiment>_<timestamp>``.

        Unlike :meth:`create`, an existing folder of that name is reused: this is how the
        aitoolbox 1.8 savers put the model and the results of one experiment side by side.

        Returns:
            The experiment folder's path.

        Raises:
            TypeError, ValueError: a name that is not one plain folder name, or a root folder that
                cannot be written.
        """
        validate_name(project_name, "project_name")
        validate_name(experiment_name, "experiment_name")
        validate_name(experiment_timestamp, "experiment_timestamp")
        check_writable_root(os.path.expanduser(os.fspath(local_model_result_folder_path)))
        _, experiment_path = ExperimentFolder.get_base_folder_paths(
            project_name, experiment_name, experiment_timestamp, local_model_result_folder_path)
        os.makedirs(experiment_path, exist_ok=True)
        return experiment_path


def load_hyperparams(hyperparams: Union[dict, PathLike]) -> Tuple[Dict[str, Any], Optional[str]]:
    """The hyperparameters as a fresh dict, and the file they came from (or None).

    The caller's dict is copied (deeply where possible), so nothing done with the result can
    change it.

    Args:
        hyperparams: a dict, or the path of a ``.yaml`` / ``.yml`` / ``.json`` file holding one.

    Returns:
        ``(hyperparams_dict, source_file_path_or_None)``.

    Raises:
        TypeError: neither a dict nor a path, or the file does not hold a mapping.
        ValueError: the file does not exist or has an unknown extension.
    """
    if isinstance(hyperparams, dict):
        return _copy_dict(hyperparams), None
    if not isinstance(hyperparams, (str, os.PathLike)):
        raise TypeError("hyperparams must be a dict or the path of a YAML / JSON file, got "
                        f"{type(hyperparams).__name__}.")
    path = os.path.abspath(os.fspath(hyperparams))
    if not os.path.isfile(path):
        raise ValueError(f"hyperparams file {path!r} does not exist.")
    loaded = _read_hyperparams_file(path)
    if not isinstance(loaded, dict):
        raise TypeError(f"hyperparams file {path!r} must hold a mapping, got {type(loaded).__name__}.")
    return loaded, path


def _copy_dict(values: dict) -> dict:
    try:
        return copy.deepcopy(values)
    except Exception:  # objects that cannot be deep-copied are kept by reference
        return dict(values)


def _read_hyperparams_file(path: str) -> Any:
    extension = os.path.splitext(path)[1].lower()
    with open(path, encoding="utf-8") as f:
        if extension == ".json":
            return json.load(f)
        if extension in (".yaml", ".yml"):
            import yaml  # optional dependency: only needed for YAML hyperparameter files
            return yaml.safe_load(f)
    raise ValueError(f"hyperparams file {path!r} must end in .yaml, .yml or .json.")


def find_experiment_script(hyperparams: Dict[str, Any]) -> Optional[str]:
    """The experiment script to copy: ``hyperparams['experiment_file_path']`` or the caller's file.

    The caller is the first frame on the stack outside the ``aitoolbox`` package, i.e. the script
    (or test) that built the TrainLoop or callback.
    """
    given = hyperparams.get("experiment_file_path")
    if given:
        return os.path.abspath(os.fspath(given))
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for frame_info in inspect.stack(context=0)[1:]:
        filename = os.path.abspath(frame_info.filename)
        if not filename.startswith(package_dir + os.sep) and os.path.isfile(filename):
            return filename
    return None


def iter_source_files(source_dirs: Sequence[PathLike]) -> Iterator[Tuple[str, str]]:
    """``(file path, name in the zip)`` for every file under ``source_dirs``.

    Each folder is stored under its own base name; caches and VCS folders are skipped.
    """
    for source_dir in source_dirs:
        source_dir = os.path.abspath(os.fspath(source_dir))
        base = os.path.basename(source_dir.rstrip(os.sep))
        for folder, sub_dirs, files in os.walk(source_dir):
            sub_dirs[:] = sorted(d for d in sub_dirs if d not in _SKIPPED_SOURCE_DIRS)
            for file_name in sorted(files):
                path = os.path.join(folder, file_name)
                yield path, os.path.join(base, os.path.relpath(path, source_dir)).replace(os.sep, "/")


def validate_source_dirs(source_dirs: Any) -> Tuple[str, ...]:
    """Check ``source_dirs``: a sequence of existing folders (a single path is accepted too).

    Raises:
        TypeError: not a path or sequence of paths.
        ValueError: a path that is not a folder.
    """
    if isinstance(source_dirs, (str, os.PathLike)):
        source_dirs = (source_dirs,)
    if not isinstance(source_dirs, (list, tuple)):
        raise TypeError(f"source_dirs must be a list or tuple of folders, got {type(source_dirs).__name__}.")
    for source_dir in source_dirs:
        if not isinstance(source_dir, (str, os.PathLike)) or not os.path.isdir(source_dir):
            raise ValueError(f"source_dirs entry {source_dir!r} is not an existing folder.")
    return tuple(os.fspath(d) for d in source_dirs)


def write_source_zip(source_dirs: Sequence[PathLike], zip_path: str) -> None:
    """Zip every file of ``source_dirs`` into ``zip_path``."""
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path, arc_name in iter_source_files(source_dirs):
            archive.write(path, arc_name)
