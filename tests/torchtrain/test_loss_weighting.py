"""Accumulation weighted by samples or tokens: the update of one big batch (issue 15, item 3)."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from aitoolbox import MultiLoss, MultiOptimizer, TrainLoop, TTModel
from aitoolbox.torchtrain import LossSum
from aitoolbox.torchtrain.callbacks.gradient import GradNormClip

from _loop_helpers import make_data, make_mlp

PAD = 0


def _loop(model, train_loader, optimizer=None, criterion=None, **kwargs):
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.5)
    return TrainLoop(model, train_loader, None, None, optimizer,
                     criterion if criterion is not None else nn.CrossEntropyLoss(), show_progress=False,
                     end_auto_eval=False, **kwargs)


def _assert_close(model_a, model_b, atol=1e-6):
    for (name, p_a), p_b in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(p_a, p_b, rtol=0, atol=atol, msg=f"parameter {name} differs")


def _big_batch_step(model, x, y, lr=0.5, clip=None):
    """One SGD step on the concatenated batch with a mean loss (the reference)."""
    reference = copy.deepcopy(model)
    loss = nn.functional.cross_entropy(reference(x), y)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(reference.parameters(), clip)
    torch.optim.SGD(reference.parameters(), lr=lr).step()
    return reference, float(loss.detach())


@pytest.mark.parametrize("stream", [False, True])
def test_samples_weighting_equals_one_big_batch(stream):
    data = make_data(19)  # batches of 8, 8, 3: one window of 3
    model = make_mlp(dropout=0.0)
    reference, big_loss = _big_batch_step(model, *data.tensors)
    if stream:
        class Stream(IterableDataset):
            def __iter__(self):
                return (data[i] for i in range(len(data)))
        train_loader = DataLoader(Stream(), batch_size=8)
    else:
        train_loader = DataLoader(data, batch_size=8)
    loop = _loop(model, train_loader)
    loop.fit(num_epochs=1, grad_accumulation=3, loss_weighting="samples")
    assert loop.num_optimizer_steps == 1
    _assert_close(model, reference)
    # the history's loss is the same weighted mean: the big batch's loss at the window's weights
    assert loop.train_history["accumulated_loss"][0] == pytest.approx(big_loss, abs=1e-6)


def test_batches_weighting_differs_from_a_big_batch_with_a_short_batch():
    data = make_data(19)
    model = make_mlp(dropout=0.0)
    reference, _ = _big_batch_step(model, *data.tensors)
    _loop(model, DataLoader(data, batch_size=8)).fit(num_epochs=1, grad_accumulation=3)
    with pytest.raises(AssertionError):
        _assert_close(model, reference, atol=1e-4)  # what 'samples' fixes


def test_samples_weighting_several_windows_matches_big_batch_steps():
    data = make_data(27)  # batches 8, 8, 8, 3; windows of 2: (8, 8), (8, 3)
    model = make_mlp(dropout=0.0)
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    x, y = data.tensors
    for window in (slice(0, 16), slice(16, 27)):
        nn.functional.cross_entropy(reference(x[window]), y[window]).backward()
        optimizer.step()
        optimizer.zero_grad()
    loop = _loop(model, DataLoader(data, batch_size=8))
    loop.fit(num_epochs=1, grad_accumulation=2, loss_weighting="samples")
    _assert_close(model, reference)


def test_clipping_sees_the_final_gradients_and_the_amp_scaler_works():
    data = make_data(19)
    model = make_mlp(dropout=0.0)
    reference, _ = _big_batch_step(model, *data.tensors, clip=0.05)
    loop = _loop(model, DataLoader(data, batch_size=8))
    # A GradScaler on CPU (float32 autocast off): the gradients are scaled by 2**10 until unscaled.
    handler = loop.amp_handler
    handler.scaler = handler.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    handler.__dict__.pop("step", None)
    loop.fit(num_epochs=1, grad_accumulation=3, loss_weighting="samples", callbacks=[GradNormClip(0.05)])
    _assert_close(model, reference)
    assert handler.scaler.get_scale() == 2.0 ** 10  # no inf: the step ran


class TwoHeads(TTModel):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk, self.head_a, self.head_b = nn.Linear(8, 6), nn.Linear(6, 3), nn.Linear(6, 3)

    def forward(self, x):
        hidden = torch.tanh(self.trunk(x))
        return self.head_a(hidden), self.head_b(hidden)

    def get_loss(self, batch_data, criterion, device):
        x, y = batch_data
        out_a, out_b = self(x)
        return MultiLoss({"a": criterion(out_a, y), "b": criterion(out_b, (y + 1) % 3)})

    def get_predictions(self, batch_data, device):
        x, y = batch_data
        return self(x)[0], y, None


def test_samples_weighting_with_multiloss_and_multioptimizer():
    data = make_data(19)
    model = TwoHeads()
    reference = copy.deepcopy(model)
    x, y = data.tensors
    out_a, out_b = reference(x)
    total = nn.functional.cross_entropy(out_a, y) + nn.functional.cross_entropy(out_b, (y + 1) % 3)
    total.backward()
    torch.optim.SGD(list(reference.trunk.parameters()) + list(reference.head_a.parameters()), lr=0.5).step()
    torch.optim.SGD(reference.head_b.parameters(), lr=0.3).step()

    optimizer = MultiOptimizer([torch.optim.SGD(list(model.trunk.parameters()) + list(model.head_a.parameters()),
                                                lr=0.5),
                                torch.optim.SGD(model.head_b.parameters(), lr=0.3)])
    loop = _loop(model, DataLoader(data, batch_size=8), optimizer=optimizer)
    loop.fit(num_epochs=1, grad_accumulation=3, loss_weighting="samples")
    _assert_close(model, reference)
    history = loop.train_history
    assert history["accumulated_loss_a"][0] == pytest.approx(float(nn.functional.cross_entropy(
        TwoHeads()(x)[0], y)), abs=1e-6)


class Sequences(Dataset):
    """Token sequences of different lengths, padded per batch by the collate function."""

    def __init__(self, lengths, vocab=11, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.items = [torch.randint(1, vocab, (n,), generator=gen) for n in lengths]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, idx):
        return self.items[idx]


def pad_batch(items):
    tokens = nn.utils.rnn.pad_sequence(items, batch_first=True, padding_value=PAD)
    return tokens[:, :-1], tokens[:, 1:]  # next-token prediction; padded targets are PAD


class TinyLM(TTModel):
    def __init__(self, vocab=11):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.out = nn.Embedding(vocab, 8), nn.Linear(8, vocab)

    def forward(self, tokens):
        return self.out(torch.tanh(self.embed(tokens)))

    def get_loss(self, batch_data, criterion, device):
        inputs, targets = batch_data
        logits = self(inputs)
        loss_sum = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD,
                                               reduction="sum")
        return LossSum(loss_sum, (targets != PAD).sum())

    def get_predictions(self, batch_data, device):
        inputs, targets = batch_data
        return self(inputs), targets, None


def test_tokens_weighting_equals_one_big_batch_of_padded_sequences():
    lengths = [3, 9, 4, 12, 2, 7, 5]
    data = Sequences(lengths)
    model = TinyLM()
    reference = copy.deepcopy(model)
    inputs, targets = pad_batch(data.items)  # all sequences, padded to the longest
    loss = nn.functional.cross_entropy(reference(inputs).flatten(0, 1), targets.flatten(), ignore_index=PAD)
    loss.backward()
    torch.optim.SGD(reference.parameters(), lr=0.5).step()

    loop = _loop(model, DataLoader(data, batch_size=3, collate_fn=pad_batch), criterion=None)
    loop.fit(num_epochs=1, grad_accumulation=3, loss_weighting="tokens")
    assert loop.num_optimizer_steps == 1
    _assert_close(model, reference)
    assert loop.train_history["accumulated_loss"][0] == pytest.approx(float(loss), abs=1e-6)


def test_tokens_weighting_needs_a_loss_sum():
    data = make_data(19)
    loop = _loop(make_mlp(), DataLoader(data, batch_size=8))
    with pytest.raises(TypeError, match="LossSum"):
        loop.fit(num_epochs=1, loss_weighting="tokens")


def test_unknown_loss_weighting_is_refused_before_training():
    model = make_mlp()
    loop = _loop(model, DataLoader(make_data(19), batch_size=8))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="loss_weighting must be one of"):
        loop.fit(num_epochs=1, loss_weighting="sample")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_weighted_mid_epoch_checkpoint_resumes_the_weighted_history(tmp_path):
    data = make_data(27)
    from test_streams import CheckpointAt
    path = str(tmp_path / "ckpt.pt")
    reference = _loop(make_mlp(dropout=0.0), DataLoader(data, batch_size=8))
    reference.fit(num_epochs=2, grad_accumulation=3, loss_weighting="samples", callbacks=[CheckpointAt(2, path)])
    resumed = _loop(make_mlp(seed=5, dropout=0.0), DataLoader(data, batch_size=8))
    resumed.load_checkpoint(path)
    assert resumed.loss_weight_accum == [8, 8]
    resumed.fit(num_epochs=2, grad_accumulation=3, loss_weighting="samples")
    _assert_close(resumed.model, reference.model, atol=0)
    assert resumed.train_history["accumulated_loss"] == reference.train_history["accumulated_loss"]


def test_evaluation_of_a_loss_sum_model_is_the_mean_over_all_items():
    data = Sequences([3, 9, 4, 12, 2, 7, 5])
    model = TinyLM()
    loop = _loop(model, DataLoader(data, batch_size=3, collate_fn=pad_batch), criterion=None)
    inputs, targets = pad_batch(data.items)
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten(), ignore_index=PAD)
    loss = loop.evaluate_model_loss(DataLoader(data, batch_size=3, collate_fn=pad_batch))
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)


def test_calling_the_loop_passes_loss_weighting():
    data = make_data(19)
    model = make_mlp(dropout=0.0)
    reference, _ = _big_batch_step(model, *data.tensors)
    _loop(model, DataLoader(data, batch_size=8))(num_epochs=1, grad_accumulation=3, loss_weighting="samples")
    _assert_close(model, reference)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_samples_weighting_under_cuda_float16_amp_with_its_grad_scaler():
    data = make_data(19)
    model = make_mlp(dropout=0.0)
    reference, _ = _big_batch_step(model, *data.tensors)  # float32 on the CPU
    loop = _loop(model, DataLoader(data, batch_size=8), use_amp="fp16")
    loop.fit(num_epochs=1, grad_accumulation=3, loss_weighting="samples", callbacks=[GradNormClip(10.0)])
    assert loop.amp_scaler is not None and not loop.optimizer_step_skipped
    _assert_close(model.cpu(), reference, atol=1e-2)
