"""The prediction store: one pass per training iteration, shared by every consumer (SPEC 4.5)."""
import torch
from torch import nn

from aitoolbox import TrainLoop

from _loop_helpers import CountingNet, loader, make_data


def _loop():
    data = make_data(40)
    model = CountingNet()
    loop = TrainLoop(model, loader(data, 10, shuffle=True), loader(data, 10), loader(data, 20),
                     torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), show_progress=False)
    return loop, model


def test_second_prediction_call_runs_no_model_call():
    loop, model = _loop()
    first = loop.predict_on_validation_set()
    calls = model.forward_calls
    assert calls == 4
    second = loop.predict_on_validation_set()
    assert model.forward_calls == calls
    assert second[0] is first[0]


def test_force_prediction_recomputes():
    loop, model = _loop()
    loop.predict_on_validation_set()
    loop.predict_on_validation_set(force_prediction=True)
    assert model.forward_calls == 8


def test_training_step_invalidates_cache():
    loop, model = _loop()
    before = loop.predict_on_validation_set()[0].clone()
    loop.fit(num_iterations=1)
    calls = model.forward_calls
    after = loop.predict_on_validation_set()[0]
    assert model.forward_calls == calls + 4
    assert not torch.equal(before, after)


def test_loss_cache_shared_with_end_of_epoch_evaluation():
    loop, model = _loop()
    loop.fit(num_epochs=1)  # the epoch end evaluated train and validation loss
    calls = model.forward_calls
    assert loop.evaluate_loss_on_validation_set(float_dict_format=True) == loop.train_history["val_loss"][-1]
    assert loop.evaluate_loss_on_train_set(float_dict_format=True) == loop.train_history["loss"][-1]
    assert model.forward_calls == calls


def test_loading_a_state_invalidates_cache():
    loop, model = _loop()
    state = loop.state_dict()
    loop.predict_on_test_set()
    loop.load_state_dict(state)
    calls = model.forward_calls
    loop.predict_on_test_set()
    assert model.forward_calls == calls + 2


def test_metadata_is_collected_over_batches():
    loop, _ = _loop()
    _, y_true, metadata = loop.predict_on_validation_set()
    assert len(metadata["index_first"]) == len(y_true) == 40
