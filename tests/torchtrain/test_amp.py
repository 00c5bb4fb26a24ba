"""Mixed precision: bfloat16 autocast on CPU; float16 + GradScaler on CUDA (SPEC 4.7)."""
import pytest
import torch
from torch import nn

from aitoolbox import TrainLoop, TTModel
from aitoolbox.torchtrain.train_loop.components.amp_handler import AmpHandler

from _loop_helpers import loader, make_data


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
