"""Weights & Biases: a run's config, metrics with steps and artifacts.

``wandb`` is an optional dependency (``pip install "aitoolbox[wandb]"``), imported at
:meth:`WandBLogger.setup`. No account is needed offline: ``mode='offline'`` (or
``WANDB_MODE=offline``) writes the run to ``<dir>/wandb/offline-run-*`` for a later ``wandb sync``.
aitoolbox 1.8's ``WandBTracking`` callback logs through this class.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

from aitoolbox.experiment.loggers.base import ExperimentLogger
from aitoolbox.utils.optional import import_optional


def import_wandb(feature: str = "WandBLogger"):
    """The ``wandb`` module, or an ImportError naming ``pip install "aitoolbox[wandb]"``."""
    return import_optional("wandb", "wandb", feature)


class WandBLogger(ExperimentLogger):
    """Log to a Weights & Biases run.

    Args:
        project: the W&B project; None: the experiment's project folder name, else wandb's default.
        name: the run's display name.
        save_dir: where wandb writes its run directory; None: the experiment folder (when there is
            one), else wandb's default (``WANDB_DIR`` / the working directory).
        run: an existing run (``wandb.init`` called by the script) to log into; it is not finished
            by :meth:`finalize`.
        **init_kwargs: further arguments of ``wandb.init`` (``mode='offline'``, ``config``,
            ``tags``, ``entity``, ``save_code`` ...).

    Attributes:
        run: the wandb run (after :meth:`setup`).
    """

    name = "W&B"

    def __init__(self, project: Optional[str] = None, name: Optional[str] = None, save_dir: Optional[str] = None,
                 run=None, **init_kwargs):
        self.project, self.run_name = project, name
        self.save_dir = None if save_dir is None else os.path.expanduser(os.fspath(save_dir))
        self.run = run
        self._owns_run = run is None
        self.init_kwargs = init_kwargs

    def setup(self, experiment_dir: Optional[str]) -> None:
        wandb = import_wandb(type(self).__name__)
        if self.run is not None:
            return
        folder = self.save_dir or experiment_dir
        if folder is not None:
            os.makedirs(folder, exist_ok=True)
        project = self.project
        if project is None and experiment_dir is not None:
            project = os.path.basename(os.path.dirname(os.path.abspath(experiment_dir)))
        self.run = wandb.init(project=project, name=self.run_name, dir=folder, **self.init_kwargs)

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        self.run.config.update(dict(params), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def log_steps(self, names: Sequence[str], steps: Sequence[int], wall_times: Sequence[float],
                  rows: Sequence[Sequence[Optional[float]]]) -> None:
        log = self.run.log
        for step, row in zip(steps, rows):
            log({n: v for n, v in zip(names, row) if v is not None}, step=step)

    def log_artifact(self, path: str, name: Optional[str] = None) -> None:
        wandb = import_wandb(type(self).__name__)
        artifact_name = name or "".join(c if c.isalnum() or c in "-_." else "_" for c in os.path.basename(path))
        artifact = wandb.Artifact(artifact_name, type="experiment")
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                if root == path and "wandb" in dirs:
                    dirs.remove("wandb")  # wandb's own (live) run directory
                for file_name in files:
                    full = os.path.join(root, file_name)
                    artifact.add_file(full, name=os.path.relpath(full, path))
        else:
            artifact.add_file(path)
        self.run.log_artifact(artifact)

    def finalize(self, status: str = "success") -> None:
        if self.run is not None and self._owns_run:
            self.run.finish(exit_code=0 if status == "success" else 1)


__all__ = ["WandBLogger", "import_wandb"]
