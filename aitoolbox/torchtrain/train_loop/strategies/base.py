"""The device strategy interface, and the single-device behaviour every strategy starts from.

The TrainLoop asks its strategy - chosen once from ``gpu_mode`` through
:data:`~aitoolbox.torchtrain.train_loop.strategies.STRATEGIES` - to
place and wrap the model, prepare loaders, synchronise gradients, and reduce evaluation results.
The loop itself never branches on the mode.
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Optional, Tuple

import torch
from torch import nn

from aitoolbox.torchtrain.model import ModelFeed
from aitoolbox.torchtrain.train_loop.components import checkpointing
from aitoolbox.torchtrain.train_loop.components.data_loading import eval_loader


#: one shared no-op context (reusable): no allocation per batch on the hot path
_NULL_CONTEXT = contextlib.nullcontext()


class DeviceStrategy:
    """One process, one device: the base every strategy extends.

    Args:
        cuda_device_idx: CUDA device to train on; None picks device 0 when CUDA is available.
    """

    #: the ``fit(**kwargs)`` that this strategy accepts, with their defaults
    fit_kwargs: dict = {}
    #: whether the mode runs one process per device (DDP, FSDP)
    multi_process = False
    rank = 0
    world_size = 1

    def __init__(self, cuda_device_idx: Optional[int] = None):
        self.device = self._pick_device(cuda_device_idx)
        self.wrapped_module: Optional[nn.Module] = None

    @staticmethod
    def _pick_device(cuda_device_idx: Optional[int]) -> torch.device:
        if cuda_device_idx is not None:
            if not torch.cuda.is_available() or cuda_device_idx >= torch.cuda.device_count():
                raise ValueError(f"cuda_device_idx={cuda_device_idx} but only "
                                 f"{torch.cuda.device_count()} CUDA device(s) are visible; pass "
                                 "cuda_device_idx=None to use the default device.")
            return torch.device(f"cuda:{cuda_device_idx}")
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def check_fit_kwargs(self, kwargs: dict) -> dict:
        """This strategy's fit kwargs, defaults filled in; unknown ones are an error.

        Raises:
            TypeError: a keyword that this ``gpu_mode`` does not take.
        """
        unknown = sorted(set(kwargs) - set(self.fit_kwargs))
        if unknown:
            raise TypeError(f"fit() got unexpected keyword argument(s) {unknown} for gpu_mode="
                            f"'{self.gpu_mode}'; it accepts {sorted(self.fit_kwargs) or 'none'}.")
        return {**self.fit_kwargs, **kwargs}

    @property
    def gpu_mode(self) -> str:
        """The ``gpu_mode`` this strategy serves."""
        from aitoolbox.torchtrain.train_loop.strategies import STRATEGIES

        return next(k for k, v in STRATEGIES.items() if v.endswith(type(self).__name__))

    def launch(self, loop, train_args: dict, strategy_args: dict):
        """Run ``loop._train(**train_args)``, in as many processes as the strategy needs.

        Returns:
            What the TrainLoop's ``fit`` returns: the trained model.
        """
        return loop._train(**train_args)

    def setup_model(self, module: nn.Module, feed_def, strategy_args: Optional[dict] = None) -> ModelFeed:
        """Move ``module`` to the device and return the feed the loop calls."""
        module.to(self.device)
        self.wrapped_module = module
        return ModelFeed(module, feed_def)

    def compile_model(self, feed_def, compile_args) -> ModelFeed:
        """``torch.compile`` the model.

        A TTModel is compiled in place, so that ``self(...)`` in its ``get_loss`` is compiled; for
        a plain module or a ``ModelWrap`` the feed calls a compiled wrapper of the module.
        """
        kwargs = compile_args if isinstance(compile_args, dict) else {}
        module = self.wrapped_module
        if feed_def is not None:
            # The feed definition calls the module itself, so compile that call: dynamo does not
            # trace an in-place ``module.compile()`` whose forward is torch's own (nn.Sequential).
            return ModelFeed(torch.compile(module, **kwargs), feed_def)
        if not getattr(module, "_aitoolbox_compiled", False):
            module.compile(**kwargs)
            module._aitoolbox_compiled = True
        return ModelFeed(module, feed_def)

    def setup_precision(self, amp_handler, module: nn.Module) -> None:
        """Adapt the model to the AMP handler's autocast (nothing to do on one device).

        DataParallel makes autocast's dtype follow into its replica threads here.
        """

    def setup_run(self, loop) -> None:
        """Called by the TrainLoop once a run's callbacks are registered, before ``on_train_begin``.

        The DDP strategy runs the ``on_multiprocess_start`` hooks here and shards the train loader.
        """

    def prepare_train_loader(self, loader):
        """The loader to train with (the DDP strategy shards it across ranks)."""
        return loader

    def prepare_eval_loader(self, loader):
        """The loader to evaluate with: the whole data set, in data-set order."""
        return eval_loader(loader)

    def set_epoch(self, loader, epoch: int) -> None:
        """Tell a distributed sampler which epoch starts (no-op on one device)."""

    def no_sync(self) -> ContextManager:
        """Context of the forward and backward pass of an accumulation micro-batch (one after
        which the optimizer does not step); DDP skips the gradient all-reduce in it."""
        return _NULL_CONTEXT

    def solo(self) -> ContextManager:
        """Context in which this process works alone: evaluations read whole data sets and no
        collective is entered. Callbacks pinned to one rank (``device_idx_execution``) run in it."""
        return contextlib.nullcontext()

    def reduce_eval(self, loss_sum: Any, num_samples: int) -> Tuple[Any, int]:
        """Sum an evaluation loss sum and sample count over the ranks (identity here)."""
        return loss_sum, num_samples

    def gather_predictions(self, y_pred, y_true, metadata, dataset_len: Optional[int]):
        """Every rank's predictions, in data-set order (identity here)."""
        return y_pred, y_true, metadata

    def any_rank(self, flag: bool) -> bool:
        """True when ``flag`` is True on any rank (e.g. ``early_stop``)."""
        return flag

    def mean_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """Average a tensor over the ranks (identity here)."""
        return value

    def sum_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """Sum a scalar tensor over the ranks, one all-reduce (identity here): the weight of an
        accumulation window under ``loss_weighting`` (``components/loss_weighting.py``)."""
        return value

    def all_ranks(self, flag: bool) -> bool:
        """True when ``flag`` is True on every rank (identity here): whether every rank still has
        a batch of a stream, asked once per batch (``components/streams.py``)."""
        return flag

    # ------------------------------------------------------------------ state
    #: whether checkpoints are sharded now (a folder, written by every rank): in an FSDP rank
    shards_checkpoints = False

    def training_state(self, loop) -> Tuple[dict, Any, Optional[list]]:
        """The model's and optimizer's state dicts and the pending gradients, as a checkpoint holds them.

        Full (unsharded) tensors keyed as in the user's plain model; the FSDP strategy gathers
        its shards here, so every rank must call it there.
        """
        return (checkpointing.plain_module(loop.module).state_dict(), loop.optimizer.state_dict(),
                checkpointing.module_grads(loop.module))

    def restore_grads(self, module: nn.Module, grads: list) -> None:
        """Put the gradients of an unfinished accumulation window (full tensors) back."""
        for param, grad in zip(module.parameters(), grads):
            param.grad = None if grad is None else grad.to(param.device)

    def is_main_process(self) -> bool:
        """Whether this process is the main one (rank 0)."""
        return self.rank == 0

    def gather_objects(self, obj) -> Optional[list]:
        """Every rank's ``obj``, in rank order (a collective); None on one device."""
        return None

    def barrier(self) -> None:
        """Wait for every rank (no-op on one device)."""
