"""Evaluation every N optimizer steps, into the training history."""
from __future__ import annotations

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.utils.log import get_logger


class EvaluateEveryNSteps(AbstractCallback):
    """Evaluate the loss on the validation (and / or training) set every ``n_steps`` optimizer steps.

    After every ``n_steps``-th real optimizer update (counted over the whole run) it appends to
    the history the step index as ``step_idx`` and the losses as ``step_val_loss`` and
    ``step_loss`` (training set). It goes through the TrainLoop's cached evaluation, so an
    end-of-epoch evaluation of the same weights costs nothing more; under DDP every rank
    evaluates at the same steps and the loss is reduced over them.

    Args:
        n_steps: evaluate every this many optimizer steps.
        on_val: evaluate on the validation set.
        on_train: evaluate on the training set.
        execution_order: callback execution order.

    Raises:
        ValueError: ``n_steps`` < 1, nothing to evaluate, or ``on_val`` without a validation loader
            (at registration).
    """

    def __init__(self, n_steps: int, on_val: bool = True, on_train: bool = False, execution_order: int = 0):
        super().__init__("EvaluateEveryNSteps", execution_order=execution_order)
        if not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be an int >= 1, got {n_steps!r}.")
        if not (on_val or on_train):
            raise ValueError("EvaluateEveryNSteps: set on_val and / or on_train to True.")
        self.n_steps, self.on_val, self.on_train = n_steps, on_val, on_train

    def produced_history_metrics(self):
        names = ["step_idx"] + (["step_loss"] if self.on_train else []) + (["step_val_loss"] if self.on_val else [])
        return names + [f"{name}_*" for name in names[1:]]

    def on_train_loop_registration(self):
        if self.on_val and self.train_loop_obj.validation_loader is None:
            raise ValueError("EvaluateEveryNSteps(on_val=True) needs a validation_loader in the TrainLoop; "
                             "pass one or set on_val=False.")

    def on_after_optimizer_step(self):
        loop = self.train_loop_obj
        step = loop.num_optimizer_steps
        if step % self.n_steps:
            return
        loop.insert_metric_result_into_history("step_idx", step)
        results = {}
        if self.on_train:
            results["step_loss"] = loop.evaluate_loss_on_train_set(float_dict_format=True)
        if self.on_val:
            results["step_val_loss"] = loop.evaluate_loss_on_validation_set(float_dict_format=True)
        for name, value in results.items():
            if isinstance(value, dict):
                loop.insert_metric_result_into_history(name, sum(value.values()))
            loop.insert_metric_result_into_history(name, value)
        if loop.is_main_process():
            get_logger().info(f"Step {step}: " + ", ".join(f"{k}={v}" for k, v in results.items()))
