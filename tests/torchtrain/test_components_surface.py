"""aitoolbox 1.8's surface of the model contract and the loop's components: abstract TTModel,
TTBasicModel's feed, MultiLoss / MultiOptimizer with optimizer-like objects, the wrappers' missing
attributes, ModelPredictionStore's dict view and the CallbacksHandler's per-hook lists."""
import pytest
import torch
from torch import nn

from _loop_helpers import loader, make_data, make_mlp
from aitoolbox import TrainLoop, TTBasicModel, TTModel
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.data.batch_model_feed_defs import move_to_device
from aitoolbox.torchtrain.multi_loss_optim import MultiLoss, MultiOptimizer
from aitoolbox.torchtrain.parallel import TTDataParallel
from aitoolbox.torchtrain.train_loop.components.callback_handler import CallbacksHandler
from aitoolbox.torchtrain.train_loop.components.model_prediction_store import ModelPredictionStore


# ---------------------------------------------------------------- TTModel / TTBasicModel
def test_ttmodel_without_its_methods_cannot_be_instantiated():
    class NoPredictions(TTModel):
        def get_loss(self, batch_data, criterion, device):
            return 0

    with pytest.raises(TypeError, match="get_predictions"):
        NoPredictions()

    class Complete(NoPredictions):
        def get_predictions(self, batch_data, device):
            return 1, 2, None

    model = Complete()
    assert isinstance(model, nn.Module) and model.transfer_model_attributes == []


class Recorder:
    """A batch element that is not a tensor but knows how to move itself (``.to``)."""

    def __init__(self, value):
        self.value, self.device = value, "cpu"

    def to(self, device):
        self.device = device
        return self


class AddNet(TTBasicModel):
    def forward(self, a, b):
        return a.value + b.value


def test_ttbasicmodel_moves_elements_with_their_own_to_and_keeps_the_prediction_target():
    model = AddNet()
    a, b, y = Recorder(1), Recorder(2), Recorder(10)
    assert model.get_loss([a, b, y], lambda pred, target: pred * target.value, "meta") == 30
    assert (a.device, b.device, y.device) == ("meta", "meta", "meta")

    a, b, y = Recorder(1), Recorder(2), Recorder(10)
    pred, target, metadata = model.get_predictions([a, b, y], "meta")
    assert (pred, target, metadata) == (3, y, {})
    assert (a.device, b.device, y.device) == ("meta", "meta", "cpu")  # the target stays where it was


def test_move_to_device_leaves_strings_and_classes_alone():
    assert move_to_device(["text", b"raw", Recorder, 3], torch.device("cpu")) == ["text", b"raw", Recorder, 3]
    moved = move_to_device({"r": Recorder(1)}, "meta")
    assert moved["r"].device == "meta"


class BasicNet(TTBasicModel):
    def __init__(self):
        super().__init__()
        self.net = make_mlp(dropout=0.0)

    def forward(self, x):
        return self.net(x)


def test_ttbasicmodel_predictions_carry_an_empty_metadata_dict():
    data = make_data(20)
    loop = TrainLoop(BasicNet(), None, loader(data, 10), None, None, None, show_progress=False)
    y_pred, y_true, metadata = loop.predict_on_validation_set()
    assert metadata == {} and y_pred.shape == (20, 3) and torch.equal(y_true, data.tensors[1])


# ---------------------------------------------------------------- MultiLoss / MultiOptimizer
def test_multiloss_item_uses_each_loss_item():
    losses = MultiLoss({"float": torch.tensor(1.5), "int": torch.tensor(3)})
    items = losses.item()
    assert items == {"float": 1.5, "int": 3} and isinstance(items["int"], int)


class LooseOptimizer:
    """Optimizer-like, not a torch.optim.Optimizer; its zero_grad takes no argument."""

    def __init__(self):
        self.steps = self.zeroed = 0

    def step(self):
        self.steps += 1

    def zero_grad(self):
        self.zeroed += 1

    def state_dict(self):
        return {"steps": self.steps}


def test_multioptimizer_accepts_optimizer_like_objects():
    first, second = LooseOptimizer(), LooseOptimizer()
    optimizers = MultiOptimizer([first, second])
    optimizers.zero_grad()
    optimizers.step(1)
    assert (first.zeroed, second.zeroed, first.steps, second.steps) == (1, 1, 0, 1)
    assert optimizers.state_dict() == [{"steps": 0}, {"steps": 1}]


def test_multioptimizer_zero_grad_keeps_gradients_as_zeros_when_asked():
    param = nn.Parameter(torch.ones(2))
    param.grad = torch.ones(2)
    optimizers = MultiOptimizer([torch.optim.SGD([param], lr=0.1)])
    optimizers.zero_grad(set_to_none=False)
    assert torch.equal(param.grad, torch.zeros(2))
    optimizers.zero_grad()
    assert param.grad is None


def test_multioptimizer_rejects_what_is_not_an_optimizer():
    class OnlyStep:
        def step(self):
            pass

    with pytest.raises(TypeError, match=r"optimizer_list\[1\] must be .* got a OnlyStep \(it has no zero_grad method\)"):
        MultiOptimizer([LooseOptimizer(), OnlyStep()])


# ---------------------------------------------------------------- wrappers
class HiddenNet(TTModel):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def forward(self, x):
        return self.linear(x)

    def get_loss(self, batch_data, criterion, device):
        return self.not_defined_anywhere

    def get_predictions(self, batch_data, device):
        return None, None, None


def test_a_name_neither_the_model_nor_the_wrapper_has_is_an_attribute_error_naming_the_model():
    wrapper = TTDataParallel(HiddenNet())
    with pytest.raises(AttributeError, match=r"'HiddenNet' object \(wrapped in TTDataParallel\) has no "
                                             r"attribute 'not_defined_anywhere'"):
        wrapper.get_loss(None, None, None)
    with pytest.raises(AttributeError, match="not_defined_either"):
        wrapper.not_defined_either  # noqa: B018


# ---------------------------------------------------------------- ModelPredictionStore
def test_prediction_store_dict_view():
    store = ModelPredictionStore(auto_purge=True)
    assert store.prediction_store == {"iteration_idx": -1}
    store.insert_val_predictions(("p", "t", {}), 0)
    store.insert_train_loss(0.5, 0)
    assert store.prediction_store == {"iteration_idx": 0, "val_pred": ("p", "t", {}), "train_loss": 0.5}
    store.insert_test_predictions("later", 3)
    assert store.prediction_store == {"iteration_idx": 3, "test_pred": "later"}
    view = store.prediction_store
    view["val_pred"] = "changed"
    assert "val_pred" not in store.prediction_store  # a snapshot: the cache itself is unchanged


def test_prediction_store_without_auto_purge_keeps_every_entry_with_its_own_tag():
    store = ModelPredictionStore()
    store.insert_val_predictions("first", 0)
    store.insert_val_predictions("second", 1)
    assert store.prediction_store == {"iteration_idx": -1, "val_pred": "second"}
    assert store.get_val_predictions(1) == "second" and not store.has_val_predictions(0)


# ---------------------------------------------------------------- CallbacksHandler
class BeginCB(AbstractCallback):
    def __init__(self, execution_order=0, device_idx_execution=None):
        super().__init__("begin", execution_order, device_idx_execution)
        self.calls, self.registered = 0, False

    def on_train_loop_registration(self):
        self.registered = True

    def on_batch_begin(self):
        self.calls += 1


class BeginEndCB(BeginCB):
    def on_epoch_end(self):
        pass


def _loop():
    return TrainLoop(make_mlp(), None, None, None, None, None, show_progress=False)


def test_handler_per_hook_lists_follow_the_registration():
    loop = _loop()
    late, early = BeginCB(execution_order=5), BeginEndCB(execution_order=1)
    loop.callbacks_handler.register_callbacks([late, early])
    handler = loop.callbacks_handler
    assert handler.cbs_on_batch_begin == [early, late] and handler.cbs_on_epoch_end == [early]
    assert handler.cbs_on_train_begin == [] and handler.cbs_on_after_batch_prediction == []
    assert handler.registered_cbs == [[], [early], [], [], [early, late], [], [], [], [], []]


def test_handler_rank_filter():
    loop = _loop()
    handler = loop.callbacks_handler
    everywhere, here, elsewhere = BeginCB(), BeginCB(device_idx_execution=0), BeginCB(device_idx_execution=1)
    assert handler.should_enable_callback(everywhere) and handler.should_enable_callback(here)
    assert not handler.should_enable_callback(elsewhere)
    with pytest.raises(ValueError, match="device_idx_execution=1"):   # rank 1 does not exist here
        handler.split_on_execution_position([elsewhere])
    handler.split_on_execution_position([everywhere])
    handler.registered_callbacks.append(elsewhere)  # as if registered before the process's rank was known
    handler.mp_filter_callbacks()
    assert loop.callbacks == [everywhere]
    handler.execute_batch_begin()
    assert (everywhere.calls, elsewhere.calls) == (1, 0)


def test_split_on_execution_position_registers_the_loop_only_when_asked():
    handler = CallbacksHandler(_loop())
    quiet, registered = BeginCB(execution_order=2), BeginCB(execution_order=1)
    handler.split_on_execution_position([quiet])
    handler.split_on_execution_position([registered], register_train_loop=True)
    assert not quiet.registered and quiet.train_loop_obj is None
    assert registered.registered and registered.train_loop_obj is handler.train_loop_obj
    assert handler.cbs_on_batch_begin == [registered, quiet]
    handler.execute_batch_begin()
    assert (quiet.calls, registered.calls) == (1, 1)


def test_enforce_callbacks_quality_rejects_non_callbacks():
    handler = _loop().callbacks_handler
    handler.enforce_callbacks_quality([BeginCB()])
    with pytest.raises(TypeError, match=r"callbacks\[1\] is a str"):
        handler.enforce_callbacks_quality([BeginCB(), "not a callback"])


class RecordingSGD:
    """An optimizer wrapper that does not subclass torch.optim.Optimizer (as aitoolbox 1.8 allowed)."""

    def __init__(self, params, lr):
        self.inner = torch.optim.SGD(params, lr=lr)
        self.steps = 0

    def step(self):
        self.steps += 1
        self.inner.step()

    def zero_grad(self):
        self.inner.zero_grad()


def test_an_optimizer_like_object_trains_the_model_like_the_optimizer_it_wraps():
    model, twin = make_mlp(dropout=0.0), make_mlp(dropout=0.0)   # the same seed: the same weights
    data = make_data(40)
    wrapper = RecordingSGD(model.parameters(), lr=0.1)
    TrainLoop(model, loader(data, 8), None, None, wrapper, nn.CrossEntropyLoss(), show_progress=False).fit(num_epochs=1)
    TrainLoop(twin, loader(data, 8), None, None, torch.optim.SGD(twin.parameters(), lr=0.1), nn.CrossEntropyLoss(),
              show_progress=False).fit(num_epochs=1)
    assert wrapper.steps == 5
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def test_an_object_without_the_optimizer_methods_is_refused_by_name():
    class NoStep:
        def zero_grad(self):
            pass

    with pytest.raises(TypeError, match=r"optimizer must be .* got a NoStep \(it has no step method\)"):
        TrainLoop(make_mlp(), loader(make_data(10), 5), None, None, NoStep(), nn.CrossEntropyLoss())
