"""aitoolbox.utils.dict_util: the original aitoolbox's dict helpers."""
import numpy as np
import pytest
import torch

from aitoolbox.utils import dict_util


def test_combine_prediction_metadata_lists_with_missing_keys():
    batches = [{"a": [1, 2], "b": [0]}, {"a": [3]}, {"a": [4], "b": [5], "c": ["x"]}]
    assert dict_util.combine_prediction_metadata_batches(batches) == {"a": [1, 2, 3, 4], "b": [0, 5], "c": ["x"]}


def test_combine_prediction_metadata_tensors_and_arrays():
    t, a = torch.arange(6).view(3, 2), np.arange(4).reshape(2, 2)
    combined = dict_util.combine_prediction_metadata_batches([{"t": t, "a": a}, {"t": t + 10, "a": a + 10}])
    assert torch.equal(combined["t"], torch.cat([t, t + 10]))
    assert isinstance(combined["a"], np.ndarray)
    assert combined["a"].tolist() == np.concatenate([a, a + 10]).tolist()


@pytest.mark.parametrize("bad", ["text", 12, 1.5, {"k": "v"}])
def test_combine_prediction_metadata_rejects_other_types(bad):
    with pytest.raises(TypeError, match="metadata values must be lists, torch.Tensors or numpy arrays"):
        dict_util.combine_prediction_metadata_batches([{"m": bad}, {"m": bad}])


def test_flatten_dict():
    assert dict_util.flatten_dict({"a": 1}) == {"a": 1}
    assert dict_util.flatten_dict({"b": {"u": 1, "w": 2}, "r": {"p": 3}}) == {"b_u": 1, "b_w": 2, "r_p": 3}
    assert dict_util.flatten_dict({"b": {"r1": {"m": 1}, "r2": {"m": 2}}}, sep=".") == {"b.r1.m": 1, "b.r2.m": 2}


def test_combine_dict_elements():
    assert dict_util.combine_dict_elements([{"acc": 0.9, "f1": 0.1}, {"acc": 0.8, "new": 1}]) == \
        {"acc": [0.9, 0.8], "f1": [0.1], "new": [1]}


def test_flatten_combine_dict_keeps_plain_entries_and_does_not_mutate():
    history = {"loss": [1.0, 2.0], "ROGUE": [{"m1": 0.9, "m2": 2.0}, {"m1": 0.3, "extra": 4.0}]}
    original = {"loss": [1.0, 2.0], "ROGUE": [{"m1": 0.9, "m2": 2.0}, {"m1": 0.3, "extra": 4.0}]}
    assert dict_util.flatten_combine_dict(history) == {"loss": [1.0, 2.0], "ROGUE_m1": [0.9, 0.3], "ROGUE_m2": [2.0],
                                                       "ROGUE_extra": [4.0]}
    assert history == original
