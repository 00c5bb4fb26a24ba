"""Model EMA as a callback: update after every optimizer step, evaluate, checkpoint."""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.ema import ModelEma


class ModelEmaCallback(AbstractCallback):
    """Keep an exponential moving average of the model's weights during training.

    The average is updated after every real optimizer step (not on steps that AMP's GradScaler
    skipped). With ``evaluate=True`` the averaged model is evaluated on the validation set at the
    end of every epoch, through the TrainLoop's own evaluation (same batching, AMP, DDP reduction),
    and its loss goes into the history as ``history_name`` (``ema_val_loss``). For that the
    averaged weights are copied into the model and the training weights copied back afterwards;
    the evaluation bypasses the prediction cache, so cached results of the training weights stay
    valid. The average is part of the callback's state and so of every checkpoint.

    Put it before the callbacks that read ``ema_val_loss`` (e.g. ``SaveBestModel`` or
    ``EarlyStopping`` on it): its default ``execution_order`` is 0, theirs 10.

    Args:
        decay: weight of the old average in each update.
        evaluate: evaluate the averaged model on the validation set at every epoch end.
        device: where to keep the average; None: on the model's device.
        history_name: history key of the averaged model's validation loss.
        execution_order: callback execution order.

    Attributes:
        model_ema: the :class:`~aitoolbox.torchtrain.ema.ModelEma`, created at registration.
    """

    def __init__(self, decay: float = 0.9999, evaluate: bool = True,
                 device: Optional[Union[str, torch.device]] = None, history_name: str = "ema_val_loss",
                 execution_order: int = 0):
        super().__init__("ModelEmaCallback", execution_order=execution_order)
        if not 0. <= decay <= 1.:
            raise ValueError(f"decay must be in [0, 1], got {decay}.")
        self.decay, self.evaluate, self.device = decay, evaluate, device
        self.history_name = history_name
        self.model_ema: Optional[ModelEma] = None

    @property
    def ema_model(self) -> nn.Module:
        """The averaged model."""
        return self.model_ema.module

    def produced_history_metrics(self):
        return [self.history_name, f"{self.history_name}_*"] if self.evaluate else []

    def on_train_loop_registration(self):
        if self.model_ema is None:
            self.model_ema = ModelEma(self.train_loop_obj.unwrapped_model(), self.decay, self.device)

    def on_after_optimizer_step(self):
        if not self.train_loop_obj.optimizer_step_skipped:
            self.model_ema.update(self.train_loop_obj.unwrapped_model())

    def on_epoch_end(self):
        if self.evaluate and self.train_loop_obj.validation_loader is not None:
            self.evaluate_ema_on_validation_set()

    def evaluate_ema_on_validation_set(self):
        """Validation loss of the averaged model, also appended to the history.

        Returns:
            The loss as a float (a dict for a ``MultiLoss``).
        """
        loop = self.train_loop_obj
        with self.model_ema.applied_to(loop.unwrapped_model()):
            loss = loop.evaluate_model_loss(loop.validation_loader, move_to_cpu=True,
                                            dataset_info={"type": "validation", "model": "ema"})
        value = loop.convert_loss_to_float_dict_format(loss)
        if isinstance(value, dict):
            loop.insert_metric_result_into_history(self.history_name, sum(value.values()))
        loop.insert_metric_result_into_history(self.history_name, value)
        return value

    def state_dict(self) -> dict:
        return {"ema": self.model_ema.state_dict(), "num_updates": self.model_ema.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.model_ema.load_state_dict(state["ema"])
        self.model_ema.num_updates = state["num_updates"]
