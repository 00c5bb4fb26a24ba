"""``gpu_mode='dp'``: DataParallel wrapping; on the CPU DataParallel just calls the module."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import ddp_helpers as helpers
from aitoolbox import ModelWrap, MultiOptimizer, TrainLoop, TTModel
from aitoolbox.torchtrain.data.batch_model_feed_defs import AbstractModelFeedDefinition
from aitoolbox.torchtrain.parallel import ModuleView, TTDataParallel
from aitoolbox.torchtrain.schedulers.basic import StepLRScheduler

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class HelperNet(TTModel):
    """``get_loss`` reaches the forward through a helper method and reads / writes attributes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(helpers.NUM_FEATURES, 1)
        self.loss_scale = 0.5
        self.last_batch_size = None

    def forward(self, x):
        return self.fc(x)

    def predict_batch(self, x):
        return self(x)

    def get_loss(self, batch_data, criterion, device):
        x, y = batch_data
        self.last_batch_size = len(x)
        return criterion(self.predict_batch(x.to(device)), y.to(device)) * self.loss_scale

    def get_predictions(self, batch_data, device):
        x, y = batch_data
        return self.predict_batch(x.to(device)), y, None


class CheckingFeed(AbstractModelFeedDefinition):
    def get_loss(self, model, batch_data, criterion, device):
        x, y = batch_data
        assert isinstance(model.module, nn.Sequential)  # the wrapper's attribute
        assert model.tag == "plain"  # the user's module attribute
        return criterion(model(x.to(device)), y.to(device))

    def get_predictions(self, model, batch_data, device):
        x, y = batch_data
        return model(x.to(device)), y, None


def _plain_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(helpers.NUM_FEATURES, 8), nn.Tanh(), nn.Linear(8, 1))
    model.tag = "plain"
    return model


def _count_wrapper_calls(loop):
    calls = []
    loop.strategy.wrapped_module.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    return calls


def test_self_call_in_get_loss_runs_through_tt_data_parallel():
    model_dp, model_single = HelperNet(), HelperNet()
    loop = helpers.make_loop(model_dp, batch_size=16, gpu_mode="dp")
    assert isinstance(loop.strategy.wrapped_module, TTDataParallel)
    calls = _count_wrapper_calls(loop)
    loop.fit(num_epochs=2)
    helpers.make_loop(model_single, batch_size=16).fit(num_epochs=2)

    train_batches, eval_batches = 2 * 4, 2 * (4 + 11)  # training, then end-of-epoch loss / val_loss
    assert len(calls) == train_batches + eval_batches
    assert model_dp.last_batch_size == 101 % 10  # set through the view, last by the final val batch
    assert helpers.max_weight_diff(model_dp, model_single) == 0.0
    first = loop.predict_on_validation_set()
    assert loop.predict_on_validation_set() is first and len(calls) == train_batches + eval_batches + 11


def test_model_wrap_and_plain_module_use_nn_data_parallel():
    wrapped = _plain_model()
    loop = TrainLoop(ModelWrap(wrapped, CheckingFeed()), DataLoader(helpers.train_set(), batch_size=16), None,
                     None, torch.optim.SGD(wrapped.parameters(), lr=0.05, momentum=0.9), nn.MSELoss(), gpu_mode="dp",
                     show_progress=False)
    assert type(loop.strategy.wrapped_module) is nn.DataParallel
    calls = _count_wrapper_calls(loop)
    loop.fit(num_epochs=1)
    reference = _plain_model()
    helpers.make_loop(reference, 16, val_data=False).fit(num_epochs=1)
    assert helpers.max_weight_diff(wrapped, reference) == 0.0
    assert len(calls) == 4 + 4

    plain = _plain_model()
    plain_loop = helpers.make_loop(plain, 16, gpu_mode="dp", val_data=False)
    assert type(plain_loop.strategy.wrapped_module) is nn.DataParallel
    plain_loop.fit(num_epochs=1)
    assert helpers.max_weight_diff(plain, reference) == 0.0


def test_user_built_tt_data_parallel_and_dp_model_args():
    net = HelperNet()
    user_wrapper = TTDataParallel(net)
    loop = helpers.make_loop(user_wrapper, 16, gpu_mode="dp")
    assert loop.strategy.wrapped_module is user_wrapper
    loop.fit(num_epochs=1)
    reference = HelperNet()
    helpers.make_loop(reference, 16).fit(num_epochs=1)
    assert helpers.max_weight_diff(net, reference) == 0.0

    model = HelperNet()
    loop = helpers.make_loop(model, 16, gpu_mode="dp")
    first_wrapper = loop.strategy.wrapped_module
    loop.fit(num_epochs=1, dp_model_args={"dim": 0})
    assert loop.strategy.wrapped_module is not first_wrapper  # re-wrapped with the user's arguments
    with pytest.raises(TypeError):
        loop.fit(num_epochs=2, dp_model_args={"not_a_dp_argument": 1})
    with pytest.raises(TypeError, match="num_gpus"):
        loop.fit(num_epochs=2, num_gpus=2)


def test_multiloss_multioptimizer_amp_and_scheduler_under_dp():
    def run(gpu_mode):
        model = helpers.TwoHeadNet()
        optimizer = MultiOptimizer([torch.optim.SGD(list(model.trunk.parameters()) + list(model.head_a.parameters()),
                                                    lr=0.05),
                                    torch.optim.SGD(model.head_b.parameters(), lr=0.05)])
        loop = TrainLoop(model, DataLoader(helpers.train_set(), batch_size=16), None, None, optimizer,
                         nn.MSELoss(), gpu_mode=gpu_mode, use_amp=True, show_progress=False)
        loop.fit(num_epochs=2, callbacks=[StepLRScheduler(step_size=1, gamma=0.5)], grad_accumulation=2)
        return model, loop

    model_dp, loop_dp = run("dp")
    model_single, loop_single = run("single")
    assert helpers.max_weight_diff(model_dp, model_single) == 0.0
    assert loop_dp.train_history["loss_a"] == loop_single.train_history["loss_a"]
    assert loop_dp.optimizer[0].param_groups[0]["lr"] == 0.0125


def test_module_view_resolution():
    net = HelperNet()
    wrapper = nn.DataParallel(net)
    view = ModuleView(wrapper, net)
    assert view.fc is net.fc and view.loss_scale == 0.5
    assert view.module is net  # not on the user's module: the wrapper's
    view.loss_scale = 2.0
    assert net.loss_scale == 2.0
    assert view.predict_batch.__self__ is view  # user methods are bound to the view
    assert view.parameters.__self__ is net  # torch's methods stay bound to the module
    with pytest.raises(AttributeError):
        view.no_such_attribute


def test_torch_compile_compiles_the_dp_wrapper():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, reference = HelperNet(), HelperNet()
    loop = helpers.make_loop(model, 16, gpu_mode="dp", torch_compile={"backend": "eager"})
    calls = _count_wrapper_calls(loop)
    loop.fit(num_epochs=1)
    helpers.make_loop(reference, 16).fit(num_epochs=1)
    assert counters["frames"]["ok"] >= 1 and len(calls) > 0
    assert helpers.max_weight_diff(model, reference) < 1e-6


@needs_gpu
def test_dp_on_gpu_matches_single_gpu():
    model_dp, model_single = helpers.RegressionNet(), helpers.RegressionNet()
    loop = helpers.make_loop(model_dp, 16, gpu_mode="dp")
    loop.fit(num_epochs=2)
    helpers.make_loop(model_single, 16).fit(num_epochs=2)
    assert next(model_dp.parameters()).is_cuda
    assert helpers.max_weight_diff(model_dp, model_single) < 1e-5
    assert len(loop.predict_on_validation_set()[0]) == 101
