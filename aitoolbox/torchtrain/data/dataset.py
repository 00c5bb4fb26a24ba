"""Thin data-set wrappers (the original aitoolbox's ``aitoolbox.torchtrain.data.dataset``)."""
from __future__ import annotations

from typing import Any, Sequence, Tuple

from torch.utils.data import Dataset


class BasicDataset(Dataset):
    """A data set over an indexable collection: sample ``i`` is ``data[i]``.

    Args:
        data: a list, tensor or any sequence (first dimension: the samples).
    """

    def __init__(self, data: Sequence):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx) -> Any:
        return self.data[idx]


class ListDataset(Dataset):
    """``TensorDataset`` for lists: sample ``i`` is ``(list_1[i], list_2[i], ...)``.

    Args:
        *data_lists: sequences of the same length.

    Raises:
        ValueError: the sequences differ in length.
    """

    def __init__(self, *data_lists: Sequence):
        if not data_lists:
            raise ValueError("ListDataset needs at least one data list.")
        lengths = [len(data) for data in data_lists]
        if len(set(lengths)) > 1:
            raise ValueError(f"ListDataset data lists must have the same length, got lengths {lengths}.")
        self.data_lists = data_lists

    def __getitem__(self, index) -> Tuple:
        return tuple(data[index] for data in self.data_lists)

    def __len__(self) -> int:
        return len(self.data_lists[0])
