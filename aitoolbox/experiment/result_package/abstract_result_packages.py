"""Result packages: named bundles of evaluation results for one experiment."""

import copy
import logging
import math
import numbers
import shutil
from abc import ABC, abstractmethod
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from aitoolbox.experiment.core_metrics.abstract_metric import (
    ArrayLike,
    check_prediction_inputs,
    to_numpy,
)

logger = logging.getLogger(__name__)

ResultValue = Union[float, Dict[str, float]]
ResultsDict = Dict[str, ResultValue]


def _plain_value(name: str, value: Any, problems: List[str]) -> Any:
    """Turn numpy numbers into python ones (ints stay ints), recording what is wrong with a value."""
    if isinstance(value, dict):
        return {str(k): _plain_value(f"{name}.{k}", v, problems) for k, v in value.items()}
    if isinstance(value, (np.ndarray, np.generic)) and value.size == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        problems.append(f"result {name!r} is not a number: {value!r}")
        return value
    if not math.isfinite(float(value)):
        problems.append(f"result {name!r} is not finite: {value!r}")
    return value if isinstance(value, int) else float(value)


def clean_results(results: Dict[str, Any], strict: bool, pkg_name: str) -> ResultsDict:
    """Convert result values to python floats and check them.

    Args:
        results: Mapping of result name to a number or a dict of numbers.
        strict: If True, problems raise; otherwise they are logged as warnings.
        pkg_name: Package name used in messages.

    Returns:
        A new dict with every numpy number turned into a python int or float.

    Raises:
        ValueError: If ``strict`` is True and the results are empty, have
            non-string keys, or hold non-numeric or non-finite values.
        TypeError: If ``results`` is not a dict.
    """
    if not isinstance(results, dict):
        raise TypeError(f"{pkg_name}: results must be a dict, got {type(results).__name__}")
    problems = [] if results else ["results dict is empty"]
    problems += [f"result name {k!r} is not a string" for k in results if not isinstance(k, str)]
    cleaned = {k: _plain_value(str(k), v, problems) for k, v in results.items()}
    if problems:
        message = f"{pkg_name}: " + "; ".join(problems)
        if strict:
            raise ValueError(message)
        logger.warning(message)
    return cleaned


def merge_results(results_list: Sequence[ResultsDict]) -> ResultsDict:
    """Merge several results dicts into one.

    Args:
        results_list: Results dicts to merge, in order.

    Returns:
        One dict holding every entry.

    Raises:
        ValueError: If the same result name appears in more than one dict.
    """
    merged: ResultsDict = {}
    for results in results_list:
        for key, value in results.items():
            if key in merged:
                raise ValueError(
                    f"Duplicate result name {key!r}: combined results must have distinct names"
                )
            merged[key] = value
    return merged


class ResultPackageAdditionError(TypeError, ValueError):
    """A result package was added to something that is neither a package nor a dict.

    A ``TypeError`` that is also a ``ValueError`` (the error the original aitoolbox raised).
    """


DumpPaths = Optional[List[List[str]]]


class AbstractResultPackage(ABC):
    """Base class of result packages.

    Call :meth:`prepare_result_package` with the ground truth and predictions;
    the subclass's :meth:`prepare_results_dict` then computes the results.

    A prepared package behaves like its results dict: ``name in pkg``,
    ``pkg[name]``, ``len(pkg)``. ``pkg + other`` (another package or a results
    dict, either side) returns a new :class:`MultipleResultPackageWrapper`
    holding copies of both, its results nested per package name;
    ``pkg += other`` merges the other's results into this package in place
    (a clashing result name raises ValueError).

    Subclasses may override :meth:`list_additional_results_dump_paths` to name
    extra files they wrote (``[[file_name, local_path], ...]``): the experiment
    savers copy them into the experiment's ``results/`` folder, and
    :meth:`set_experiment_dir_path_for_additional_results` to learn the
    experiment folder before training.

    Args:
        pkg_name: Name of the package; defaults to the class name.
        strict_content_check: If True, problems (results missing, empty,
            non-numeric or non-finite) raise ValueError; otherwise they are
            logged as warnings.
        np_array: True: inputs are converted to numpy arrays and checked;
            False: kept as given; ``'auto'``: converted when all rows have one length.
        **kwargs: Package metadata, kept in ``package_metadata``.
    """

    def __init__(
        self,
        pkg_name: Optional[str] = None,
        strict_content_check: bool = False,
        np_array: Union[bool, str] = True,
        **kwargs: Any,
    ) -> None:
        self.pkg_name = pkg_name if pkg_name is not None else type(self).__name__
        self.strict_content_check = strict_content_check
        self.np_array = np_array
        self.y_true: Any = None
        self.y_predicted: Any = None
        self.hyperparameters: Optional[Dict[str, Any]] = None
        self.additional_results: Optional[Dict[str, Any]] = None
        self.additional_results_dump_paths: DumpPaths = None
        self.results_dict: Optional[ResultsDict] = None
        self.requires_loss = False
        self.package_metadata: Dict[str, Any] = kwargs

    def prepare_result_package(
        self,
        y_true: ArrayLike,
        y_predicted: ArrayLike,
        hyperparameters: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        """Store the inputs and compute the results.

        Args:
            y_true: Ground truth values.
            y_predicted: Predicted values.
            hyperparameters: Experiment hyperparameters to keep with the results.
            **kwargs: Extra outputs to keep with the results, in ``additional_results``.

        Raises:
            ValueError: If the inputs are empty or of different lengths (when
                ``np_array`` is True), or the results fail the strict check.
        """
        if self.np_array == "auto":
            y_true, y_predicted = _auto_array(y_true), _auto_array(y_predicted)
        elif self.np_array:
            y_true, y_predicted = to_numpy(y_true), to_numpy(y_predicted)
            check_prediction_inputs(y_true, y_predicted)
        self.y_true, self.y_predicted = y_true, y_predicted
        self.hyperparameters = hyperparameters
        self.additional_results = kwargs
        self.results_dict = None
        results = self.prepare_results_dict()
        self.results_dict = clean_results(results, self.strict_content_check, self.pkg_name)
        logger.debug("%s prepared: %s", self.pkg_name, list(self.results_dict))

    @abstractmethod
    def prepare_results_dict(self) -> ResultsDict:
        """Compute the results from ``self.y_true`` and ``self.y_predicted``.

        Returns:
            A dict mapping result names to numbers or dicts of numbers.
        """

    @staticmethod
    def auto_y_input_array_convert(y_array: Any) -> Any:
        """Return ``y_array`` as a numpy array when all its rows have one length, else unchanged."""
        return _auto_array(y_array)

    def get_results(self) -> Optional[ResultsDict]:
        """Return the computed results.

        Returns:
            A copy of the results dict; None (with a warning) before
            :meth:`prepare_result_package` has run.

        Raises:
            ValueError: Before preparation, if ``strict_content_check`` is True.
        """
        if self.results_dict is None:
            self.warn_about_result_data_problem(
                f"Result package {self.pkg_name!r} has no results yet: call prepare_result_package() first"
            )
            return None
        return dict(self.results_dict)

    def get_hyperparameters(self) -> Optional[Dict[str, Any]]:
        """Return the hyperparameters given when preparing the package.

        Returns:
            The hyperparameters dict, or None if none were given.
        """
        return self.hyperparameters

    def qa_check_hyperparameters_dict(self) -> None:
        """Warn (or raise, if strict) when the hyperparameters, or their script paths, are missing.

        Raises:
            ValueError: On a problem, if ``strict_content_check`` is True.
        """
        if self.hyperparameters is None:
            self.warn_about_result_data_problem("Hyperparameters missing: pass hyperparameters=...")
            return
        for key in ("bash_script_path", "experiment_file_path"):
            if self.hyperparameters.get(key) is None:
                self.warn_about_result_data_problem(f"{key} missing from the hyperparameters dict")

    def list_additional_results_dump_paths(self) -> DumpPaths:
        """Name extra files this package wrote, to be saved with the experiment's results.

        Override it in a package that writes files (plots, text dumps; zip a
        folder with :meth:`zip_additional_results_dump`).

        Returns:
            None (no files), or ``[[file_name, local_file_path], ...]``.
        """
        return None

    def get_additional_results_dump_paths(self) -> DumpPaths:
        """Return the checked :meth:`list_additional_results_dump_paths`.

        Returns:
            None, or ``[[file_name, local_file_path], ...]``.

        Raises:
            ValueError: If the paths are not a list of ``[str, str]`` pairs.
        """
        self.additional_results_dump_paths = self.list_additional_results_dump_paths()
        self.qa_check_additional_results_dump_paths()
        return self.additional_results_dump_paths

    def qa_check_additional_results_dump_paths(self) -> None:
        """Check that the dump paths are None or a list of ``[file_name, local_path]`` string pairs.

        Raises:
            ValueError: Naming the offending element.
        """
        paths = self.additional_results_dump_paths
        if paths is None:
            return
        if not isinstance(paths, list):
            raise ValueError(f"{self.pkg_name}: additional results dump paths must be a list of "
                             f"[file_name, local_path] pairs, got {paths!r}")
        for element in paths:
            if not (isinstance(element, list) and len(element) == 2
                    and all(isinstance(part, str) for part in element)):
                raise ValueError(f"{self.pkg_name}: each additional results dump path must be a "
                                 f"[file_name, local_path] list of two strings, got {element!r}")

    def set_experiment_dir_path_for_additional_results(
        self, project_name: str, experiment_name: str, experiment_timestamp: str,
        local_model_result_folder_path: str,
    ) -> None:
        """Learn the experiment folder (called at registration); override to place extra files in it."""

    def warn_about_result_data_problem(self, msg: str) -> None:
        """Log ``msg`` as a warning, or raise it if ``strict_content_check`` is True.

        Raises:
            ValueError: If ``strict_content_check`` is True.
        """
        if self.strict_content_check:
            raise ValueError(msg)
        logger.warning(msg)

    def warn_if_results_dict_not_defined(self) -> None:
        """Raise unless the package is prepared.

        Raises:
            ValueError: If :meth:`prepare_result_package` has not run.
        """
        if self.results_dict is None:
            raise ValueError(f"Result package {self.pkg_name!r} has no results yet: "
                             "call prepare_result_package() first")

    @staticmethod
    def zip_additional_results_dump(source_dir_path: str, zip_path: str) -> str:
        """Zip a folder into ``<zip_path>.zip`` and return the zip file's path."""
        return shutil.make_archive(zip_path, "zip", source_dir_path)

    def list_result_names(self) -> List[str]:
        """Return the names of the computed results.

        Raises:
            ValueError: If the package has not been prepared yet.
        """
        self.warn_if_results_dict_not_defined()
        return list(self.results_dict)

    def __str__(self) -> str:
        """One ``name: value`` line per result (a note when not prepared)."""
        if self.results_dict is None:
            return f"{self.pkg_name}: (not prepared)"
        return "\n".join(f"{name}: {value}" for name, value in self.results_dict.items())

    def __len__(self) -> int:
        """The number of results (0 when not prepared)."""
        return 0 if self.results_dict is None else len(self.results_dict)

    def __contains__(self, item: Any) -> bool:
        """Whether ``item`` is a result name.

        Raises:
            ValueError: If the package is not prepared.
        """
        self.warn_if_results_dict_not_defined()
        return item in self.results_dict

    def __getitem__(self, item: str) -> Any:
        """The result named ``item``.

        Raises:
            ValueError: If the package is not prepared.
            KeyError: If there is no such result.
        """
        self.warn_if_results_dict_not_defined()
        if item not in self.results_dict:
            raise KeyError(f"No result {item!r} in {self.pkg_name}; it has {list(self.results_dict)}")
        return self.results_dict[item]

    def __add__(self, other: Any) -> "MultipleResultPackageWrapper":
        """Combine copies of this package and ``other`` (a package or a results dict) into a wrapper.

        Raises:
            ValueError: If either side is not prepared.
            ResultPackageAdditionError: If ``other`` is neither a package nor a dict.
        """
        self.warn_if_results_dict_not_defined()
        other_package = _as_package(other)
        wrapper = MultipleResultPackageWrapper()
        mine = copy.deepcopy(self)
        wrapper.prepare_result_package([mine, other_package], mine.hyperparameters)
        return wrapper

    def __radd__(self, other: Any) -> "AbstractResultPackage":
        """``dict + package``; also ``sum()`` over packages (whose start value is 0)."""
        if isinstance(other, numbers.Number) and not isinstance(other, bool) and other == 0:
            return copy.deepcopy(self)
        self.warn_if_results_dict_not_defined()
        wrapper = MultipleResultPackageWrapper()
        mine = copy.deepcopy(self)
        wrapper.prepare_result_package([mine, _as_package(other)], mine.hyperparameters)
        return wrapper

    def __iadd__(self, other: Any) -> "AbstractResultPackage":
        """Merge ``other``'s results (a package or a dict) into this package's results, in place.

        Raises:
            ValueError: If either side is not prepared, or a result name is in both.
            ResultPackageAdditionError: If ``other`` is neither a package nor a dict.
        """
        self.warn_if_results_dict_not_defined()
        if isinstance(other, AbstractResultPackage):
            other.warn_if_results_dict_not_defined()
            other_results = other.results_dict
        elif isinstance(other, dict):
            other_results = clean_results(other, self.strict_content_check, self.pkg_name)
        else:
            raise ResultPackageAdditionError(
                f"A result package adds to a result package or a dict, not to a {type(other).__name__}")
        self.results_dict = merge_results([self.results_dict, other_results])
        return self


def _auto_array(y_array: Any) -> Any:
    """A numpy array when every row has the same length (or rows have no length), else unchanged."""
    try:
        lengths = {len(row) for row in y_array}
    except TypeError:
        return to_numpy(y_array)
    return to_numpy(y_array) if len(lengths) <= 1 else y_array


def _as_package(other: Any) -> AbstractResultPackage:
    """A prepared deep copy of a package, or a dict wrapped in a PreCalculatedResultPackage.

    Raises:
        ValueError: If the package is not prepared.
        ResultPackageAdditionError: If ``other`` is neither a package nor a dict.
    """
    if isinstance(other, AbstractResultPackage):
        other.warn_if_results_dict_not_defined()
        return copy.deepcopy(other)
    if isinstance(other, dict):
        return PreCalculatedResultPackage(copy.deepcopy(other))
    raise ResultPackageAdditionError(
        f"A result package adds to a result package or a dict, not to a {type(other).__name__}")


class PreCalculatedResultPackage(AbstractResultPackage):
    """A package wrapping results that were computed elsewhere.

    It is ready on construction; preparing it again keeps the same results.

    Args:
        results_dict: Mapping of result name to a number or a dict of numbers.
        strict_content_check: As in :class:`AbstractResultPackage`.
        hyperparameters: Experiment hyperparameters to keep with the results (default ``{}``).
        pkg_name: Name of the package.
        **kwargs: Package metadata.

    Raises:
        TypeError: If ``results_dict`` is not a dict.
        ValueError: If ``strict_content_check`` is True and the results are
            empty, non-numeric or non-finite.
    """

    def __init__(
        self,
        results_dict: Dict[str, Any],
        strict_content_check: bool = False,
        hyperparameters: Optional[Dict[str, Any]] = None,
        pkg_name: str = "PreCalculatedResult",
        **kwargs: Any,
    ) -> None:
        super().__init__(pkg_name, strict_content_check, np_array=False, **kwargs)
        self.results_dict = clean_results(results_dict, strict_content_check, self.pkg_name)
        self.hyperparameters = {} if hyperparameters is None else hyperparameters
        self._given_hyperparameters = self.hyperparameters
        self._fixed_results = self.results_dict

    def prepare_results_dict(self) -> ResultsDict:
        """Return the pre-calculated results unchanged."""
        if self.hyperparameters is None:
            self.hyperparameters = self._given_hyperparameters
        return dict(self._fixed_results)

    def prepare_result_package(self, y_true: ArrayLike, y_predicted: ArrayLike,
                               hyperparameters: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        """Keep the inputs; the results stay the pre-calculated ones."""
        super().prepare_result_package(y_true, y_predicted, hyperparameters, **kwargs)


class MultipleResultPackageWrapper(AbstractResultPackage):
    """Several result packages reported as one, their results nested per package name.

    The original aitoolbox form: build it empty, then give it prepared packages::

        wrapper = MultipleResultPackageWrapper()
        wrapper.prepare_result_package([pkg_a, pkg_b], hyperparameters)
        wrapper.get_results()   # {'PkgA': {...}, 'PkgB': {...}}

    A repeated package name gets the package's index appended (``'PkgA1'``).
    ``y_true``, ``y_predicted`` and ``additional_results`` are dicts keyed the same way.

    Packages may also be given to the constructor; ``prepare_result_package(y_true,
    y_predicted, ...)`` then prepares every one of them on the same inputs.

    Args:
        result_packages: Optional packages to hold (see above).
        strict_content_check: As in :class:`AbstractResultPackage`.
        pkg_name: Name of the wrapper.
        **kwargs: Package metadata.

    Raises:
        TypeError: If an element of ``result_packages`` is not a result package.
    """

    def __init__(
        self,
        result_packages: Optional[Sequence[AbstractResultPackage]] = None,
        strict_content_check: bool = False,
        pkg_name: str = "MultipleResultWrapper",
        **kwargs: Any,
    ) -> None:
        if isinstance(result_packages, bool):  # the original's first argument: strict_content_check
            result_packages, strict_content_check = None, result_packages
        super().__init__(pkg_name, strict_content_check, np_array=False, **kwargs)
        self.result_packages: Optional[List[AbstractResultPackage]] = None
        if result_packages is not None:
            self.result_packages = _checked_packages(result_packages)
            if all(p.results_dict is not None for p in self.result_packages):
                self.hyperparameters = next(
                    (p.hyperparameters for p in self.result_packages if p.hyperparameters), None)
                self.results_dict = self.prepare_results_dict()

    def prepare_result_package(self, result_packages: Any, y_predicted: Any = None,
                               hyperparameters: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        """Combine prepared packages, or prepare the held packages on new inputs.

        ``prepare_result_package([pkg, ...], hyperparameters=None, **kwargs)`` combines the
        given (prepared) packages; ``prepare_result_package(y_true, y_predicted,
        hyperparameters=None, **kwargs)`` prepares the packages given to the constructor.

        Raises:
            ValueError: If there are no packages, or a given package is not prepared.
            TypeError: If an element of the list is not a result package.
        """
        if _is_package_list(result_packages):
            if hyperparameters is None and (y_predicted is None or isinstance(y_predicted, dict)):
                hyperparameters = y_predicted
            self.result_packages = _checked_packages(result_packages)
            for package in self.result_packages:
                package.warn_if_results_dict_not_defined()
        else:
            if not self.result_packages:
                raise ValueError("MultipleResultPackageWrapper holds no packages: call "
                                 "prepare_result_package([package, ...]) or give them to the constructor")
            for package in self.result_packages:
                package.prepare_result_package(result_packages, y_predicted, hyperparameters, **kwargs)
        self.results_dict = None
        self.hyperparameters = hyperparameters
        self.additional_results = kwargs
        self.results_dict = clean_results(self.prepare_results_dict(), self.strict_content_check,
                                          self.pkg_name)

    def prepare_results_dict(self) -> ResultsDict:
        """Nest the held packages' results (and inputs) under their unique names."""
        results: ResultsDict = {}
        self.y_true, self.y_predicted = {}, {}
        own = self.additional_results or {}
        self.additional_results = {self.pkg_name: own} if own else {}
        for index, package in enumerate(self.result_packages):
            name = package.pkg_name if package.pkg_name not in results else f"{package.pkg_name}{index}"
            results[name] = package.get_results()
            self.y_true[name] = package.y_true
            self.y_predicted[name] = package.y_predicted
            self.additional_results[name] = package.additional_results
        return results

    def get_additional_results_dump_paths(self) -> DumpPaths:
        """The wrapper's own extra files followed by those of every held package.

        Returns:
            None when there are none, else ``[[file_name, local_path], ...]``.
        """
        paths = list(self.list_additional_results_dump_paths() or [])
        for package in self.result_packages or []:
            paths += package.get_additional_results_dump_paths() or []
        self.additional_results_dump_paths = paths or None
        self.qa_check_additional_results_dump_paths()
        return self.additional_results_dump_paths

    def set_experiment_dir_path_for_additional_results(self, *args: Any, **kwargs: Any) -> None:
        """Pass the experiment folder on to every held package."""
        for package in self.result_packages or []:
            package.set_experiment_dir_path_for_additional_results(*args, **kwargs)

    def __str__(self) -> str:
        """Each held package's name and results."""
        if not self.result_packages:
            return f"{self.pkg_name}: (no packages)"
        return "\n".join(f"--> {p.pkg_name}:\n{p}" for p in self.result_packages)

    def __len__(self) -> int:
        """The number of held packages."""
        return len(self.result_packages or [])

    def __add__(self, other: Any) -> "MultipleResultPackageWrapper":
        """A copy of this wrapper with ``other`` (package, wrapper or dict) appended."""
        self.warn_if_results_dict_not_defined()
        combined = copy.deepcopy(self)
        combined._append(other)
        return combined

    def __radd__(self, other: Any) -> "AbstractResultPackage":
        """``dict + wrapper`` and ``sum()``: the wrapper's packages followed by ``other``."""
        if isinstance(other, numbers.Number) and not isinstance(other, bool) and other == 0:
            return copy.deepcopy(self)
        return self.__add__(other)

    def __iadd__(self, other: Any) -> "MultipleResultPackageWrapper":
        """Append ``other`` (package, wrapper or dict) to this wrapper, in place."""
        self.warn_if_results_dict_not_defined()
        self._append(other)
        return self

    def _append(self, other: Any) -> None:
        other_package = _as_package(other)
        new = (other_package.result_packages if isinstance(other_package, MultipleResultPackageWrapper)
               else [other_package])
        metadata = self.additional_results.get(self.pkg_name, {}) if self.additional_results else {}
        self.prepare_result_package(self.result_packages + list(new), self.hyperparameters, **metadata)


def _is_package_list(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(p, AbstractResultPackage) for p in value))


def _checked_packages(result_packages: Sequence[Any]) -> List[AbstractResultPackage]:
    """The packages as a list.

    Raises:
        ValueError: If there are none.
        TypeError: If an element is not a result package.
    """
    if not result_packages:
        raise ValueError("result_packages is empty: give at least one package")
    for package in result_packages:
        if not isinstance(package, AbstractResultPackage):
            raise TypeError(f"Not a result package: {package!r}")
    return list(result_packages)
