"""Collecting predictions: the default collate / transform fill one preallocated tensor.

Whatever path the collection takes, the result must equal what the seed's protocol gives
(``append_predictions`` per batch, ``torch_cat_transf`` once): the reference in these tests is
the same loop with a collate function that is *not* the default object, which takes that path.
"""
import gc
import weakref

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from aitoolbox import TrainLoop, TTModel
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.train_loop.components.data_loading import expected_num_samples
from aitoolbox.torchtrain.train_loop.components.pred_collate_fns import (
    PredictionCollector, append_concat_predictions, append_predictions, keep_list_transf)

from _loop_helpers import make_data, make_mlp


def _list_collate(batch, collected):
    """The default collate behind another function object: forces the list + cat path."""
    return append_predictions(batch, collected)


def _batches(num_rows, batch_size, row_shape=(), dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, num_rows, batch_size):
        n = min(batch_size, num_rows - start)
        values = torch.randn((n, *row_shape), generator=gen) * 100
        out.append(values.to(dtype))
    return out


def _collect(batches, expected_rows, **kwargs):
    collector = PredictionCollector(expected_rows=expected_rows, **kwargs)
    for batch in batches:
        collector.add(batch, batch.shape[0] if isinstance(batch, torch.Tensor) and batch.dim() else None)
    return collector.result()


def _assert_identical(result, reference):
    assert isinstance(result, torch.Tensor) and type(result) is torch.Tensor
    assert result.dtype == reference.dtype and result.shape == reference.shape
    assert result.device == reference.device
    assert torch.equal(result, reference)
    assert result.stride() == reference.stride()
    # No rows are kept behind the result: its storage holds exactly its elements.
    assert result.untyped_storage().nbytes() == result.numel() * result.element_size()


# ------------------------------------------------------------------------- the collector alone
@pytest.mark.parametrize("row_shape", [(), (7,), (3, 4, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64])
@pytest.mark.parametrize("num_rows,batch_size", [(100, 10), (101, 10), (7, 10), (1, 1)])
def test_preallocated_result_equals_list_and_cat(row_shape, dtype, num_rows, batch_size):
    batches = _batches(num_rows, batch_size, row_shape, dtype)
    _assert_identical(_collect(batches, num_rows), torch.cat(batches))


def test_collector_keeps_no_batch_alive():
    collector = PredictionCollector(expected_rows=40)
    refs = []
    for batch in _batches(40, 10, (3,)):
        refs.append(weakref.ref(batch))
        collector.add(batch, 10)
        del batch
    gc.collect()
    assert all(ref() is None for ref in refs)  # copied into the result, not listed
    assert collector.result().shape == (40, 3)


@pytest.mark.parametrize("expected_rows", [0, 5, 39, 41, 400])
def test_wrong_expected_number_of_rows_gives_the_exact_rows(expected_rows):
    batches = _batches(40, 10, (3,))
    _assert_identical(_collect(batches, expected_rows), torch.cat(batches))


def test_unknown_number_of_rows_falls_back_to_list_and_cat():
    batches = _batches(25, 10, (2,))
    _assert_identical(_collect(batches, None), torch.cat(batches))


def test_dtype_change_midway_promotes_like_cat():
    batches = _batches(30, 10, (4,), torch.bfloat16)
    batches[1] = batches[1].float()
    reference = torch.cat(batches)
    assert reference.dtype == torch.float32
    _assert_identical(_collect(batches, 30), reference)


def test_row_shape_change_midway_raises_like_cat():
    batches = _batches(30, 10, (4,))
    batches[2] = torch.zeros(10, 5)
    with pytest.raises(RuntimeError):
        torch.cat(batches)
    with pytest.raises(RuntimeError):
        _collect(batches, 30)


def test_non_contiguous_and_channels_last_batches():
    batches = [torch.randn(6, 3, 4, 5).to(memory_format=torch.channels_last) for _ in range(3)]
    _assert_identical(_collect(batches, 18), torch.cat(batches))
    transposed = [torch.randn(4, 6).t() for _ in range(3)]
    _assert_identical(_collect(transposed, 18), torch.cat(transposed))


def test_first_batch_with_other_rows_than_samples_is_not_preallocated():
    batches = _batches(40, 10, (2,))
    collector = PredictionCollector(expected_rows=4)  # e.g. one row per batch expected
    for batch in batches:
        collector.add(batch, 1)
    _assert_identical(collector.result(), torch.cat(batches))


def test_tensors_that_require_grad_keep_the_list_and_cat_semantics():
    leaf = torch.randn(20, 3, requires_grad=True)
    batches = [leaf[:10] * 2, leaf[10:] * 2]
    result = _collect(batches, 20)
    assert result.requires_grad and torch.equal(result, torch.cat(batches))


@pytest.mark.parametrize("batches,expected", [
    ([(torch.ones(2), torch.zeros(2)), (torch.ones(1), torch.zeros(1))],
     [torch.ones(2), torch.zeros(2), torch.ones(1), torch.zeros(1)]),
    ([["a", "b"], ["c"]], ["a", "b", "c"]),
    ([np.arange(3), np.arange(2)], np.array([0, 1, 2, 0, 1])),
])
def test_non_tensor_predictions_take_the_seed_path(batches, expected):
    collector = PredictionCollector(expected_rows=5)
    for batch in batches:
        collector.add(batch, len(batch))
    result = collector.result()
    assert len(result) == len(expected)
    for got, want in zip(result, expected):
        assert (torch.equal(got, want) if isinstance(want, torch.Tensor) else got == want)


def test_dict_predictions_stay_a_list_of_dicts():
    batches = [{"a": torch.ones(2)}, {"a": torch.zeros(1)}]
    result = _collect(batches, 3)
    assert result == batches and all(got is want for got, want in zip(result, batches))


def test_move_to_cpu_moves_only_plain_tensors():
    batches = _batches(20, 10, (2,))
    _assert_identical(_collect(batches, 20, move_to_cpu=True), torch.cat(batches))
    tuples = [(b, b) for b in batches]
    result = _collect(tuples, 20, move_to_cpu=True)
    assert result[0] is batches[0]


def test_custom_collate_and_transform_are_called_exactly_as_before():
    calls = []

    def collate(batch, collected):
        calls.append(("collate", batch, len(collected)))
        return collected + [batch]

    def transform(collected):
        calls.append(("transform", len(collected)))
        return "result"

    batches = _batches(25, 10, (2,))
    collector = PredictionCollector(collate, transform, expected_rows=25)
    for batch in batches:
        collector.add(batch, len(batch))
    assert collector.result() == "result"
    assert [c[0] for c in calls] == ["collate"] * 3 + ["transform"]
    assert all(call[1] is batch for call, batch in zip(calls, batches))
    assert [c[2] for c in calls[:3]] == [0, 1, 2] and calls[3][1] == 3


def test_expected_num_samples():
    data = make_data(30)
    assert expected_num_samples(DataLoader(data, batch_size=4)) == 30
    subset = DataLoader(data, batch_size=4, sampler=torch.utils.data.SubsetRandomSampler(range(12)))
    assert expected_num_samples(subset) == 12
    # an iterable data set's __len__ is only a hint: not trusted
    assert expected_num_samples(DataLoader(_Stream(10, reported_len=None), batch_size=4)) is None
    assert expected_num_samples(DataLoader(_Stream(10, reported_len=7), batch_size=4)) is None
    assert expected_num_samples([1, 2]) is None
    # no automatic batching: the items may be whole batches
    assert expected_num_samples(DataLoader(data, batch_size=None)) is None


# ------------------------------------------------------------------------- through TrainLoop
class _UnsizedStream(IterableDataset):
    """An iterable data set without ``__len__``."""

    def __init__(self, num_samples):
        self.data = make_data(num_samples)

    def __iter__(self):
        return iter(self.data)


class _SizedStream(_UnsizedStream):
    """An iterable data set whose ``__len__`` may be wrong."""

    def __init__(self, num_samples, reported_len):
        super().__init__(num_samples)
        self.reported_len = reported_len

    def __len__(self):
        return self.reported_len


def _Stream(num_samples, reported_len):
    return _UnsizedStream(num_samples) if reported_len is None else _SizedStream(num_samples, reported_len)


def _loop(val_loader, model=None, **kwargs):
    model = make_mlp(dropout=0.0) if model is None else model
    return TrainLoop(model, val_loader, val_loader, None, torch.optim.SGD(model.parameters(), lr=0.1),
                     nn.CrossEntropyLoss(), show_progress=False, **kwargs)


def _predict_both_ways(val_loader, model=None, **kwargs):
    result = _loop(val_loader, model, **kwargs).predict_on_validation_set()
    reference = _loop(val_loader, model, collate_batch_pred_fn=_list_collate,
                      **kwargs).predict_on_validation_set()
    return result, reference


@pytest.mark.parametrize("num_samples,batch_size", [(40, 10), (43, 10), (5, 10)])
def test_loop_predictions_equal_the_list_and_cat_result(num_samples, batch_size):
    (y_pred, y_true, _), (ref_pred, ref_true, _) = _predict_both_ways(
        DataLoader(make_data(num_samples), batch_size=batch_size))
    _assert_identical(y_pred, ref_pred)
    _assert_identical(y_true, ref_true)
    # ... and the hand-written loop's
    model = make_mlp(dropout=0.0).eval()
    with torch.inference_mode():
        hand = [(model(x), y) for x, y in DataLoader(make_data(num_samples), batch_size=batch_size)]
    assert torch.equal(y_pred, torch.cat([p for p, _ in hand]))
    assert torch.equal(y_true, torch.cat([t for _, t in hand]))


@pytest.mark.parametrize("reported_len", [None, 10, 43, 200])
def test_loop_with_a_wrong_dataset_len(reported_len):
    (y_pred, y_true, _), (ref_pred, ref_true, _) = _predict_both_ways(
        DataLoader(_Stream(43, reported_len), batch_size=10))
    assert len(y_pred) == len(y_true) == 43
    _assert_identical(y_pred, ref_pred)
    _assert_identical(y_true, ref_true)


def test_loop_with_a_batch_sampler_that_reads_fewer_samples():
    data = make_data(40)
    val = DataLoader(data, batch_sampler=[[0, 1, 2], [5, 6], [9]])
    (y_pred, y_true, _), (ref_pred, ref_true, _) = _predict_both_ways(val)
    _assert_identical(y_pred, ref_pred)
    assert torch.equal(y_true, data.tensors[1][[0, 1, 2, 5, 6, 9]])


def test_loop_with_a_batch_sampler_that_reads_more_samples_than_the_dataset_has():
    data = make_data(5)
    batches = [[i % 5 for i in range(start, start + 3)] for start in range(0, 12, 3)]
    (y_pred, y_true, _), (ref_pred, ref_true, _) = _predict_both_ways(DataLoader(data, batch_sampler=batches))
    assert len(y_pred) == 12
    _assert_identical(y_pred, ref_pred)
    assert torch.equal(y_true, data.tensors[1][[i % 5 for i in range(12)]])


def test_far_too_large_estimate_that_cannot_be_allocated():
    batches = _batches(25, 10, (2,))
    _assert_identical(_collect(batches, 2 ** 62), torch.cat(batches))


def test_loop_with_a_dataset_of_whole_batches():
    data = make_data(43)
    batches = [data[i:i + 10] for i in range(0, 43, 10)]
    (y_pred, y_true, _), (ref_pred, ref_true, _) = _predict_both_ways(DataLoader(batches, batch_size=None))
    _assert_identical(y_pred, ref_pred)
    assert torch.equal(y_true, data.tensors[1])


def test_loop_with_amp_bfloat16_predictions():
    val = DataLoader(make_data(43), batch_size=10)
    (y_pred, _, _), (ref_pred, _, _) = _predict_both_ways(val, use_amp=True)
    assert y_pred.dtype == torch.bfloat16
    _assert_identical(y_pred, ref_pred)


def test_predict_with_model_without_moving_to_cpu():
    val = DataLoader(make_data(43), batch_size=10)
    y_pred, y_true, _ = _loop(val).predict_with_model(val, move_to_cpu=False)
    ref_pred, ref_true, _ = _loop(val, collate_batch_pred_fn=_list_collate).predict_with_model(val)
    _assert_identical(y_pred, ref_pred)
    _assert_identical(y_true, ref_true)


class _LinearNet(TTModel):
    """8 -> 3 linear TTModel; subclasses define get_predictions."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(8, 3)

    def forward(self, x):
        return self.linear(x)

    def get_loss(self, batch_data, criterion, device):
        x, y = batch_data
        return criterion(self(x), y)


class _TupleDictNet(_LinearNet):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def get_predictions(self, batch_data, device):
        x, y = batch_data
        out = self(x)
        if self.kind == "tuple":
            return (out, out.argmax(1)), y, {"n": [len(x)]}
        return {"logits": out}, y, None


@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_loop_with_tuple_and_dict_predictions(kind):
    val = DataLoader(make_data(23), batch_size=10)
    (y_pred, y_true, meta), (ref_pred, ref_true, ref_meta) = _predict_both_ways(val, _TupleDictNet(kind))
    assert type(y_pred) is type(ref_pred) is list and len(y_pred) == len(ref_pred)
    for got, want in zip(y_pred, ref_pred):
        if kind == "dict":
            assert got.keys() == want.keys() and torch.equal(got["logits"], want["logits"])
        else:
            assert torch.equal(got, want)
    _assert_identical(y_true, ref_true)
    assert meta == ref_meta


def test_loop_with_custom_collate_and_transform_functions():
    val = DataLoader(make_data(23), batch_size=10)
    y_pred, y_true, _ = _loop(val, collate_batch_pred_fn=append_concat_predictions,
                              pred_transform_fn=keep_list_transf).predict_on_validation_set()
    # tensor batches are appended whole (as the original aitoolbox does): one item per batch
    assert type(y_pred) is list and [p.shape for p in y_pred] == [(10, 3), (10, 3), (3, 3)]
    assert torch.equal(torch.cat(y_true), make_data(23).tensors[1])
    ref, _, _ = _loop(val).predict_on_validation_set()
    assert torch.equal(torch.cat(y_pred), ref)


class _EditingCallback(AbstractCallback):
    """Sees every batch and edits the predictions in place (as a list-keeping collate would keep)."""

    def __init__(self):
        super().__init__("editing")
        self.seen = []

    def on_after_batch_prediction(self, y_pred_batch, y_test_batch, metadata_batch, dataset_info):
        self.seen.append((len(y_pred_batch), dataset_info))
        y_pred_batch.zero_()


def test_callbacks_see_each_batch_and_their_in_place_edits_are_kept():
    val = DataLoader(make_data(23), batch_size=10)
    loop = _loop(val)
    callback = _EditingCallback()
    loop.callbacks_handler.register_callbacks([callback])
    y_pred, _, _ = loop.predict_on_validation_set(execute_callbacks=True)
    assert callback.seen == [(10, {"type": "validation"}), (10, {"type": "validation"}),
                             (3, {"type": "validation"})]
    assert torch.equal(y_pred, torch.zeros(23, 3))


# ------------------------------------------------------------------------- what users do with it
def test_returned_predictions_are_ordinary_tensors():
    val = DataLoader(make_data(43), batch_size=10)
    y_pred, y_true, _ = _loop(val).predict_on_validation_set(force_prediction=True)
    assert not y_pred.is_inference() and not y_pred.requires_grad and not y_true.is_inference()
    as_numpy = y_pred.numpy()
    assert as_numpy.shape == (43, 3) and np.array_equal(as_numpy, y_pred.clone().numpy())
    # used with tensors that require grad, in a loss, and back-propagated through
    weight = torch.ones(3, requires_grad=True)
    loss = nn.functional.cross_entropy(y_pred * weight, y_true)
    loss.backward()
    assert weight.grad is not None and weight.grad.shape == (3,)
    # modified in place (e.g. a metric normalising scores)
    before = y_pred.clone()
    y_pred.sub_(y_pred.max(dim=1, keepdim=True).values)
    y_pred[0] = 0
    y_true += 0
    assert torch.equal(y_pred[1:], (before - before.max(dim=1, keepdim=True).values)[1:])


class _GradientSaliencyNet(_LinearNet):
    """A model whose predictions need autograd (gradients w.r.t. the inputs)."""

    def get_predictions(self, batch_data, device):
        x, y = batch_data
        with torch.enable_grad():
            x = x.clone().requires_grad_(True)
            self(x).sum().backward()
        return x.grad, y, None


def test_get_predictions_may_use_autograd():
    val = DataLoader(make_data(23), batch_size=10)
    model = _GradientSaliencyNet()
    y_pred, _, _ = _loop(val, model).predict_on_validation_set()
    assert torch.allclose(y_pred, model.linear.weight.sum(0).detach().expand(23, 8))


class _OutputWatchingNet(TTModel):
    """Counts, at every forward, how many of its earlier outputs are still alive."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(8, 3)
        self.outputs, self.alive_at_forward = [], []

    def forward(self, x):
        gc.collect()
        self.alive_at_forward.append(sum(ref() is not None for ref in self.outputs))
        out = self.linear(x)
        self.outputs.append(weakref.ref(out))
        return out

    def get_loss(self, batch_data, criterion, device):
        x, y = batch_data
        return criterion(self(x), y)

    def get_predictions(self, batch_data, device):
        x, y = batch_data
        return self(x), y, None


@pytest.mark.parametrize("default", [True, False])
def test_default_collection_holds_no_earlier_batch_output(default):
    model = _OutputWatchingNet()
    kwargs = {} if default else {"collate_batch_pred_fn": _list_collate}
    val = DataLoader(make_data(43), batch_size=10)
    y_pred, _, _ = _loop(val, model, **kwargs).predict_on_validation_set()
    assert y_pred.shape == (43, 3)
    # defaults: each output was copied into the result and freed before the next forward;
    # a list-keeping collate holds all of them until the end (the seed's behaviour).
    assert model.alive_at_forward == ([0] * 5 if default else [0, 1, 2, 3, 4])
