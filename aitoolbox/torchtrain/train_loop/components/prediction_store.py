"""Cache of evaluation losses and predictions, valid until the weights next change.

Entries are tagged with the model's *weights version*, a counter the TrainLoop bumps on every
optimizer step and model load; an entry of another version is a miss.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple


class PredictionStore:
    """``(dataset, kind)`` -> result, for the current weights only."""

    def __init__(self):
        self._store: Dict[Tuple[str, str], Tuple[int, Any]] = {}

    def get(self, dataset: str, kind: str, version: int):
        """The cached result, or None when absent or computed with other weights."""
        entry = self._store.get((dataset, kind))
        if entry is None or entry[0] != version:
            return None
        return entry[1]

    def put(self, dataset: str, kind: str, version: int, value: Any) -> None:
        """Cache ``value`` as computed with the weights of ``version``."""
        self._store[(dataset, kind)] = (version, value)

    def clear(self) -> None:
        """Drop every entry."""
        self._store.clear()
