"""Mixed precision (SPEC 4.7): ``use_amp`` True / dict = the device's usual dtype (float16 + GradScaler
on CUDA, bfloat16 on CPU); ``'bf16'`` = bfloat16 without a scaler on CUDA and CPU; ``'fp16'`` =
float16 + GradScaler, CUDA only; in every gpu_mode."""
import operator
import pickle
import threading

import pytest
import torch
from torch import nn

import ddp_helpers as helpers
from aitoolbox import TrainLoop, TTModel
from aitoolbox.torchtrain.train_loop.components import amp_handler as amp_module
from aitoolbox.torchtrain.train_loop.components.amp_handler import AmpHandler, AutocastDtypeHook, resolve_precision

from _loop_helpers import loader, make_data

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_bf16_gpu = pytest.mark.skipif(not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(),
                                    reason="needs a CUDA GPU with bfloat16")
BF16_SPELLINGS = ["bf16", "bfloat16", "BF16", torch.bfloat16, {"dtype": "bf16"}, {"dtype": torch.bfloat16}]


class DtypeNet(TTModel):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
        self.seen_dtypes = set()

    def forward(self, x):
        out = self.net(x)
        self.seen_dtypes.add(out.dtype)
        return out

    def get_loss(self, batch_data, criterion, device):
        x, y = batch_data
        return criterion(self(x.to(device)), y.to(device))

    def get_predictions(self, batch_data, device):
        x, y = batch_data
        return self(x.to(device)).float(), y, None


def test_cpu_amp_trains_in_bfloat16():
    data = make_data(200)
    model = DtypeNet()
    loop = TrainLoop(model, loader(data, 20, shuffle=True), loader(data, 50), None,
                     torch.optim.Adam(model.parameters(), lr=1e-2), nn.CrossEntropyLoss(), use_amp=True,
                     show_progress=False)
    loop.fit(num_epochs=5)
    assert model.seen_dtypes == {torch.bfloat16}
    assert loop.amp_scaler is None  # bfloat16 needs no loss scaling
    assert loop.train_history["val_loss"][-1] < loop.train_history["val_loss"][0]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_amp_handler_is_pass_through_when_off():
    handler = AmpHandler(False, torch.device("cpu"))
    with handler.autocast():
        assert not torch.is_autocast_enabled("cpu")
    assert handler.scaler is None and handler.state_dict() == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_float16_gradscaler_parity_with_pytorch_amp_recipe():
    data = make_data(200)
    model_ref, model_tl = DtypeNet().cuda(), DtypeNet().cuda()
    opt_ref = torch.optim.SGD(model_ref.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 10)
    torch.manual_seed(1)
    for x, y in loader(data, 20, shuffle=True):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model_ref(x.cuda()), y.cuda())
        scaler.scale(loss).backward()
        scaler.step(opt_ref)
        scaler.update()
        opt_ref.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    loop = TrainLoop(model_tl, loader(data, 20, shuffle=True), None, None,
                     torch.optim.SGD(model_tl.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                     use_amp={"init_scale": 2.0 ** 10}, show_progress=False, end_auto_eval=False)
    loop.fit(num_epochs=1)
    assert model_tl.seen_dtypes == {torch.float16}
    assert loop.amp_scaler.get_scale() == scaler.get_scale()
    for a, b in zip(model_ref.parameters(), model_tl.parameters()):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_scheduler_does_not_step_when_scaler_skips():
    from aitoolbox.torchtrain.schedulers.warmup import ConstantWithWarmupScheduler

    data = make_data(40)
    model = DtypeNet().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loop = TrainLoop(model, loader(data, 20), None, None, opt, nn.CrossEntropyLoss(),
                     use_amp={"init_scale": 2.0 ** 60}, show_progress=False, end_auto_eval=False)
    scheduler = ConstantWithWarmupScheduler(num_warmup_steps=100)
    loop.fit(num_epochs=1, callbacks=[scheduler])
    # 2.0**60 overflows float16 gradients: both steps are skipped, so the schedule must not advance.
    assert scheduler.scheduler.last_epoch == 0


# ------------------------------------------------------------------------------ what use_amp means
@pytest.mark.parametrize("use_amp, expected", [
    (False, (False, None, {})), (True, (True, None, {})), ({}, (True, None, {})),
    ({"init_scale": 8.0}, (True, None, {"init_scale": 8.0})),
    ("bf16", (True, torch.bfloat16, {})), ("bfloat16", (True, torch.bfloat16, {})),
    (torch.bfloat16, (True, torch.bfloat16, {})), ({"dtype": "bf16"}, (True, torch.bfloat16, {})),
    ("fp16", (True, torch.float16, {})), ("Float16", (True, torch.float16, {})),
    (torch.float16, (True, torch.float16, {})),
    ({"dtype": "fp16", "init_scale": 8.0, "growth_interval": 3},
     (True, torch.float16, {"init_scale": 8.0, "growth_interval": 3})),
])
def test_resolve_precision(use_amp, expected):
    assert resolve_precision(use_amp) == expected


@pytest.mark.parametrize("use_amp", [True, {}, {"init_scale": 8.0}] + BF16_SPELLINGS)
def test_cpu_handler_runs_bfloat16_without_scaler(use_amp):
    handler = AmpHandler(use_amp, torch.device("cpu"))
    assert handler.enabled and handler.dtype == torch.bfloat16
    assert handler.scaler is None and isinstance(handler.grad_scaler, amp_module.PassThroughScaler)
    assert handler.state_dict() == {}  # a checkpoint of a bfloat16 run holds no scaler state
    with handler.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    handler = pickle.loads(pickle.dumps(handler))  # as it travels to spawned DDP ranks
    assert handler.dtype == torch.bfloat16 and handler.enabled


def test_cpu_handler_asked_for_float16_refuses_to_autocast():
    # Only the CPU-side parent of GPU ranks builds one (the TrainLoop refuses float16 on CPU up front).
    handler = AmpHandler("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="use_amp='fp16' asks for float16 autocast with a GradScaler, which "
                                         "needs CUDA, but training runs on the CPU.*use_amp='bf16'"):
        handler.autocast()


def test_off_handler_keeps_the_plain_per_batch_path():
    handler = AmpHandler(False, torch.device("cpu"))
    assert not handler.enabled and handler.scaler is None
    assert handler.autocast() is amp_module._NULL_CONTEXT  # the shared no-op, no allocation per batch
    assert isinstance(handler.step, operator.methodcaller)  # optimizer.step() with no frame of ours
    model = DtypeNet()
    loop = TrainLoop(model, loader(make_data(20), 10), None, None, torch.optim.SGD(model.parameters(), lr=0.1),
                     nn.CrossEntropyLoss(), gpu_mode="dp", show_progress=False)
    handler.follow_into_threads(model)
    assert not model._forward_pre_hooks  # no hook on the forward unless a non-default dtype is on
    assert not loop.amp_handler.enabled and isinstance(loop.amp_handler.step, operator.methodcaller)


# ------------------------------------------------------------------- the dtype seen in the forward
def _probe_loop(use_amp, gpu_mode="single", **kwargs):
    model = helpers.AutocastProbeNet()
    loop = helpers.make_loop(model, 16, gpu_mode=gpu_mode, use_amp=use_amp, val_data=False,
                             end_auto_eval=False, **kwargs)
    return model, loop


@pytest.mark.parametrize("gpu_mode", ["single", "dp"])
@pytest.mark.parametrize("use_amp", BF16_SPELLINGS + [True])
def test_bfloat16_autocast_in_the_forward_on_cpu(use_amp, gpu_mode):
    model, loop = _probe_loop(use_amp, gpu_mode)
    loop.fit(num_iterations=2)
    assert model.seen_autocast == {("cpu", True, torch.bfloat16, torch.bfloat16)}
    assert loop.amp_scaler is None and loop.state_dict()["amp_scaler_state_dict"] == {}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, not a cast of the weights
    assert loop.amp_scaler_init == {}  # aitoolbox 1.8's attribute: GradScaler arguments only


def test_amp_off_forward_runs_without_autocast():
    model, loop = _probe_loop(False)
    loop.fit(num_iterations=2)
    assert model.seen_autocast == {("cpu", False, torch.bfloat16, torch.float32)}


@pytest.fixture
def no_master_env(monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.timeout(120)
def test_bfloat16_reaches_the_spawned_ddp_ranks(tmp_path, no_master_env):
    model, loop = _probe_loop("bf16", "ddp")
    loop.fit(num_iterations=2, callbacks=[helpers.RecordAutocast(str(tmp_path))], num_gpus=2, on_gpu=False,
             backend="gloo")
    for rank_record in helpers.load_rank_files(str(tmp_path), "autocast"):
        assert rank_record == {"seen": [str(("cpu", True, torch.bfloat16, torch.bfloat16))],
                               "dtype": "torch.bfloat16", "has_scaler": False, "scaler_state": {}}
    assert loop.amp_handler.dtype == torch.bfloat16 and loop.amp_scaler is None


# ------------------------------------------------------------------ DataParallel's replica threads
def _forward_in_a_thread(module, x):
    """What ``nn.parallel.parallel_apply`` does per replica: autocast entered without a dtype."""
    seen = []

    def worker():
        with torch.autocast("cpu", enabled=True):
            seen.append(module(x).dtype)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    return seen[0]


def test_autocast_dtype_hook_carries_the_dtype_into_a_worker_thread():
    module, x = nn.Linear(4, 2), torch.randn(3, 4)
    with torch.autocast("cpu", dtype=torch.float16):
        assert _forward_in_a_thread(module, x) == torch.bfloat16  # autocast's dtype is per thread
        module.register_forward_pre_hook(AutocastDtypeHook("cpu", torch.float16))
        assert _forward_in_a_thread(module, x) == torch.float16
    assert module(x).dtype == torch.float32  # outside autocast the hook does nothing
    assert pickle.loads(pickle.dumps(module))(x).dtype == torch.float32


def test_dp_bfloat16_on_cuda_registers_the_thread_hook_once(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    net = nn.Linear(4, 2)
    handler = AmpHandler("bf16", torch.device("cuda"))
    assert handler.scaler is None and handler.dtype == torch.bfloat16
    handler.follow_into_threads(nn.DataParallel(net))
    handler.follow_into_threads(net)
    hooks = list(net._forward_pre_hooks.values())
    assert len(hooks) == 1 and (hooks[0].device_type, hooks[0].dtype) == ("cuda", torch.bfloat16)


# --------------------------------------------------------------------------------- on a CUDA GPU
def _cuda_parity(use_amp, dtype, scaler_args=None, gpu_mode="single"):
    """The loop against the plain PyTorch AMP recipe, same seeds: the weights must be equal."""
    data = make_data(200)
    model_ref, model_tl = DtypeNet().cuda(), DtypeNet().cuda()
    opt_ref = torch.optim.SGD(model_ref.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda", **scaler_args) if scaler_args is not None else None
    torch.manual_seed(1)
    for x, y in loader(data, 20, shuffle=True):
        with torch.autocast("cuda", dtype=dtype):
            loss = nn.functional.cross_entropy(model_ref(x.cuda()), y.cuda())
        if scaler is None:
            loss.backward()
            opt_ref.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt_ref)
            scaler.update()
        opt_ref.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    loop = TrainLoop(model_tl, loader(data, 20, shuffle=True), None, None,
                     torch.optim.SGD(model_tl.parameters(), lr=0.1), nn.CrossEntropyLoss(), gpu_mode=gpu_mode,
                     use_amp=use_amp, show_progress=False, end_auto_eval=False)
    loop.fit(num_epochs=1)
    assert model_tl.seen_dtypes == {dtype}
    for a, b in zip(model_ref.parameters(), model_tl.parameters()):
        assert torch.equal(a, b)
    return loop, scaler


@needs_gpu
@pytest.mark.parametrize("use_amp", ["fp16", {"dtype": "float16", "init_scale": 2.0 ** 10}, torch.float16])
def test_cuda_float16_with_gradscaler(use_amp):
    scaler_args = {"init_scale": 2.0 ** 10} if isinstance(use_amp, dict) else {}
    loop, scaler = _cuda_parity(use_amp, torch.float16, scaler_args)
    assert loop.amp_scaler is not None and loop.amp_scaler.get_scale() == scaler.get_scale()
    assert loop.state_dict()["amp_scaler_state_dict"]["scale"] == scaler.get_scale()


@needs_bf16_gpu
@pytest.mark.parametrize("gpu_mode", ["single", "dp"])
@pytest.mark.parametrize("use_amp", ["bf16", {"dtype": "bfloat16"}])
def test_cuda_bfloat16_without_gradscaler(use_amp, gpu_mode):
    loop, _ = _cuda_parity(use_amp, torch.bfloat16, None, gpu_mode)
    assert loop.amp_scaler is None and loop.state_dict()["amp_scaler_state_dict"] == {}
    # DataParallel's replica threads follow the dtype through a hook; single mode has none.
    hooks = [h for h in loop.model._forward_pre_hooks.values() if isinstance(h, AutocastDtypeHook)]
    assert len(hooks) == (gpu_mode == "dp")


@needs_bf16_gpu
@pytest.mark.timeout(300)
def test_cuda_ddp_bfloat16_ranks(tmp_path, no_master_env):
    model, loop = _probe_loop("bf16", "ddp")
    loop.fit(num_iterations=2, callbacks=[helpers.RecordAutocast(str(tmp_path))], num_gpus=1, on_gpu=True,
             backend="nccl")
    record, = helpers.load_rank_files(str(tmp_path), "autocast", world_size=1)
    assert record == {"seen": [str(("cuda", True, torch.bfloat16, torch.bfloat16))],
                      "dtype": "torch.bfloat16", "has_scaler": False, "scaler_state": {}}
