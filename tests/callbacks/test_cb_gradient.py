"""GradValueClip, GradNormClip and GradientStatsPrint against hand-written PyTorch loops."""
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from aitoolbox.torchtrain.callbacks.gradient import GradientStatsPrint, GradNormClip, GradValueClip
from aitoolbox.torchtrain.multi_loss_optim import MultiOptimizer
from aitoolbox.torchtrain.train_loop import TrainLoop
from tests.callbacks.cb_testkit import LogCapture, mlp, regression_dataset

EPOCHS, BATCH = 3, 8


def reference_weights(clip_fn, lr=0.1, param_groups_fn=None):
    """Hand-written loop: zero_grad, forward, backward, clip, step - per batch."""
    model = mlp()
    loader = DataLoader(regression_dataset(), batch_size=BATCH)
    groups = param_groups_fn(model) if param_groups_fn else [list(model.parameters())]
    optimizers = [torch.optim.SGD(g, lr=lr) for g in groups]
    for _ in range(EPOCHS):
        for x, y in loader:
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            nn.functional.mse_loss(model(x), y).backward()
            for group, opt in zip(groups, optimizers):
                clip_fn(group)
                opt.step()
    return model.state_dict()


def trained_weights(callbacks, lr=0.1, param_groups_fn=None):
    model = mlp()
    groups = param_groups_fn(model) if param_groups_fn else [list(model.parameters())]
    optimizers = [torch.optim.SGD(g, lr=lr) for g in groups]
    optimizer = optimizers[0] if len(optimizers) == 1 else MultiOptimizer(optimizers)
    loop = TrainLoop(model, DataLoader(regression_dataset(), batch_size=BATCH), None, None, optimizer,
                     nn.MSELoss(), end_auto_eval=False, show_progress=False)
    loop.fit(num_epochs=EPOCHS, callbacks=callbacks)
    return model.state_dict()


def assert_bit_exact(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_differs(a, b):
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_grad_norm_clip_is_bit_exact_with_clip_grad_norm():
    expected = reference_weights(lambda params: nn.utils.clip_grad_norm_(params, 0.5))
    assert_bit_exact(trained_weights([GradNormClip(0.5)]), expected)
    assert_differs(trained_weights([]), expected)  # the clipping does change the run


def test_grad_norm_clip_inf_norm_is_bit_exact():
    expected = reference_weights(lambda params: nn.utils.clip_grad_norm_(params, 0.2, norm_type=float("inf")))
    assert_bit_exact(trained_weights([GradNormClip(0.2, norm_type=float("inf"))]), expected)


def test_grad_value_clip_is_bit_exact_with_clip_grad_value():
    expected = reference_weights(lambda params: nn.utils.clip_grad_value_(params, 0.05))
    assert_bit_exact(trained_weights([GradValueClip(0.05)]), expected)
    assert_differs(trained_weights([]), expected)


def split_groups(model):
    return [list(model[0].parameters()), list(model[2].parameters())]


def test_grad_norm_clip_clips_each_optimizer_of_a_multi_optimizer_separately():
    expected = reference_weights(lambda params: nn.utils.clip_grad_norm_(params, 0.3), param_groups_fn=split_groups)
    clipper = GradNormClip(0.3)
    assert_bit_exact(trained_weights([clipper], param_groups_fn=split_groups), expected)
    assert sorted(clipper.total_norms) == [0, 1]
    jointly = reference_weights(lambda params: None, param_groups_fn=split_groups)
    assert_differs(jointly, expected)


def test_clippers_unscale_each_optimizer_first():
    model = mlp()
    optimizers = MultiOptimizer([torch.optim.SGD(g, lr=0.1) for g in split_groups(model)])
    loop = TrainLoop(model, DataLoader(regression_dataset(16), batch_size=BATCH), None, None, optimizers,
                     nn.MSELoss(), end_auto_eval=False, show_progress=False)
    events = []
    original_unscale = loop.amp_handler.unscale_
    loop.amp_handler.unscale_ = lambda opt: (events.append(("unscale", optimizers.optimizer_lst.index(opt))),
                                             original_unscale(opt))
    original_clip = nn.utils.clip_grad_norm_

    def spy_clip(params, *args, **kwargs):
        events.append(("clip", [id(p) for p in params]))
        return original_clip(params, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nn.utils, "clip_grad_norm_", spy_clip)
        loop.fit(num_epochs=1, callbacks=[GradNormClip(1.0)])
    ids = [[id(p) for p in g["params"]] for g in (optimizers[0].param_groups[0], optimizers[1].param_groups[0])]
    assert events == [("unscale", 0), ("clip", ids[0]), ("unscale", 1), ("clip", ids[1])] * 2


def test_gradient_stats_print_reports_the_true_gradients():
    model = mlp()
    x, y = regression_dataset(8)[:]
    nn.functional.mse_loss(model(x), y).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    stats_cb = GradientStatsPrint()
    loop = TrainLoop(model, DataLoader(regression_dataset(8), batch_size=8), None, None,
                     torch.optim.SGD(model.parameters(), lr=0.0), nn.MSELoss(), end_auto_eval=False,
                     show_progress=False)
    with LogCapture() as logs:
        loop.fit(num_epochs=1, callbacks=[stats_cb])
    assert stats_cb.last_stats.keys() == expected.keys()
    for name, grad in expected.items():
        stats = stats_cb.last_stats[name]
        assert stats["mean"] == pytest.approx(grad.mean().item(), rel=1e-5, abs=1e-7)
        assert stats["abs_max"] == pytest.approx(grad.abs().max().item(), rel=1e-6)
        assert stats["norm"] == pytest.approx(grad.norm().item(), rel=1e-5)
    assert "Gradient stats, epoch 1, batch 1" in logs.text() and "0.weight" in logs.text()


def test_gradient_stats_print_once_per_epoch_or_every_update():
    def count_reports(**kwargs):
        model = mlp()
        loop = TrainLoop(model, DataLoader(regression_dataset(24), batch_size=8), None, None,
                         torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), end_auto_eval=False,
                         show_progress=False)
        callback = GradientStatsPrint(**kwargs)
        with LogCapture() as logs:
            loop.fit(num_epochs=2, callbacks=[callback])
        return logs.text().count("Gradient stats"), sorted(callback.last_stats)

    assert count_reports() == (2, ["0.bias", "0.weight", "2.bias", "2.weight"])
    assert count_reports(on_every_grad_update=True)[0] == 6
    assert count_reports(model_layers_extract_def=lambda m: [m[0], m[2]]) == (2, ["0:Linear", "1:Linear"])


# ---------------------------------------------------------------- the original aitoolbox's API
def test_gradient_callbacks_share_the_base_and_flag_the_loop():
    from aitoolbox.torchtrain.callbacks.gradient import GradientCallbackBase

    for callback in (GradNormClip(0.1), GradValueClip(0.1), GradientStatsPrint(lambda m: [m[0]])):
        assert isinstance(callback, GradientCallbackBase)
        loop = TrainLoop(mlp(), DataLoader(regression_dataset(), batch_size=BATCH), None, None,
                         torch.optim.SGD(mlp().parameters(), lr=0.1), nn.MSELoss(), show_progress=False)
        loop.callbacks_handler.register_callbacks([callback])
        assert loop.grad_cb_used is True


def test_gradient_stats_print_stats_eval_freq_reports_every_nth_update():
    callback = GradientStatsPrint(lambda m: [m[0], m[2]], stats_eval_freq=4)
    model = mlp()
    loop = TrainLoop(model, DataLoader(regression_dataset(), batch_size=BATCH), None, None,
                     torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), end_auto_eval=False,
                     show_progress=False)
    with LogCapture() as logs:
        loop.fit(num_epochs=2, callbacks=[callback])  # 12 updates
    reports = [m for m in logs.messages if m.startswith("Gradient stats")]
    assert [r.split(":")[0] for r in reports] == ["Gradient stats, epoch 1, batch 4", "Gradient stats, epoch 2, batch 2",
                                                  "Gradient stats, epoch 2, batch 6"]
    with pytest.raises(ValueError, match="stats_eval_freq"):
        GradientStatsPrint(stats_eval_freq=0)


def test_grad_distribution_plot_plots_the_last_update_of_each_epoch(tmp_path):
    pytest.importorskip("matplotlib")
    from aitoolbox.torchtrain.callbacks.gradient import GradDistributionPlot
    from tests.callbacks.cb_testkit import Recorder

    captured = []

    class Capture(GradDistributionPlot):
        def gradient_plot(self):
            captured.append([g.clone() for g in self._gradients])
            return super().gradient_plot()

    grads = Recorder("on_after_gradient_update", lambda tl: tl.model[0].weight.grad.detach().reshape(-1).clone(),
                     execution_order=0)
    callback = Capture(lambda m: [m[0], m[2]], project_name="proj", experiment_name="exp",
                       local_model_result_folder_path=str(tmp_path))
    model = mlp()
    loop = TrainLoop(model, DataLoader(regression_dataset(), batch_size=BATCH), None, None,
                     torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), end_auto_eval=False,
                     show_progress=False)
    loop.fit(num_epochs=2, callbacks=[grads, callback])
    assert len(captured) == 2
    for epoch, layers in enumerate(captured):
        assert torch.equal(layers[0], grads.records[6 * epoch + 5])  # 6 batches per epoch: the last one
        assert layers[1].numel() == model[2].weight.numel()
    folder = os.path.join(callback.store.path, "results", "grad_distribution")
    assert sorted(os.listdir(folder)) == ["epoch_0", "epoch_1"]
    assert sorted(os.listdir(os.path.join(folder, "epoch_1"))) == ["layer_0.png", "layer_1.png"]
    assert [p[0] for p in callback.saved_plot_paths] == ["epoch_1/layer_0.png", "epoch_1/layer_1.png"]


def test_grad_distribution_plot_pdf_mirrored_to_s3(s3_bucket, tmp_path):
    pytest.importorskip("matplotlib")
    from aitoolbox.cloud.AWS.s3 import list_keys
    from aitoolbox.torchtrain.callbacks.gradient import GradDistributionPlot

    callback = GradDistributionPlot(lambda m: [m[0]], file_format="pdf", project_name="proj", experiment_name="exp",
                                    local_model_result_folder_path=str(tmp_path), cloud_save_mode="s3",
                                    bucket_name=s3_bucket)
    model = mlp()
    TrainLoop(model, DataLoader(regression_dataset(), batch_size=BATCH), None, None,
              torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), show_progress=False
              ).fit(num_epochs=2, callbacks=[callback])
    prefix = f"proj/{callback.store.folder.name}/results/grad_distribution/"
    assert sorted(list_keys(s3_bucket, prefix)) == [prefix + "epoch_0.pdf", prefix + "epoch_1.pdf"]
    with open(os.path.join(callback.store.path, "results", "grad_distribution", "epoch_1.pdf"), "rb") as f:
        assert f.read(5) == b"%PDF-"
    with pytest.raises(ValueError, match="'png' or 'pdf'"):
        GradDistributionPlot(lambda m: [m], file_format="jpg")
