"""Result packages: named bundles of evaluation results for one experiment."""

import logging
import math
import numbers
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
    """Turn a numeric result into a python float, recording what is wrong with it."""
    if isinstance(value, dict):
        return {str(k): _plain_value(f"{name}.{k}", v, problems) for k, v in value.items()}
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        problems.append(f"result {name!r} is not a number: {value!r}")
        return value
    if not math.isfinite(float(value)):
        problems.append(f"result {name!r} is not finite: {value!r}")
    return float(value)


def clean_results(results: Dict[str, Any], strict: bool, pkg_name: str) -> ResultsDict:
    """Convert result values to python floats and check them.

    Args:
        results: Mapping of result name to a number or a dict of numbers.
        strict: If True, problems raise; otherwise they are logged as warnings.
        pkg_name: Package name used in messages.

    Returns:
        A new dict with every numeric value as a python float.

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


class AbstractResultPackage(ABC):
    """Base class of result packages.

    Call :meth:`prepare_result_package` with the ground truth and predictions;
    the subclass's :meth:`prepare_results_dict` then computes the results.

    Args:
        pkg_name: Name of the package; defaults to the class name.
        strict_content_check: If True, empty, non-numeric or non-finite
            results raise ValueError; otherwise they are logged as warnings.
        np_array: If True, inputs are converted to numpy arrays and checked.
    """

    def __init__(
        self,
        pkg_name: Optional[str] = None,
        strict_content_check: bool = False,
        np_array: bool = True,
    ) -> None:
        self.pkg_name = pkg_name if pkg_name is not None else type(self).__name__
        self.strict_content_check = strict_content_check
        self.np_array = np_array
        self.y_true: Any = None
        self.y_predicted: Any = None
        self.hyperparameters: Optional[Dict[str, Any]] = None
        self.additional_results: Optional[Dict[str, Any]] = None
        self.results_dict: Optional[ResultsDict] = None

    def prepare_result_package(
        self,
        y_true: ArrayLike,
        y_predicted: ArrayLike,
        hyperparameters: Optional[Dict[str, Any]] = None,
        additional_results: Optional[Dict[str, Any]] = None,
    ) -> None:
        """Store the inputs and compute the results.

        Args:
            y_true: Ground truth values.
            y_predicted: Predicted values.
            hyperparameters: Experiment hyperparameters to keep with the results.
            additional_results: Any extra outputs to keep with the results.

        Raises:
            ValueError: If the inputs are empty or of different lengths (when
                ``np_array`` is True), or the results fail the strict check.
        """
        if self.np_array:
            y_true, y_predicted = to_numpy(y_true), to_numpy(y_predicted)
            check_prediction_inputs(y_true, y_predicted)
        self.y_true, self.y_predicted = y_true, y_predicted
        self.hyperparameters = hyperparameters
        self.additional_results = additional_results
        results = self.prepare_results_dict()
        self.results_dict = clean_results(results, self.strict_content_check, self.pkg_name)
        logger.debug("%s prepared: %s", self.pkg_name, self.list_result_names())

    @abstractmethod
    def prepare_results_dict(self) -> ResultsDict:
        """Compute the results from ``self.y_true`` and ``self.y_predicted``.

        Returns:
            A dict mapping result names to floats or dicts of floats.
        """

    def get_results(self) -> ResultsDict:
        """Return the computed results.

        Returns:
            A copy of the results dict.

        Raises:
            ValueError: If the package has not been prepared yet.
        """
        if self.results_dict is None:
            raise ValueError(
                f"Result package {self.pkg_name!r} has no results yet: "
                "call prepare_result_package() first"
            )
        return dict(self.results_dict)

    def get_hyperparameters(self) -> Optional[Dict[str, Any]]:
        """Return the hyperparameters given when preparing the package.

        Returns:
            The hyperparameters dict, or None if none were given.
        """
        return self.hyperparameters

    def get_additional_results_dump_paths(self) -> Optional[List[Any]]:
        """Return paths of extra result files this package wrote, if any.

        Returns:
            None by default; subclasses that save files return their paths.
        """
        return None

    def list_result_names(self) -> List[str]:
        """Return the names of the computed results.

        Returns:
            The result names, in order.

        Raises:
            ValueError: If the package has not been prepared yet.
        """
        return list(self.get_results().keys())

    def __str__(self) -> str:
        """Return the package name and one ``name: value`` line per result.

        Returns:
            A readable summary of the package.
        """
        if self.results_dict is None:
            return f"{self.pkg_name}: (not prepared)"
        lines = [f"  {name}: {value}" for name, value in self.results_dict.items()]
        return "\n".join([f"{self.pkg_name}:"] + lines)

    def __len__(self) -> int:
        """Return the number of results.

        Returns:
            The number of results, or 0 if the package is not prepared.
        """
        return 0 if self.results_dict is None else len(self.results_dict)

    def __add__(self, other: "AbstractResultPackage") -> "MultipleResultPackageWrapper":
        """Combine this package with another into one wrapper.

        Args:
            other: Another result package (or wrapper).

        Returns:
            A wrapper holding the packages of both operands.

        Raises:
            ValueError: If both are prepared and share a result name.
        """
        if not isinstance(other, AbstractResultPackage):
            return NotImplemented
        return MultipleResultPackageWrapper(_unwrap(self) + _unwrap(other))

    def __radd__(self, other: Any) -> "AbstractResultPackage":
        """Support ``sum()`` over packages, whose start value is 0.

        Args:
            other: 0, or another result package.

        Returns:
            This package when ``other`` is 0, otherwise the combination.
        """
        if isinstance(other, numbers.Number) and other == 0:
            return self
        if isinstance(other, AbstractResultPackage):
            return other.__add__(self)
        return NotImplemented


def _unwrap(package: AbstractResultPackage) -> List[AbstractResultPackage]:
    """Return the packages inside a wrapper, or the package itself."""
    if isinstance(package, MultipleResultPackageWrapper):
        return list(package.result_packages)
    return [package]


class MultipleResultPackageWrapper(AbstractResultPackage):
    """Several result packages reported as one, with their results merged.

    Preparing the wrapper prepares every inner package on the same inputs.
    If every inner package is already prepared, the merged results are
    available at once.

    Args:
        result_packages: The packages to combine.
        pkg_name: Name of the wrapper.
        strict_content_check: As in :class:`AbstractResultPackage`.

    Raises:
        ValueError: If ``result_packages`` is empty, or prepared packages share
            a result name.
        TypeError: If an element is not a result package.
    """

    def __init__(
        self,
        result_packages: Sequence[AbstractResultPackage],
        pkg_name: str = "MultipleResultPackageWrapper",
        strict_content_check: bool = False,
    ) -> None:
        super().__init__(pkg_name, strict_content_check, np_array=True)
        if not result_packages:
            raise ValueError("result_packages is empty: give at least one package")
        for package in result_packages:
            if not isinstance(package, AbstractResultPackage):
                raise TypeError(f"Not a result package: {package!r}")
        self.result_packages = list(result_packages)
        if all(p.results_dict is not None for p in self.result_packages):
            self.results_dict = merge_results([p.get_results() for p in self.result_packages])
            self.hyperparameters = next(
                (p.hyperparameters for p in self.result_packages if p.hyperparameters), None
            )

    def prepare_results_dict(self) -> ResultsDict:
        """Prepare every inner package on the stored inputs and merge them.

        Returns:
            The merged results dict.

        Raises:
            ValueError: If two inner packages produce the same result name.
        """
        for package in self.result_packages:
            package.prepare_result_package(
                self.y_true, self.y_predicted, self.hyperparameters, self.additional_results
            )
        return merge_results([p.get_results() for p in self.result_packages])

    def get_additional_results_dump_paths(self) -> Optional[List[Any]]:
        """Return the extra result file paths of all inner packages.

        Returns:
            The concatenated paths, or None if no inner package has any.
        """
        paths = [p.get_additional_results_dump_paths() for p in self.result_packages]
        paths = [path for group in paths if group for path in group]
        return paths or None


class PreCalculatedResultPackage(AbstractResultPackage):
    """A package wrapping results that were computed elsewhere.

    It is ready on construction; preparing it again keeps the same results.

    Args:
        results_dict: Mapping of result name to a number or a dict of numbers.
        hyperparameters: Experiment hyperparameters to keep with the results.
        pkg_name: Name of the package.
        strict_content_check: As in :class:`AbstractResultPackage`.

    Raises:
        TypeError: If ``results_dict`` is not a dict.
        ValueError: If ``strict_content_check`` is True and the results are
            empty, non-numeric or non-finite.
    """

    def __init__(
        self,
        results_dict: Dict[str, Any],
        hyperparameters: Optional[Dict[str, Any]] = None,
        pkg_name: str = "PreCalculatedResult",
        strict_content_check: bool = False,
    ) -> None:
        super().__init__(pkg_name, strict_content_check, np_array=False)
        self.results_dict = clean_results(results_dict, strict_content_check, self.pkg_name)
        self.hyperparameters = hyperparameters
        self._given_hyperparameters = hyperparameters

    def prepare_results_dict(self) -> ResultsDict:
        """Return the pre-calculated results unchanged.

        Returns:
            The results given on construction.
        """
        if self.hyperparameters is None:
            self.hyperparameters = self._given_hyperparameters
        return dict(self.results_dict)
