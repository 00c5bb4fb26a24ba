"""Dict helpers: prediction metadata and nested training-history dicts (the original's ``dict_util``)."""
from __future__ import annotations

import copy
from collections.abc import MutableMapping
from typing import Any, Dict, List

import numpy as np
import torch

from aitoolbox.utils.util import flatten_list_of_lists


def combine_prediction_metadata_batches(metadata_list: List[dict]) -> dict:
    """Concatenate per-batch metadata dicts key by key.

    Lists are chained, tensors ``torch.cat``-ed and numpy arrays concatenated along dim 0. A key
    missing from some batches gets the values of the batches that have it.

    Args:
        metadata_list: one dict per batch, values lists, tensors or numpy arrays.

    Returns:
        One dict with the concatenated values.

    Raises:
        TypeError: a value of another type.
    """
    collected: Dict[str, list] = {}
    for metadata_batch in metadata_list:
        for key, value in metadata_batch.items():
            collected.setdefault(key, []).append(value)
    return {key: _concatenate(key, values) for key, values in collected.items()}


def _concatenate(key: str, values: list):
    first = values[0]
    if isinstance(first, list):
        return flatten_list_of_lists(values)
    if isinstance(first, torch.Tensor):
        return torch.cat(values, dim=0)
    if isinstance(first, np.ndarray):
        return np.concatenate(values, axis=0)
    raise TypeError(f"metadata[{key!r}] is a {type(first).__name__}: metadata values must be lists, "
                    "torch.Tensors or numpy arrays to be combined across batches.")


def flatten_dict(nested_dict: dict, parent_key: str = "", sep: str = "_") -> dict:
    """Flatten nested dicts, joining the keys with ``sep``: ``{'a': {'b': 1}} -> {'a_b': 1}``.

    Args:
        nested_dict: the dict to flatten.
        parent_key: prefix of every key.
        sep: separator between the levels' keys.

    Returns:
        The flat dict.
    """
    items: List[tuple] = []
    for key, value in nested_dict.items():
        new_key = f"{parent_key}{sep}{key}" if parent_key else key
        if isinstance(value, MutableMapping):
            items.extend(flatten_dict(value, new_key, sep=sep).items())
        else:
            items.append((new_key, value))
    return dict(items)


def combine_dict_elements(list_of_dicts: List[dict]) -> Dict[Any, list]:
    """``[{'a': 1}, {'a': 2, 'b': 3}] -> {'a': [1, 2], 'b': [3]}``."""
    combined: Dict[Any, list] = {}
    for d in list_of_dicts:
        for key, value in d.items():
            combined.setdefault(key, []).append(value)
    return combined


def flatten_combine_dict(train_history: dict) -> dict:
    """A history whose entries are lists of dicts turned into one flat list per sub-key.

    ``{'ROGUE': [{'m1': 0.9}, {'m1': 0.3}]} -> {'ROGUE_m1': [0.9, 0.3]}``; other entries are kept.
    The input is not modified.

    Args:
        train_history: metric name -> list of values (or of dicts of values).

    Returns:
        The flattened history.
    """
    history = copy.deepcopy(train_history)
    flat: Dict[str, Any] = {}
    for key, values in history.items():
        if all(type(el) is dict for el in values):
            combined = combine_dict_elements([flatten_dict(d) for d in values])
            for sub_key, sub_values in combined.items():
                flat[f"{key}_{sub_key}"] = sub_values
        else:
            flat[key] = values
    return flat
