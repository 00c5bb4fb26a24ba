"""Gradient callbacks: clipping by value or by norm, and gradient statistics.

They act in ``on_after_gradient_update(optimizer_idx)``, which the TrainLoop calls once per
optimizer of a ``MultiOptimizer`` before that optimizer steps. Under AMP the gradients are
unscaled first (``amp_handler.unscale_``; a second unscale in the same step is a no-op), so that
thresholds apply to the true gradients. Under DDP the gradients are already averaged over the
ranks at that point, so every rank clips identically without any communication.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from aitoolbox.experiment import experiment_folder as ef
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.callbacks.experiment_base import AbstractExperimentCallback
from aitoolbox.utils.log import get_logger


def optimizer_parameters(optimizer: torch.optim.Optimizer) -> List[torch.Tensor]:
    """The parameters of every param group of ``optimizer``, in order, without duplicates."""
    seen, params = set(), []
    for group in optimizer.param_groups:
        for param in group["params"]:
            if id(param) not in seen:
                seen.add(id(param))
                params.append(param)
    return params


def unscaled_parameters(train_loop_obj, optimizer_idx: int) -> List[torch.Tensor]:
    """Unscale the gradients of optimizer ``optimizer_idx`` (under AMP) and return its parameters."""
    optimizer = train_loop_obj.optimizers[optimizer_idx]
    train_loop_obj.amp_handler.unscale_(optimizer)
    return optimizer_parameters(optimizer)


def last_update_of_epoch(loop) -> bool:
    """Whether the optimizer update now being made is the last one of the epoch (or of the run)."""
    if loop.num_iterations and loop.total_iteration_idx + 1 >= loop.num_iterations:
        return True
    # the epoch's batch count: len(train_loader), or a stream's, known one batch ahead
    return loop.iteration + 1 >= loop._epoch_len


class GradientCallbackBase(AbstractCallback):
    """Base of the callbacks that work on the gradients (in ``on_after_gradient_update``).

    Registration sets ``train_loop_obj.grad_cb_used = True``, as in the original aitoolbox (our
    TrainLoop calls ``on_after_gradient_update`` whenever a callback implements it, so the flag
    is informative only).

    Args:
        callback_name: name of the callback.
        **kwargs: ``execution_order``, ``device_idx_execution`` of :class:`AbstractCallback`.
    """

    def __init__(self, callback_name: str, **kwargs):
        super().__init__(callback_name, **kwargs)

    def on_train_loop_registration(self):
        self.train_loop_obj.grad_cb_used = True


class GradValueClip(GradientCallbackBase):
    """Clip every gradient element to ``[-max_grad_value, max_grad_value]`` before each step.

    Args:
        max_grad_value: the clipping bound.
        execution_order: callback execution order.
    """

    def __init__(self, max_grad_value: float, execution_order: int = 0):
        super().__init__("GradValueClip", execution_order=execution_order)
        if max_grad_value <= 0:
            raise ValueError(f"max_grad_value must be > 0, got {max_grad_value}.")
        self.max_grad_value = float(max_grad_value)

    def on_after_gradient_update(self, optimizer_idx: int):
        params = unscaled_parameters(self.train_loop_obj, optimizer_idx)
        nn.utils.clip_grad_value_(params, self.max_grad_value)


class GradNormClip(GradientCallbackBase):
    """Rescale the gradients of each optimizer so that their total norm is at most ``max_grad_norm``.

    The same as calling ``torch.nn.utils.clip_grad_norm_(params, max_grad_norm)`` on each
    optimizer's parameters between ``backward()`` and ``step()``.

    Args:
        max_grad_norm: the largest total gradient norm allowed.
        norm_type: the p of the p-norm (``float('inf')`` for the max norm).
        error_if_nonfinite: raise when the total norm is NaN or infinite.
        foreach: passed to ``clip_grad_norm_``.
        execution_order: callback execution order.

    Attributes:
        total_norms: optimizer index -> total gradient norm (before clipping) of the last step,
            a tensor on the device (reading it forces a sync).
    """

    def __init__(self, max_grad_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                 foreach: Optional[bool] = None, execution_order: int = 0):
        super().__init__("GradNormClip", execution_order=execution_order)
        if max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}.")
        self.max_grad_norm, self.norm_type = float(max_grad_norm), float(norm_type)
        self.error_if_nonfinite, self.foreach = error_if_nonfinite, foreach
        self.total_norms: Dict[int, torch.Tensor] = {}

    def on_after_gradient_update(self, optimizer_idx: int):
        params = unscaled_parameters(self.train_loop_obj, optimizer_idx)
        self.total_norms[optimizer_idx] = nn.utils.clip_grad_norm_(
            params, self.max_grad_norm, norm_type=self.norm_type,
            error_if_nonfinite=self.error_if_nonfinite, foreach=self.foreach)


class GradientStatsPrint(GradientCallbackBase):
    """Log gradient statistics (mean, std, largest absolute value, L2 norm) per layer.

    Computed from the true (unscaled) gradients just before the optimizer steps: at the last
    update of every epoch, or at every update. Runs on the main process only.

    Args:
        model_layers_extract_def: ``fn(model) -> iterable of nn.Module`` choosing the layers to
            report; None reports every parameter of the model separately.
        on_every_grad_update: report at every optimizer update instead of once per epoch.
        execution_order: callback execution order (below the clippers' to see unclipped values).
        stats_eval_freq: report at every this-many-th optimizer update instead (the original
            aitoolbox's argument); None: as ``on_every_grad_update`` says.

    Attributes:
        last_stats: layer name -> ``{'mean', 'std', 'abs_max', 'norm'}`` of the last report.
    """

    STATS = ("mean", "std", "abs_max", "norm")

    def __init__(self, model_layers_extract_def: Optional[Callable[[nn.Module], Iterable[nn.Module]]] = None,
                 on_every_grad_update: bool = False, execution_order: int = 0,
                 stats_eval_freq: Optional[int] = None):
        super().__init__("GradientStatsPrint", execution_order=execution_order, device_idx_execution=0)
        if stats_eval_freq is not None and (isinstance(stats_eval_freq, bool) or not isinstance(stats_eval_freq, int)
                                            or stats_eval_freq < 1):
            raise ValueError(f"stats_eval_freq must be an int >= 1 or None, got {stats_eval_freq!r}.")
        self.model_layers_extract_def = model_layers_extract_def
        self.on_every_grad_update = on_every_grad_update
        self.stats_eval_freq = stats_eval_freq
        self.weights_update_counter = 0
        self.last_stats: Dict[str, Dict[str, float]] = {}

    def _should_report(self) -> bool:
        if self.stats_eval_freq is not None:
            self.weights_update_counter += 1
            return self.weights_update_counter % self.stats_eval_freq == 0
        return self.on_every_grad_update or last_update_of_epoch(self.train_loop_obj)

    def on_after_gradient_update(self, optimizer_idx: int):
        # Gradients of every optimizer exist only before the first one steps and zeroes them.
        if optimizer_idx != 0 or not self._should_report():
            return
        for optimizer in self.train_loop_obj.optimizers:
            self.train_loop_obj.amp_handler.unscale_(optimizer)
        self.last_stats = self.gradient_stats()
        lines = [f"  {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in stats.items())
                 for name, stats in self.last_stats.items()]
        get_logger().info(f"Gradient stats, epoch {self.train_loop_obj.epoch + 1}, batch "
                          f"{self.train_loop_obj.iteration + 1}:\n" + "\n".join(lines))

    def gradient_stats(self) -> Dict[str, Dict[str, float]]:
        """Statistics of the current gradients of the selected layers (those without any skipped)."""
        stats = {}
        for name, grads in self._named_gradients():
            if grads:
                flat = torch.cat([g.detach().flatten().float() for g in grads])
                values = torch.stack([flat.mean(), flat.std(correction=0), flat.abs().max(),
                                      torch.linalg.vector_norm(flat)]).tolist()
                stats[name] = dict(zip(self.STATS, values))
        return stats

    def _named_gradients(self) -> Iterable[Tuple[str, List[torch.Tensor]]]:
        model = self.train_loop_obj.unwrapped_model()
        if self.model_layers_extract_def is None:
            return [(name, [p.grad]) for name, p in model.named_parameters() if p.grad is not None]
        layers = self.model_layers_extract_def(model)
        return [(f"{idx}:{type(layer).__name__}", [p.grad for p in layer.parameters() if p.grad is not None])
                for idx, layer in enumerate(layers)]


class GradDistributionPlot(AbstractExperimentCallback):
    """Plot the distribution of chosen layers' gradients at every epoch end.

    The gradients are those of the last optimizer update of the epoch (unscaled under AMP,
    averaged over the ranks under DDP), taken just before that update. The plots go to
    ``<experiment>/results/<grad_plots_dir_name>/epoch_<epoch>/layer_<idx>.png`` (or one
    ``epoch_<epoch>.pdf`` there) and are mirrored to the experiment's cloud folder. Runs on the
    main process only; needs matplotlib (``pip install "aitoolbox[plots]"``).

    Args:
        model_layers_extract_def: ``fn(model) -> list of layers``; each layer's ``weight``
            gradients are plotted (all its parameters' when it has no ``weight``).
        grad_plots_dir_name: the folder of the plots inside ``results/``.
        file_format: ``'png'`` (a file per layer) or ``'pdf'`` (one file per epoch).
        project_name, experiment_name, local_model_result_folder_path: the experiment; None (all
            three): the TrainLoop's experiment.
        cloud_save_mode, bucket_name, cloud_dir_prefix: the cloud target, as in ``ModelCheckpoint``.

    Attributes:
        saved_plot_paths: ``[path inside the plots folder, local path]`` of the last epoch's plots.

    Raises:
        ValueError: an unsupported ``file_format``.
    """

    def __init__(self, model_layers_extract_def: Callable[[nn.Module], Iterable[nn.Module]],
                 grad_plots_dir_name: str = "grad_distribution", file_format: str = "png",
                 project_name: Optional[str] = None, experiment_name: Optional[str] = None,
                 local_model_result_folder_path: Optional[str] = None, cloud_save_mode: Optional[str] = None,
                 bucket_name: Optional[str] = None, cloud_dir_prefix: Optional[str] = None):
        if file_format not in ("png", "pdf"):
            raise ValueError(f"Output format {file_format!r} is not supported: use 'png' or 'pdf'.")
        if not callable(model_layers_extract_def):
            raise TypeError("model_layers_extract_def must be a function model -> list of layers.")
        super().__init__("Gradient distribution plotter", project_name=project_name,
                         experiment_name=experiment_name,
                         local_model_result_folder_path=local_model_result_folder_path,
                         cloud_save_mode=cloud_save_mode,
                         bucket_name=bucket_name,
                         cloud_dir_prefix=cloud_dir_prefix)
        self.device_idx_execution = 0
        self.model_layers_extract_def = model_layers_extract_def
        self.grad_plots_dir_name = grad_plots_dir_name
        self.file_format = file_format
        self.gradient_plotter = None
        self.saved_plot_paths: List[List[str]] = []
        self._gradients: Optional[List[Optional[torch.Tensor]]] = None

    def on_train_loop_registration(self):
        from aitoolbox.utils.optional import import_optional

        import_optional("matplotlib", "plots", "GradDistributionPlot")
        super().on_train_loop_registration()
        self.train_loop_obj.grad_cb_used = True

    def on_train_begin(self):
        self.start_experiment()

    def on_after_gradient_update(self, optimizer_idx: int):
        if optimizer_idx != 0 or not last_update_of_epoch(self.train_loop_obj):
            return
        for optimizer in self.train_loop_obj.optimizers:
            self.train_loop_obj.amp_handler.unscale_(optimizer)
        self._gradients = [self._layer_gradients(layer)
                           for layer in self.model_layers_extract_def(self.train_loop_obj.unwrapped_model())]

    @staticmethod
    def _layer_gradients(layer: nn.Module) -> Optional[torch.Tensor]:
        weight = getattr(layer, "weight", None)
        params = [weight] if isinstance(weight, torch.Tensor) else list(layer.parameters())
        grads = [p.grad.detach().reshape(-1).float().cpu() for p in params if p.grad is not None]
        return torch.cat(grads) if grads else None

    def on_epoch_end(self):
        self.gradient_plot()

    def gradient_plot(self) -> List[List[str]]:
        """Plot the gradients captured in this epoch and mirror the files; returns their paths."""
        from aitoolbox.experiment.result_reporting.report_generator import GradientPlotter

        if self._gradients is None:
            get_logger().info("GradDistributionPlot: no gradients captured in this epoch; nothing plotted.")
            return []
        folder = self.store.local_path(ef.RESULTS_DIR, self.grad_plots_dir_name)
        if self.gradient_plotter is None:
            self.gradient_plotter = GradientPlotter(folder)
        self.gradient_plotter.experiment_grad_results_local_path = folder
        gradients = [None if g is None else g.numpy() for g in self._gradients]
        self.saved_plot_paths = self.gradient_plotter.generate_report(
            gradients, f"epoch_{self.train_loop_obj.epoch}", file_format=self.file_format)
        for _, local_path in self.saved_plot_paths:
            self.store.publish(local_path)
        self._gradients = None
        return self.saved_plot_paths

    def on_train_end(self):
        self.store.finish_run()
