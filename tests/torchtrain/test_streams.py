"""Training from loaders without a length (IterableDataset, generators): issue 15, item 1."""
import io
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from aitoolbox import TrainLoop
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.callbacks.progress import LineEpochProgress
from aitoolbox.torchtrain.schedulers.warmup import LinearWithWarmupScheduler

from _loop_helpers import assert_same_weights, loader, make_data, make_mlp
from test_event_order import Recorder


class Stream(IterableDataset):
    """The samples of a TensorDataset, in order, with no __len__ (as a streaming corpus)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        for i in range(len(self.dataset)):
            yield self.dataset[i]


class StatefulStream(Stream):
    """A stream that knows its position: state_dict() / load_state_dict() as torchdata's."""

    def __init__(self, dataset):
        super().__init__(dataset)
        self.position, self._start = 0, 0

    def __iter__(self):
        self.passes += 1
        start, self._start = self._start, 0
        for i in range(start, len(self.dataset)):
            self.position = i + 1
            yield self.dataset[i]
        self.position = 0

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self._start = state["position"]


def _loop(train_loader, data=None, **kwargs):
    model = make_mlp(dropout=0.0)
    val = loader(data, 10) if data is not None else None
    return TrainLoop(model, train_loader, val, None, torch.optim.SGD(model.parameters(), lr=0.1),
                     nn.CrossEntropyLoss(), show_progress=False, **kwargs)


@pytest.mark.parametrize("grad_accumulation", [1, 2, 4])
@pytest.mark.parametrize("how", [dict(num_epochs=2), dict(num_iterations=7)])
def test_stream_trains_as_the_same_data_with_a_length(how, grad_accumulation):
    data = make_data(30)  # 3 batches of 10 per pass
    sized = _loop(loader(data, 10))
    sized.fit(grad_accumulation=grad_accumulation, **how)
    stream = _loop(DataLoader(Stream(data), batch_size=10))
    stream.fit(grad_accumulation=grad_accumulation, **how)
    for p_stream, p_sized in zip(stream.model.parameters(), sized.model.parameters()):
        torch.testing.assert_close(p_stream, p_sized, rtol=0, atol=1e-6)
    assert (stream.epoch, stream.iteration, stream.total_iteration_idx, stream.num_optimizer_steps) == (
        sized.epoch, sized.iteration, sized.total_iteration_idx, sized.num_optimizer_steps)
    hist_stream, hist_sized = stream.train_history, sized.train_history
    assert hist_stream["accumulated_loss"] == pytest.approx(hist_sized["accumulated_loss"], abs=1e-6)
    assert hist_stream["loss"] == pytest.approx(hist_sized["loss"], abs=1e-6)


def test_full_windows_are_bit_exact_with_the_known_length_path():
    data = make_data(40)  # 4 batches: two full windows of 2
    sized, stream = _loop(loader(data, 10)), _loop(DataLoader(Stream(data), batch_size=10))
    sized.fit(num_epochs=2, grad_accumulation=2)
    stream.fit(num_epochs=2, grad_accumulation=2)
    assert_same_weights(stream.model, sized.model)


@pytest.mark.parametrize("fit_kwargs", [dict(num_epochs=2), dict(num_epochs=2, grad_accumulation=2),
                                        dict(num_iterations=4)])
def test_event_order_of_a_stream_is_the_known_length_one(fit_kwargs):
    data = make_data(30)
    events = []
    for train_loader in (loader(data, 10), DataLoader(Stream(data), batch_size=10)):
        recorder = Recorder()
        _loop(train_loader, data).fit(callbacks=[recorder], **fit_kwargs)
        events.append(recorder.events)
    assert events[0] == events[1]
    assert "optimizer_step" in events[1]


def test_a_stream_is_read_once_per_epoch_and_ends_each_epoch():
    data = make_data(25)  # batches of 10, 10, 5
    stream = Stream(data)
    loop = _loop(DataLoader(stream, batch_size=10), data)
    loop.fit(num_epochs=3, grad_accumulation=2)
    assert stream.passes == 3 + 3  # one training pass per epoch, one train-set evaluation per epoch
    assert (loop.epoch, loop.iteration, loop.num_optimizer_steps) == (3, 0, 6)
    assert len(loop.train_history["accumulated_loss"]) == 3


def test_generator_loader_and_iterations_across_epochs():
    data = make_data(20)

    class Batches:  # re-iterable, no __len__: a generator function's batches each pass
        def __iter__(self):
            for start in range(0, 20, 10):
                yield data.tensors[0][start:start + 10], data.tensors[1][start:start + 10]

    loop = _loop(Batches())
    loop.fit(num_iterations=5)
    assert (loop.epoch, loop.iteration, loop.total_iteration_idx) == (2, 1, 5)


def test_empty_stream_is_a_clear_error():
    data = make_data(0, num_features=8)
    loop = _loop(DataLoader(Stream(data), batch_size=10))
    with pytest.raises(ValueError, match="yielded no batches in epoch 1"):
        loop.fit(num_iterations=3)


def test_steps_unknown_is_a_clear_error_unless_given():
    data = make_data(30)
    loop = _loop(DataLoader(Stream(data), batch_size=10))
    with pytest.raises(ValueError, match="num_training_steps"):
        loop.fit(num_epochs=1, callbacks=[LinearWithWarmupScheduler(num_warmup_steps=1)])
    loop = _loop(DataLoader(Stream(data), batch_size=10))
    loop.fit(num_epochs=1, callbacks=[LinearWithWarmupScheduler(num_warmup_steps=1, num_training_steps=3)])
    loop = _loop(DataLoader(Stream(data), batch_size=10))
    loop.fit(num_iterations=4, callbacks=[LinearWithWarmupScheduler(num_warmup_steps=1)])
    assert loop.get_num_training_steps() == 4


def test_progress_lines_without_a_total():
    data = make_data(30)
    loop = _loop(DataLoader(Stream(data), batch_size=10))
    loop.fit(num_iterations=2)
    loop._epoch_len = math.inf
    progress = LineEpochProgress(loop, io.StringIO())
    assert progress.total is None
    line = progress.line(progress.start_time + 1.0)
    assert "batches" in line and "/" not in line.split(":")[1] and "ETA" not in line


class CheckpointAt(AbstractCallback):
    def __init__(self, at, path):
        super().__init__("checkpoint at")
        self.at, self.path = at, path

    def on_batch_end(self):
        if self.train_loop_obj.total_iteration_idx + 1 == self.at:
            self.train_loop_obj.save_checkpoint(self.path)


@pytest.mark.parametrize("stream_cls", [Stream, StatefulStream])
def test_mid_epoch_resume_of_a_stream(tmp_path, stream_cls):
    data = make_data(40)  # 4 batches per pass
    reference = _loop(DataLoader(stream_cls(data), batch_size=10))
    path = str(tmp_path / "ckpt.pt")
    reference.fit(num_epochs=2, grad_accumulation=3, callbacks=[CheckpointAt(6, path)])

    resumed_stream = stream_cls(data)
    resumed = _loop(DataLoader(resumed_stream, batch_size=10))
    resumed.load_checkpoint(path)
    state = torch.load(path, weights_only=True)
    assert state["iteration"] == 2
    assert (state["stream_position"] is None) == (stream_cls is Stream)
    read = []
    original_iter = type(resumed_stream).__iter__

    def counting_iter(self):
        for sample in original_iter(self):
            read.append(sample)
            yield sample
    type(resumed_stream).__iter__ = counting_iter
    try:
        resumed.fit(num_epochs=2, grad_accumulation=3)
    finally:
        type(resumed_stream).__iter__ = original_iter
    for p_resumed, p_reference in zip(resumed.model.parameters(), reference.model.parameters()):
        torch.testing.assert_close(p_resumed, p_reference, rtol=0, atol=1e-6)
    assert resumed.train_history["accumulated_loss"] == pytest.approx(
        reference.train_history["accumulated_loss"], abs=1e-6)
    # The checkpoint is 2 batches into epoch 2: the stateful stream starts at its saved position
    # (20 samples left), the other replays those 20 first; + the train-set evaluation at its end.
    train_reads = 20 if stream_cls is StatefulStream else 40
    assert len(read) == train_reads + 40


def test_tqdm_bar_without_a_total():
    from aitoolbox.torchtrain.callbacks.progress import TqdmEpochProgress
    data = make_data(30)
    loop = _loop(DataLoader(Stream(data), batch_size=10))
    loop._epoch_len = math.inf  # as in a stream's epoch trained to its end
    out = io.StringIO()
    bar = TqdmEpochProgress(loop, out)
    assert bar.bar.total is None
    loop.iteration = 2
    bar.update()
    assert bar.bar.n == 2  # counts batches, with no total to reach
    bar.close()
    assert "it [" in out.getvalue()  # tqdm's display without a total: "0it [00:00, ?it/s]"


class StatefulLoader:
    """A loader-level stateful stream (as torchdata's StatefulDataLoader): no __len__."""

    def __init__(self, data, batch_size=10):
        self.data, self.batch_size = data, batch_size
        self.next_batch, self._start, self.iterations = 0, 0, 0

    def __iter__(self):
        self.iterations += 1
        start, self._start = self._start, 0
        x, y = self.data.tensors
        for b in range(start, len(x) // self.batch_size):
            self.next_batch = b + 1
            yield x[b * self.batch_size:(b + 1) * self.batch_size], y[b * self.batch_size:(b + 1) * self.batch_size]
        self.next_batch = 0

    def state_dict(self):
        return {"next_batch": self.next_batch}

    def load_state_dict(self, state):
        self._start = state["next_batch"]


def test_mid_epoch_resume_of_a_loader_level_stateful_stream(tmp_path):
    data = make_data(50)  # 5 batches per pass
    path = str(tmp_path / "ckpt.pt")
    reference = _loop(StatefulLoader(data))
    reference.fit(num_epochs=2, grad_accumulation=2, callbacks=[CheckpointAt(3, path)])
    assert torch.load(path, weights_only=True)["stream_position"] == (3, {"next_batch": 3})
    resumed_loader = StatefulLoader(data)
    resumed = _loop(resumed_loader)
    resumed.load_checkpoint(path)
    resumed.fit(num_epochs=2, grad_accumulation=2)
    for p_resumed, p_reference in zip(resumed.model.parameters(), reference.model.parameters()):
        torch.testing.assert_close(p_resumed, p_reference, rtol=0, atol=1e-6)
    # epoch 1 read on from batch 3 (no replay), then the train-set evaluations and epoch 2
    assert resumed.train_history["accumulated_loss"] == pytest.approx(
        reference.train_history["accumulated_loss"], abs=1e-6)
