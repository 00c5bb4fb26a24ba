"""``ModelPredictionStore``: the original aitoolbox's prediction cache API over our :class:`PredictionStore`.

The original keyed the cache by the TrainLoop's iteration index; ours tags every entry with the
model's *weights version* (``TrainLoop.weights_version``, bumped on every optimizer step and model
load). The ``iteration_idx`` arguments below are that tag: pass ``loop.weights_version`` to read
what the TrainLoop cached. The store names are those the TrainLoop uses: ``('train' |
'validation' | 'test', 'predictions' | 'loss')``.
"""
from __future__ import annotations

from typing import Any, Dict

from aitoolbox.torchtrain.train_loop.components.prediction_store import PredictionStore

#: the original's source names -> our ``(dataset, kind)`` keys
SOURCES = {
    "train_pred": ("train", "predictions"), "val_pred": ("validation", "predictions"),
    "test_pred": ("test", "predictions"), "train_loss": ("train", "loss"),
    "val_loss": ("validation", "loss"), "test_loss": ("test", "loss"),
}


class ModelPredictionStore(PredictionStore):
    """Cache of predictions and losses, with the original aitoolbox's method names.

    Args:
        auto_purge: drop every entry when data of a later ``iteration_idx`` is inserted.

    Attributes:
        last_iteration_idx: the ``iteration_idx`` of the last auto purge (-1 before any).
    """

    def __init__(self, auto_purge: bool = False):
        super().__init__()
        self.do_auto_purge = auto_purge
        self.last_iteration_idx = -1

    # the original's public names, one triple per data set and kind
    def insert_train_predictions(self, predictions, iteration_idx: int, force_prediction: bool = False) -> None:
        """Cache training-set predictions; see :meth:`_insert_data`."""
        self._insert_data("train_pred", predictions, iteration_idx, force_prediction)

    def insert_val_predictions(self, predictions, iteration_idx: int, force_prediction: bool = False) -> None:
        """Cache validation-set predictions; see :meth:`_insert_data`."""
        self._insert_data("val_pred", predictions, iteration_idx, force_prediction)

    def insert_test_predictions(self, predictions, iteration_idx: int, force_prediction: bool = False) -> None:
        """Cache test-set predictions; see :meth:`_insert_data`."""
        self._insert_data("test_pred", predictions, iteration_idx, force_prediction)

    def insert_train_loss(self, loss, iteration_idx: int, force_prediction: bool = False) -> None:
        """Cache the training-set loss; see :meth:`_insert_data`."""
        self._insert_data("train_loss", loss, iteration_idx, force_prediction)

    def insert_val_loss(self, loss, iteration_idx: int, force_prediction: bool = False) -> None:
        """Cache the validation-set loss; see :meth:`_insert_data`."""
        self._insert_data("val_loss", loss, iteration_idx, force_prediction)

    def insert_test_loss(self, loss, iteration_idx: int, force_prediction: bool = False) -> None:
        """Cache the test-set loss; see :meth:`_insert_data`."""
        self._insert_data("test_loss", loss, iteration_idx, force_prediction)

    def get_train_predictions(self, iteration_idx: int):
        """Cached training-set predictions; see :meth:`_get_data`."""
        return self._get_data("train_pred", iteration_idx)

    def get_val_predictions(self, iteration_idx: int):
        """Cached validation-set predictions; see :meth:`_get_data`."""
        return self._get_data("val_pred", iteration_idx)

    def get_test_predictions(self, iteration_idx: int):
        """Cached test-set predictions; see :meth:`_get_data`."""
        return self._get_data("test_pred", iteration_idx)

    def get_train_loss(self, iteration_idx: int):
        """Cached training-set loss; see :meth:`_get_data`."""
        return self._get_data("train_loss", iteration_idx)

    def get_val_loss(self, iteration_idx: int):
        """Cached validation-set loss; see :meth:`_get_data`."""
        return self._get_data("val_loss", iteration_idx)

    def get_test_loss(self, iteration_idx: int):
        """Cached test-set loss; see :meth:`_get_data`."""
        return self._get_data("test_loss", iteration_idx)

    def has_train_predictions(self, iteration_idx: int) -> bool:
        """Whether training-set predictions of ``iteration_idx`` are cached."""
        return self._has_data("train_pred", iteration_idx)

    def has_val_predictions(self, iteration_idx: int) -> bool:
        """Whether validation-set predictions of ``iteration_idx`` are cached."""
        return self._has_data("val_pred", iteration_idx)

    def has_test_predictions(self, iteration_idx: int) -> bool:
        """Whether test-set predictions of ``iteration_idx`` are cached."""
        return self._has_data("test_pred", iteration_idx)

    def has_train_loss(self, iteration_idx: int) -> bool:
        """Whether the training-set loss of ``iteration_idx`` is cached."""
        return self._has_data("train_loss", iteration_idx)

    def has_val_loss(self, iteration_idx: int) -> bool:
        """Whether the validation-set loss of ``iteration_idx`` is cached."""
        return self._has_data("val_loss", iteration_idx)

    def has_test_loss(self, iteration_idx: int) -> bool:
        """Whether the test-set loss of ``iteration_idx`` is cached."""
        return self._has_data("test_loss", iteration_idx)

    # ------------------------------------------------------------------ shared implementation
    def _insert_data(self, source_name: str, data: Any, iteration_idx: int, force_prediction: bool = False) -> None:
        """Cache ``data`` under ``source_name`` for ``iteration_idx``.

        Raises:
            ValueError: data of this ``iteration_idx`` is cached already and ``force_prediction`` is False.
        """
        self.auto_purge(iteration_idx)
        if self._has_data(source_name, iteration_idx) and not force_prediction:
            raise ValueError(f"{source_name} of iteration {iteration_idx} is cached already; pass "
                             "force_prediction=True to overwrite it.")
        self.put(*SOURCES[source_name], iteration_idx, data)

    def _get_data(self, source_name: str, iteration_idx: int):
        """The cached ``source_name`` data of ``iteration_idx``.

        Raises:
            ValueError: nothing of this ``iteration_idx`` is cached (check with ``has_*`` first).
        """
        if not self._has_data(source_name, iteration_idx):
            raise ValueError(f"No {source_name} of iteration {iteration_idx} in the prediction store.")
        return self.get(*SOURCES[source_name], iteration_idx)

    def _has_data(self, source_name: str, iteration_idx: int) -> bool:
        return self.get(*SOURCES[source_name], iteration_idx) is not None

    def auto_purge(self, iteration_idx: int) -> None:
        """With ``auto_purge``: drop every entry once ``iteration_idx`` moved past the last purge's."""
        if self.do_auto_purge and iteration_idx > self.last_iteration_idx:
            self.clear()
            self.last_iteration_idx = iteration_idx

    @property
    def prediction_store(self) -> Dict[str, Any]:
        """The cache as aitoolbox 1.8 showed it: ``{'iteration_idx': <last purge's>, <source>: data}``.

        A read-only snapshot; the source names are those of :data:`SOURCES`. Unlike 1.8, every
        entry keeps its own ``iteration_idx`` tag as well (what ``has_*`` / ``get_*`` check).
        """
        snapshot: Dict[str, Any] = {"iteration_idx": self.last_iteration_idx}
        for source_name, key in SOURCES.items():
            if key in self._store:
                snapshot[source_name] = self._store[key][1]
        return snapshot
