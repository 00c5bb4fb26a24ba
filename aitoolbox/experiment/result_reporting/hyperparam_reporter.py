"""``HyperParamSourceReporter``: the hyperparameters as a text file, the experiment script and the
source folders, saved into an experiment folder (and, on request, to the cloud)."""
from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Dict, Optional

from aitoolbox.experiment import experiment_folder as ef
from aitoolbox.utils.io import atomic_write_path, atomic_write_text

logger = logging.getLogger("aitoolbox")


class HyperParamSourceReporter:
    """Write the hyperparameters into ``<root>/<project>/<experiment>_<timestamp>/hyperparams_list.txt``.

    The experiment folder is created at construction.

    Args:
        project_name: project folder name.
        experiment_name: experiment name.
        experiment_timestamp: the timestamp part of the experiment folder's name.
        local_model_result_folder_path: the results root folder.

    Attributes:
        experiment_dir_path: the experiment folder.
        file_name: ``'hyperparams_list.txt'``.
        local_hyperparams_file_path: the text file's path.
    """

    def __init__(self, project_name: str, experiment_name: str, experiment_timestamp: str,
                 local_model_result_folder_path: str):
        self.project_name = project_name
        self.experiment_name = experiment_name
        self.experiment_timestamp = experiment_timestamp
        self.local_model_result_folder_path = os.path.expanduser(os.fspath(local_model_result_folder_path))
        folder = ef.ExperimentFolder(self.local_model_result_folder_path, project_name, experiment_name,
                                     timestamp=experiment_timestamp)
        self.experiment_dir_path = folder.path
        os.makedirs(self.experiment_dir_path, exist_ok=True)
        self.file_name = "hyperparams_list.txt"
        self.local_hyperparams_file_path = os.path.join(self.experiment_dir_path, self.file_name)

    def save_hyperparams_to_text_file(self, hyperparams: Dict[str, Any], sort_names: bool = False) -> str:
        """Write one ``name:<TAB>value`` line per hyperparameter (atomically); returns the file's path."""
        names = sorted(hyperparams) if sort_names else list(hyperparams)
        text = "".join(f"{name}:\t{hyperparams[name]}\n" for name in names)
        return atomic_write_text(text, self.local_hyperparams_file_path)

    def copy_to_cloud_storage(self, local_hyperparams_file_path: str, cloud_saver: Any,
                              file_name: Optional[str] = None) -> str:
        """Upload the file next to the experiment's cloud results folder with ``cloud_saver``.

        Args:
            local_hyperparams_file_path: the local file.
            cloud_saver: a results / model saver of ``aitoolbox.cloud`` (anything with
                ``create_experiment_cloud_storage_folder_structure`` and ``save_file``).
            file_name: name in the cloud; None: :attr:`file_name`.

        Returns:
            The file's path in the bucket.
        """
        results_path = cloud_saver.create_experiment_cloud_storage_folder_structure(
            self.project_name, self.experiment_name, self.experiment_timestamp)
        cloud_file_path = f"{results_path.rsplit('/', 1)[0]}/{file_name or self.file_name}"
        cloud_saver.save_file(local_hyperparams_file_path, cloud_file_path)
        return cloud_file_path

    def save_experiment_python_file(self, hyperparams: Dict[str, Any]) -> Optional[str]:
        """Copy ``hyperparams['experiment_file_path']`` into the experiment folder.

        Returns:
            The copy's path, or None (logged) when the key is missing or the file does not exist.
        """
        source = hyperparams.get("experiment_file_path")
        if source is None:
            logger.warning("hyperparams has no 'experiment_file_path': the experiment script is not copied.")
            return None
        destination = os.path.join(self.experiment_dir_path, os.path.basename(source))
        try:
            with atomic_write_path(destination) as tmp_path:
                shutil.copyfile(source, tmp_path)
        except FileNotFoundError:
            logger.warning("experiment_file_path %s does not exist (in a notebook, set it by hand): the "
                           "experiment script is not copied.", source)
            return None
        return destination

    def save_experiment_source_files(self, hyperparams: Dict[str, Any]) -> Optional[str]:
        """Zip the folders of ``hyperparams['source_dirs_paths']`` into ``source_code.zip``.

        Returns:
            The zip's path, or None when there are no source folders.
        """
        source_dirs = hyperparams.get("source_dirs_paths")
        if not isinstance(source_dirs, (list, tuple)) or not source_dirs:
            return None
        source_dirs = ef.validate_source_dirs([os.path.expanduser(d) for d in source_dirs])
        zip_path = os.path.join(self.experiment_dir_path, ef.SOURCE_ZIP_FILE)
        with atomic_write_path(zip_path) as tmp_path:
            ef.write_source_zip(source_dirs, tmp_path)
        return zip_path


__all__ = ["HyperParamSourceReporter"]
