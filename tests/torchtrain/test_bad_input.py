"""Bad input: a clear error naming the argument, before any training work (SPEC 7)."""
import pytest
import torch
from torch import nn

from aitoolbox import MultiLoss, MultiOptimizer, TrainLoop, TTModel

from _loop_helpers import CountingNet, loader, make_data, make_mlp


def _loop(model=None, **kwargs):
    data = make_data(20)
    model = model or make_mlp()
    args = dict(model=model, train_loader=loader(data, 10), validation_loader=None, test_loader=None,
                optimizer=torch.optim.SGD(model.parameters(), lr=0.1), criterion=nn.CrossEntropyLoss(),
                show_progress=False)
    args.update(kwargs)
    return TrainLoop(**args)


def test_unknown_gpu_mode():
    with pytest.raises(ValueError, match="gpu_mode must be one of"):
        _loop(gpu_mode="tpu")


@pytest.mark.parametrize("epochs, iterations", [(0, 0), (2, 5)])
def test_exactly_one_of_num_epochs_num_iterations(epochs, iterations):
    model = CountingNet()
    loop = _loop(model=model)
    with pytest.raises(ValueError, match="exactly one of num_epochs and num_iterations"):
        loop.fit(num_epochs=epochs, num_iterations=iterations)
    assert model.forward_calls == 0


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_grad_accumulation_must_be_positive_int(value):
    with pytest.raises(ValueError, match="grad_accumulation must be an int >= 1"):
        _loop().fit(num_epochs=1, grad_accumulation=value)


def test_negative_epochs():
    with pytest.raises(ValueError, match="num_epochs must be a non-negative int"):
        _loop().fit(num_epochs=-1)


def test_ttmodel_without_get_loss():
    class NoLoss(TTModel):
        def forward(self, x):
            return x

        def get_predictions(self, batch_data, device):
            return batch_data, batch_data, None

    with pytest.raises(TypeError, match="abstract method.*get_loss"):  # get_loss is abstract (as in 1.8)
        NoLoss()


def test_model_of_wrong_type():
    with pytest.raises(TypeError, match="model must be a TTModel, a ModelWrap or a torch.nn.Module"):
        TrainLoop(object(), loader(make_data(10), 5), None, None, torch.optim.SGD(make_mlp().parameters(), lr=1),
                  None)


def test_optimizer_of_wrong_type():
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer, a MultiOptimizer or an optimizer-like object"):
        _loop(optimizer="adam")


def test_multiloss_with_more_losses_than_optimizers_fails_before_any_update():
    class ThreeLosses(TTModel):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(8, 3)

        def forward(self, x):
            return self.linear(x)

        def get_loss(self, batch_data, criterion, device):
            out = self(batch_data[0])
            return MultiLoss({"a": out.mean(), "b": out.sum(), "c": out.max()})

        def get_predictions(self, batch_data, device):
            return self(batch_data[0]), batch_data[1], None

    model = ThreeLosses()
    before = [p.detach().clone() for p in model.parameters()]
    opts = MultiOptimizer([torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(model.parameters(), lr=0.1)])
    loop = _loop(model=model, optimizer=opts)
    with pytest.raises(ValueError, match="only 2 optimizer"):
        loop.fit(num_epochs=1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_missing_loader_for_prediction():
    loop = _loop()
    with pytest.raises(ValueError, match="validation_loader is None"):
        loop.predict_on_validation_set()
    with pytest.raises(ValueError, match="test_loader is None"):
        loop.evaluate_loss_on_test_set()


def test_unknown_use_amp_key():
    with pytest.raises(ValueError, match=r"use_amp has unknown GradScaler argument\(s\) \['init_scal'\]"):
        _loop(use_amp={"init_scal": 1024.0})


@pytest.mark.parametrize("value", [1, 0.5, ["bf16"]])
def test_use_amp_wrong_type(value):
    with pytest.raises(TypeError, match="use_amp must be True/False, a dtype name"):
        _loop(use_amp=value)


@pytest.mark.parametrize("value", ["yes", "float32", torch.float32, {"dtype": "half"}])
def test_use_amp_unknown_precision_lists_the_valid_values(value):
    with pytest.raises(ValueError, match=r"names no precision we run; valid values of use_amp: False, True, "
                                         r"'bf16', 'bfloat16', 'fp16', 'float16'"):
        _loop(use_amp=value)


def test_use_amp_bfloat16_with_scaler_arguments():
    with pytest.raises(ValueError, match=r"bfloat16, which runs without a GradScaler.*\['init_scale'\]"):
        _loop(use_amp={"dtype": "bf16", "init_scale": 1024.0})


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
@pytest.mark.parametrize("gpu_mode", ["single", "dp", "ddp"])
@pytest.mark.parametrize("value", ["fp16", "float16", torch.float16, {"dtype": "fp16", "init_scale": 8.0}])
def test_use_amp_float16_without_cuda_fails_at_construction(value, gpu_mode):
    with pytest.raises(ValueError, match=r"use_amp=.* asks for float16 autocast with a GradScaler, which needs "
                                         r"CUDA.*use use_amp='bf16'"):
        _loop(use_amp=value, gpu_mode=gpu_mode)


def test_use_amp_float16_on_cpu_ddp_ranks_fails_before_spawning(monkeypatch):
    # On a machine with GPUs the parent cannot refuse float16 at construction (the ranks may train
    # on CUDA); on_gpu=False puts them on the CPU: fit refuses before any process starts.
    import aitoolbox.torchtrain.train_loop.components.validation as validation_module
    from aitoolbox.torchtrain.train_loop.strategies import launch as ddp_launch

    monkeypatch.setattr(validation_module.torch.cuda, "is_available", lambda: True)
    loop = _loop(use_amp="fp16", gpu_mode="ddp")
    monkeypatch.setattr(ddp_launch, "spawn_fit", lambda *a, **k: pytest.fail("spawned"))
    with pytest.raises(ValueError, match=r"training runs on the CPU \(gpu_mode='ddp' with on_gpu=False\)"):
        loop.fit(num_epochs=1, num_gpus=2, on_gpu=False, backend="gloo")


@pytest.mark.parametrize("value", [0, -2, 1.5, "always"])
def test_end_auto_eval_invalid(value):
    with pytest.raises(ValueError, match="end_auto_eval must be True, False or an int >= 1"):
        _loop(end_auto_eval=value)


def test_missing_train_loader():
    loop = _loop(train_loader=None)  # allowed: a loop for prediction only (as in the original)
    with pytest.raises(ValueError, match="train_loader is None: fit"):
        loop.fit(num_epochs=1)


def test_callback_that_is_not_a_callback():
    with pytest.raises(TypeError, match=r"callbacks\[0\] is a function"):
        _loop().fit(num_epochs=1, callbacks=[lambda: None])


def test_unknown_fit_kwarg_for_single_mode():
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        _loop().fit(num_epochs=1, num_gpus=2)


def test_cuda_device_idx_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="cuda_device_idx=3"):
        _loop(cuda_device_idx=3)


def test_empty_train_loader():
    data = make_data(5)
    with pytest.raises(ValueError, match="train_loader yields no batches"):
        _loop(train_loader=loader(data, 10, drop_last=True)).fit(num_epochs=1)


def test_a_loader_that_is_not_iterable_is_named_at_fit_and_at_prediction():
    # aitoolbox 1.8 let a TrainLoop hold any object as a loader; the check comes at first use
    model = make_mlp()
    loop = TrainLoop(model, loader(make_data(10), 5), 100, None, torch.optim.SGD(model.parameters(), lr=1),
                     nn.CrossEntropyLoss())
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(TypeError, match="validation_loader must be a torch.utils.data.DataLoader .* got int"):
        loop.fit(num_epochs=1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(TypeError, match="validation_loader must be a torch.utils.data.DataLoader .* got int"):
        loop.predict_on_validation_set()
