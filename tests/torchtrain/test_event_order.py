"""Every hook, in order: the exact event sequence of the loop (SPEC 4, STYLE)."""
import torch
from torch import nn

from aitoolbox import TrainLoop
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.train_loop.components.callback_handler import HOOKS

from _loop_helpers import loader, make_data, make_mlp


class Recorder(AbstractCallback):
    def __init__(self):
        super().__init__("recorder")
        self.events = []

    def on_train_loop_registration(self):
        self.events.append("registration")

    def on_train_begin(self):
        self.events.append("train_begin")

    def on_epoch_begin(self):
        self.events.append("epoch_begin")

    def on_batch_begin(self):
        self.events.append("batch_begin")

    def on_after_gradient_update(self, optimizer_idx):
        self.events.append(f"grad_update[{optimizer_idx}]")

    def on_after_optimizer_step(self):
        self.events.append("optimizer_step")

    def on_batch_end(self):
        self.events.append("batch_end")

    def on_epoch_end(self):
        self.events.append(f"epoch_end(val_loss={len(self.train_loop_obj.train_history['val_loss'])})")

    def on_train_end(self):
        self.events.append("train_end")


def _run(**fit_kwargs):
    data = make_data(30)
    model = make_mlp()
    recorder = Recorder()
    loop = TrainLoop(model, loader(data, 10), loader(data, 10), None, torch.optim.SGD(model.parameters(), lr=0.1),
                     nn.CrossEntropyLoss(), show_progress=False)
    loop.fit(callbacks=[recorder], **fit_kwargs)
    return recorder.events


def _epoch(step_after, epoch_index):
    events = ["epoch_begin"]
    for batch in range(3):
        events.append("batch_begin")
        if batch in step_after:
            events += ["grad_update[0]", "optimizer_step"]
        events.append("batch_end")
    return events + [f"epoch_end(val_loss={epoch_index + 1})"]


def test_two_epochs_three_batches():
    expected = ["registration", "train_begin"] + _epoch({0, 1, 2}, 0) + _epoch({0, 1, 2}, 1) + ["train_end"]
    assert _run(num_epochs=2) == expected


def test_with_accumulation_steps_on_window_end_and_last_batch():
    expected = ["registration", "train_begin"] + _epoch({1, 2}, 0) + _epoch({1, 2}, 1) + ["train_end"]
    assert _run(num_epochs=2, grad_accumulation=2) == expected


def test_num_iterations_stops_mid_epoch():
    second_epoch = ["epoch_begin", "batch_begin", "grad_update[0]", "optimizer_step", "batch_end",
                    "epoch_end(val_loss=2)"]
    expected = ["registration", "train_begin"] + _epoch({0, 1, 2}, 0) + second_epoch + ["train_end"]
    assert _run(num_iterations=4) == expected


def test_hooks_are_subscribed_only_when_overridden():
    class OnlyEpochEnd(AbstractCallback):
        def on_epoch_end(self):
            pass

    assert OnlyEpochEnd.implemented_hooks() == {"on_epoch_end"}
    assert Recorder.implemented_hooks() == set(HOOKS) - {"on_multiprocess_start", "on_after_batch_prediction",
                                                          "on_train_crash"}


def test_execution_order_then_registration_order():
    order = []

    class Named(AbstractCallback):
        def on_train_begin(self):
            order.append(self.callback_name)

    data = make_data(10)
    model = make_mlp()
    loop = TrainLoop(model, loader(data, 10), None, None, torch.optim.SGD(model.parameters(), lr=0.1),
                     nn.CrossEntropyLoss(), show_progress=False)
    loop.fit(num_epochs=1, callbacks=[Named("c", 5), Named("a", 0), Named("d", 5), Named("b", -1)])
    assert order == ["b", "a", "c", "d"]


def test_crash_hook_runs_and_exception_propagates():
    seen = []

    class Boom(AbstractCallback):
        def on_batch_end(self):
            raise KeyboardInterrupt

        def on_train_crash(self, exception):
            seen.append(type(exception).__name__)

    data = make_data(10)
    model = make_mlp()
    loop = TrainLoop(model, loader(data, 5), None, None, torch.optim.SGD(model.parameters(), lr=0.1),
                     nn.CrossEntropyLoss(), show_progress=False)
    try:
        loop.fit(num_epochs=1, callbacks=[Boom("boom")])
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("KeyboardInterrupt was swallowed")
    assert seen == ["KeyboardInterrupt"]


def test_early_stop_flag_ends_training_after_the_epoch_of_the_request():
    class StopAtEpoch(AbstractCallback):
        def on_epoch_end(self):
            if self.train_loop_obj.epoch == 1:
                self.train_loop_obj.early_stop = True

    data = make_data(20)
    model = make_mlp()
    loop = TrainLoop(model, loader(data, 10), None, None, torch.optim.SGD(model.parameters(), lr=0.1),
                     nn.CrossEntropyLoss(), show_progress=False)
    loop.fit(num_epochs=10, callbacks=[StopAtEpoch("stop")])
    assert loop.epoch == 2 and len(loop.train_history["loss"]) == 2
