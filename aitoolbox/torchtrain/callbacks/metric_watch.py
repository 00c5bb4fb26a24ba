"""Watching one training-history metric: its direction, its best value, new values as they come.

Shared by the callbacks that decide on a metric (early stopping, save-best). A metric whose name
looks like a loss or an error is minimised; every other metric is maximised, unless the caller
says otherwise with ``greater_is_better``.

Also the check, at ``fit``, that every watched history key is written by something
(:func:`check_monitored_metrics`), and the warning after the first epoch for the keys that only
show at run time (:func:`warn_missing_metrics`).
"""
from __future__ import annotations

import difflib
import fnmatch
import math
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple

from aitoolbox.utils.log import get_logger

#: name fragments of metrics that are better when smaller
LOSS_LIKE_NAMES = ("loss", "error", "mse", "mae", "rmse", "perplexity", "nll")


def infer_greater_is_better(metric_name: str) -> bool:
    """Whether a larger value of ``metric_name`` is better: False for loss-like names.

    Args:
        metric_name: a training-history key, e.g. ``'val_loss'`` or ``'val_Accuracy'``.

    Returns:
        False when the name contains a loss-like fragment (:data:`LOSS_LIKE_NAMES`), else True.
    """
    name = metric_name.lower()
    return not any(fragment in name for fragment in LOSS_LIKE_NAMES)


class MetricWatcher:
    """Follows one history metric: picks up new values and tells improvements apart.

    Args:
        monitor: the training-history key to watch.
        greater_is_better: direction; None infers it from the name (:func:`infer_greater_is_better`).
        min_delta: a value improves on the best only when better by more than this (absolute).
    """

    def __init__(self, monitor: str, greater_is_better: Optional[bool] = None, min_delta: float = 0.):
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}.")
        self.monitor = monitor
        self.greater_is_better = (infer_greater_is_better(monitor) if greater_is_better is None
                                  else bool(greater_is_better))
        self.min_delta = float(min_delta)
        self.best: Optional[float] = None
        self.num_seen = 0  # values of the metric already looked at

    def new_value(self, history) -> Optional[float]:
        """The metric's latest value when one was added since the last call, else None."""
        values = history[self.monitor] if self.monitor in history else []
        if len(values) <= self.num_seen:
            return None
        self.num_seen = len(values)
        return float(values[-1])

    def is_improvement(self, value: float) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta`` (NaN never does)."""
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.greater_is_better:
            return value - self.min_delta > self.best
        return value + self.min_delta < self.best

    def beats(self, value: float, reference: float) -> bool:
        """Whether ``value`` is strictly better than ``reference`` in the watched direction."""
        return value > reference if self.greater_is_better else value < reference

    def state_dict(self) -> dict:
        """The best value and how many values were seen."""
        return {"best": self.best, "num_seen": self.num_seen}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.best, self.num_seen = state["best"], state["num_seen"]


# ---------------------------------------------------------------------- monitored-metric checks
#
# A callback that watches a history key declares it (``monitored_history_metrics``); a callback
# that writes history keys declares them (``produced_history_metrics``: names, ``'prefix*'``
# patterns for families only known at run time, or None when it cannot say). At ``fit`` a watched
# key that nothing can produce is an error; one that only a callback of unknown output (or a
# pattern) may produce is looked for after the first epoch, with a warning when it is missing.

class MonitoredMetric(NamedTuple):
    """One history key that a callback watches."""

    #: the callback's argument that names the key (for the messages)
    arg_name: str
    #: the history key
    metric: str
    #: the key is read at epoch ends (False: only at the end of training, where
    #: ``train_end_<metric>`` also counts)
    during_epochs: bool = True


class MissingMonitoredMetricError(KeyError, ValueError):
    """A callback watches a history key that no registered callback nor the TrainLoop writes.

    A ValueError (a bad argument) and a KeyError (what a missing history key raised before).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def loop_produced_metrics(loop) -> Optional[List[str]]:
    """History keys (and ``'prefix*'`` patterns) that the TrainLoop itself writes in a ``fit``.

    Returns:
        The keys, or None for a TrainLoop subclass from outside aitoolbox (it may write any key).
    """
    if not _is_aitoolbox_class(type(loop)):
        return None
    produced = ["accumulated_loss", "accumulated_loss_*"]
    if loop.end_auto_eval:
        produced += ["loss", "loss_*"]
        if loop.validation_loader is not None:
            produced += ["val_loss", "val_loss_*"]
        if loop.test_loader is not None:
            produced += ["train_end_test_loss", "train_end_test_loss_*"]
        if getattr(getattr(loop, "strategy", None), "multi_process", False):
            # loaders may be built in each process (InMultiProcessDataLoad): known only at run time
            produced += ["val_loss*", "train_end_test_loss*"]
    return produced + list(loop.train_history.keys())


def check_monitored_metrics(loop, callbacks: Sequence) -> List[Tuple[str, MonitoredMetric]]:
    """Check that every watched history key can be produced; raise when it cannot.

    Args:
        loop: the TrainLoop about to be fitted.
        callbacks: every callback of the run.

    Returns:
        ``(callback description, monitored metric)`` of the keys that may be produced but only
        at run time (a pattern or a callback of unknown output): look for them after the first
        epoch with :func:`warn_missing_metrics`.

    Raises:
        MissingMonitoredMetricError: a watched key that nothing writes, with the keys that exist
            and a close-match suggestion.
    """
    exact, patterns, unknown_writers = _produced(loop, callbacks)
    unverified = []
    for cb in callbacks:
        for monitored in _monitors_of(cb):
            candidates = [monitored.metric]
            if not monitored.during_epochs:
                candidates.append(f"train_end_{monitored.metric}")
            if any(name in exact for name in candidates):
                continue
            if unknown_writers or any(fnmatch.fnmatchcase(name, p) for name in candidates for p, _ in patterns):
                unverified.append((_describe(cb, monitored), monitored))
                continue
            raise MissingMonitoredMetricError(
                f"{_describe(cb, monitored)}: {monitored.metric!r} would never be in the training history: "
                "not found among the metrics that the TrainLoop and the registered callbacks write."
                f"{_suggestion(monitored.metric, exact)} The history will have: "
                f"{_listing(exact, patterns)}. Fix the name, or register the callback that computes "
                "it (e.g. ModelPerformanceEvaluation for the result package's metrics).")
    return unverified


def warn_missing_metrics(history, unverified: Sequence[Tuple[str, MonitoredMetric]]) -> None:
    """After the first epoch: warn about every watched key (from :func:`check_monitored_metrics`)
    that is still not in the training history, listing the keys that are and a close match."""
    present = [name for name in history.keys() if len(history[name]) > 0]
    for description, monitored in unverified:
        if monitored.during_epochs and monitored.metric not in present:
            get_logger().warning(
                f"{description}: {monitored.metric!r} was not written to the training history in the "
                f"first epoch, so it has no value to act on.{_suggestion(monitored.metric, present)} "
                f"Metrics in the history: {', '.join(present) or 'none'}.")


def _produced(loop, callbacks: Sequence) -> Tuple[set, list, bool]:
    """Exact names, ``(pattern, producing callback's name or None for the loop)``, any unknown."""
    exact, patterns, unknown = set(), [], False
    sources = [(None, loop_produced_metrics(loop))] + [(cb, _produced_by(cb)) for cb in callbacks]
    for cb, produced in sources:
        if produced is None:
            unknown = True
            continue
        for name in produced:
            if name.endswith("*"):
                patterns.append((name, None if cb is None else type(cb).__name__))
            else:
                exact.add(name)
    return exact, patterns, unknown


def _produced_by(cb) -> Optional[Iterable[str]]:
    declare = getattr(cb, "produced_history_metrics", None)
    if declare is None:  # not an AbstractCallback of ours (duck-typed): it may write anything
        return None
    return declare()


def _monitors_of(cb) -> Sequence[MonitoredMetric]:
    declare = getattr(cb, "monitored_history_metrics", None)
    return [MonitoredMetric(*m) for m in declare()] if declare is not None else []


def _describe(cb, monitored: MonitoredMetric) -> str:
    name = getattr(cb, "callback_name", type(cb).__name__)
    return f"{name} ({type(cb).__name__}, {monitored.arg_name}={monitored.metric!r})"


def _suggestion(metric: str, names: Iterable[str]) -> str:
    names = list(names)
    by_lower = {n.lower(): n for n in names}
    if metric.lower() in by_lower:
        return f" Did you mean {by_lower[metric.lower()]!r}?"
    close = difflib.get_close_matches(metric, names, n=1, cutoff=0.75)
    return f" Did you mean {close[0]!r}?" if close else ""


def _listing(exact: Iterable[str], patterns: Iterable[Tuple[str, Optional[str]]]) -> str:
    # the loop's own patterns (a MultiLoss's per-loss keys) are left out: they only add noise
    shown = sorted(exact) + sorted({f"{p} (from {source})" for p, source in patterns if source})
    return ", ".join(shown) if shown else "nothing"


def _is_aitoolbox_class(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "aitoolbox"


def produced_by_default(cb) -> Optional[List[str]]:
    """What :meth:`AbstractCallback.produced_history_metrics` returns when not overridden.

    aitoolbox's own callbacks that write history keys declare them; every other one of them
    writes none. A callback class from outside aitoolbox (yours, or your subclass of ours) may
    write any key: None, unless it overrides the method.
    """
    return [] if _is_aitoolbox_class(type(cb)) else None
