"""Bit-exact parity of TrainLoop with a hand-written PyTorch loop on CPU (SPEC 4.1, 4.2)."""
import pytest
import torch
from torch import nn

from aitoolbox import MultiLoss, MultiOptimizer, TrainLoop, TTModel
from aitoolbox.torchtrain.schedulers.basic import StepLRScheduler
from aitoolbox.torchtrain.schedulers.warmup import LinearWithWarmupScheduler

from _loop_helpers import assert_same_weights, clone_model, loader, make_data, make_mlp, reference_train


def _run_pair(num_epochs, grad_accumulation=1, optimizer_fn=None, batch_size=10, num_samples=100, seeded=False):
    data = make_data(num_samples)
    optimizer_fn = optimizer_fn or (lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9))
    model_ref = make_mlp()
    model_tl = clone_model(model_ref)

    def train_loader():
        generator = torch.Generator().manual_seed(42) if seeded else None
        return loader(data, batch_size, shuffle=True, generator=generator)

    torch.manual_seed(123)
    reference_train(model_ref, train_loader(), optimizer_fn(model_ref.parameters()),
                    nn.CrossEntropyLoss(), num_epochs, grad_accumulation)

    torch.manual_seed(123)
    loop = TrainLoop(model_tl, train_loader(), loader(data, 32), None,
                     optimizer_fn(model_tl.parameters()), nn.CrossEntropyLoss(), show_progress=False)
    loop.fit(num_epochs=num_epochs, grad_accumulation=grad_accumulation)
    return model_ref, model_tl, loop


@pytest.mark.parametrize("seeded", [False, True], ids=["global_rng", "seeded_loader_generator"])
def test_shuffled_dropout_sgd_momentum_bit_exact(seeded):
    model_ref, model_tl, loop = _run_pair(num_epochs=3, seeded=seeded)
    assert_same_weights(model_ref, model_tl)
    # The end-of-epoch evaluation ran (and did not disturb the training RNG stream).
    assert len(loop.train_history["val_loss"]) == 3


@pytest.mark.parametrize("seeded", [False, True], ids=["global_rng", "seeded_loader_generator"])
def test_grad_accumulation_3_over_10_batches_bit_exact(seeded):
    model_ref, model_tl, loop = _run_pair(num_epochs=2, grad_accumulation=3, seeded=seeded)
    assert_same_weights(model_ref, model_tl)
    assert loop.num_optimizer_steps == 8  # 4 per epoch: windows of 3, 3, 3, 1
    assert loop.get_num_training_steps() == 8


def test_last_short_window_is_weighted_as_its_own_size():
    # Dividing every window by k (the naive recipe) under-weights the last window: the weights differ.
    data = make_data(100)
    model_naive, model_tl = make_mlp(), make_mlp()
    opt = torch.optim.SGD(model_naive.parameters(), lr=0.1)
    torch.manual_seed(5)
    for i, (x, y) in enumerate(loader(data, 10, shuffle=True)):
        (nn.functional.cross_entropy(model_naive(x), y) / 3).backward()
        if (i + 1) % 3 == 0 or i == 9:
            opt.step()
            opt.zero_grad()
    torch.manual_seed(5)
    TrainLoop(model_tl, loader(data, 10, shuffle=True), None, None, torch.optim.SGD(model_tl.parameters(), lr=0.1),
              nn.CrossEntropyLoss(), show_progress=False, end_auto_eval=False).fit(num_epochs=1, grad_accumulation=3)
    diffs = [not torch.equal(a, b) for a, b in zip(model_naive.parameters(), model_tl.parameters())]
    assert any(diffs)


class TwoHeadNet(TTModel):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.cls_head = nn.Linear(16, 3)
        self.reg_head = nn.Linear(16, 1)

    def forward(self, x):
        h = self.body(x)
        return self.cls_head(h), self.reg_head(h).squeeze(1)

    def get_loss(self, batch_data, criterion, device):
        x, y = batch_data
        logits, reg = self(x)
        return MultiLoss({"cls": nn.functional.cross_entropy(logits, y), "reg": nn.functional.mse_loss(reg, y.float())})

    def get_predictions(self, batch_data, device):
        x, y = batch_data
        return self(x)[0], y, None


def test_multiloss_multioptimizer_sgd_adam_bit_exact():
    data = make_data(60)
    model_ref, model_tl = TwoHeadNet(), TwoHeadNet()

    def optimizers(m):
        return (torch.optim.SGD(list(m.body.parameters()) + list(m.cls_head.parameters()), lr=0.05, momentum=0.9),
                torch.optim.Adam(m.reg_head.parameters(), lr=1e-2))

    opt_a, opt_b = optimizers(model_ref)
    torch.manual_seed(7)
    for _ in range(2):
        for x, y in loader(data, 10, shuffle=True):
            logits, reg = model_ref(x)
            loss_cls = nn.functional.cross_entropy(logits, y)
            loss_reg = nn.functional.mse_loss(reg, y.float())
            loss_cls.backward(retain_graph=True)
            loss_reg.backward()
            opt_a.step()
            opt_b.step()
            opt_a.zero_grad()
            opt_b.zero_grad()

    torch.manual_seed(7)
    loop = TrainLoop(model_tl, loader(data, 10, shuffle=True), None, None, MultiOptimizer(optimizers(model_tl)),
                     None, show_progress=False)
    loop.fit(num_epochs=2)
    assert_same_weights(model_ref, model_tl)
    assert "loss_cls" in loop.train_history and "loss_reg" in loop.train_history
    assert loop.train_history["loss"][-1] == loop.train_history["loss_cls"][-1] + loop.train_history["loss_reg"][-1]


def test_epoch_scheduler_callback_bit_exact():
    data = make_data(100)
    model_ref, model_tl = make_mlp(), make_mlp()
    opt_ref = torch.optim.SGD(model_ref.parameters(), lr=0.2, momentum=0.9)
    torch.manual_seed(11)
    reference_train(model_ref, loader(data, 10, shuffle=True), opt_ref, nn.CrossEntropyLoss(), 3,
                    scheduler=torch.optim.lr_scheduler.StepLR(opt_ref, step_size=1, gamma=0.5))
    torch.manual_seed(11)
    opt_tl = torch.optim.SGD(model_tl.parameters(), lr=0.2, momentum=0.9)
    loop = TrainLoop(model_tl, loader(data, 10, shuffle=True), None, None, opt_tl, nn.CrossEntropyLoss(),
                     show_progress=False)
    scheduler = StepLRScheduler(step_size=1, gamma=0.5)
    loop.fit(num_epochs=3, callbacks=[scheduler])
    assert_same_weights(model_ref, model_tl)
    assert opt_tl.param_groups[0]["lr"] == opt_ref.param_groups[0]["lr"] == 0.2 * 0.5 ** 3
    assert loop.get_schedulers() == [scheduler]


def test_per_step_warmup_scheduler_with_accumulation_bit_exact():
    data = make_data(100)
    model_ref, model_tl = make_mlp(), make_mlp()
    steps = 2 * 5  # 2 epochs x ceil(10 / 2) updates

    def factor(step):
        return step / 3 if step < 3 else max(0.0, 1 - (step - 3) / (steps - 3))

    opt_ref = torch.optim.SGD(model_ref.parameters(), lr=0.1)
    torch.manual_seed(3)
    reference_train(model_ref, loader(data, 10, shuffle=True), opt_ref, nn.CrossEntropyLoss(), 2, grad_accumulation=2,
                    batch_scheduler=torch.optim.lr_scheduler.LambdaLR(opt_ref, factor))
    torch.manual_seed(3)
    opt_tl = torch.optim.SGD(model_tl.parameters(), lr=0.1)
    TrainLoop(model_tl, loader(data, 10, shuffle=True), None, None, opt_tl, nn.CrossEntropyLoss(),
              show_progress=False).fit(num_epochs=2, grad_accumulation=2,
                                       callbacks=[LinearWithWarmupScheduler(num_warmup_steps=3)])
    assert_same_weights(model_ref, model_tl)
    assert opt_tl.param_groups[0]["lr"] == opt_ref.param_groups[0]["lr"]


def test_num_iterations_stops_mid_epoch_and_steps_on_last_batch():
    data = make_data(100)
    model_ref, model_tl = make_mlp(), make_mlp()
    opt_ref = torch.optim.SGD(model_ref.parameters(), lr=0.1)
    torch.manual_seed(9)
    batches = iter(loader(data, 10, shuffle=True))
    # 13 iterations = one epoch of 10 + 3 batches; with k=2 the 13th batch closes a 1-batch window.
    for i, (x, y) in enumerate(batches):
        (nn.functional.cross_entropy(model_ref(x), y) / 2).backward()
        if (i + 1) % 2 == 0:
            opt_ref.step()
            opt_ref.zero_grad()
    for i, (x, y) in enumerate(loader(data, 10, shuffle=True)):
        if i == 3:
            break
        (nn.functional.cross_entropy(model_ref(x), y) / (2 if i < 2 else 1)).backward()
        if i in (1, 2):
            opt_ref.step()
            opt_ref.zero_grad()
    torch.manual_seed(9)
    loop = TrainLoop(model_tl, loader(data, 10, shuffle=True), None, None, torch.optim.SGD(model_tl.parameters(), lr=0.1),
                     nn.CrossEntropyLoss(), show_progress=False, end_auto_eval=False)
    loop.fit(num_iterations=13, grad_accumulation=2)
    assert_same_weights(model_ref, model_tl)
    assert loop.total_iteration_idx == 13 and loop.num_optimizer_steps == 7
    assert loop.get_num_training_steps() == 7
