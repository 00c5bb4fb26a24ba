"""``TrainLoop(torch_compile=...)``: really compiles, trains and matches the uncompiled run closely."""
import pytest
import torch

from aitoolbox.torchtrain.model import TTBasicModel
from tests.callbacks.cb_testkit import make_loop, mlp


class UserModel(TTBasicModel):
    """A TTModel with its own forward (compiled in place)."""

    def __init__(self):
        super().__init__()
        self.net = mlp(hidden=16)

    def forward(self, x):
        return self.net(x)


def train(make_model, torch_compile):
    loop = make_loop(model=make_model(), lr=0.05, torch_compile=torch_compile)  # 48 / 8: one batch shape
    loop.fit(num_epochs=3)
    return loop


def compiled_frames(make_model):
    """Train with torch_compile=True; returns the loop and the frames dynamo compiled."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    try:
        loop = train(make_model, True)
    except Exception as exc:  # inductor needs a working C++ compiler: skip where there is none
        if any(s in repr(exc).lower() for s in ("inductor", "dynamo", "compil", "c++", "cxx")):
            pytest.skip(f"torch.compile / inductor cannot compile on this machine: {exc!r}")
        raise
    return loop, counters["frames"]["ok"]


@pytest.mark.parametrize("make_model", [UserModel, lambda: mlp(hidden=16)], ids=["TTModel", "nn.Sequential"])
def test_torch_compile_trains_like_eager(make_model):
    eager = train(make_model, False)
    compiled, frames = compiled_frames(make_model)
    assert frames >= 1  # dynamo really compiled the model
    for name in ("loss", "val_loss", "accumulated_loss"):
        assert compiled.train_history[name] == pytest.approx(eager.train_history[name], rel=1e-4)
    assert compiled.train_history["loss"][-1] < compiled.train_history["loss"][0]
    for a, b in zip(compiled.model.parameters(), eager.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert compiled.model.state_dict().keys() == eager.model.state_dict().keys()  # the user's module, unwrapped
