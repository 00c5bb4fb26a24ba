"""``gpu_mode='dp'``: one process, the batch split over the visible GPUs by ``nn.DataParallel``.

A ``TTModel`` is wrapped in :class:`~aitoolbox.torchtrain.parallel.TTDataParallel`; a plain module
or a ``ModelWrap``'s module in ``nn.DataParallel``. Either way ``self(...)`` / ``model(...)`` in the
user's loss and prediction code runs through the wrapper, and attribute access still finds the
user's module attributes. Without GPUs DataParallel just calls the module.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from aitoolbox.torchtrain.model import ModelFeed
from aitoolbox.torchtrain.parallel import ModuleView, TTDataParallel
from aitoolbox.torchtrain.train_loop.strategies.base import DeviceStrategy

logger = logging.getLogger("aitoolbox")


class DataParallelStrategy(DeviceStrategy):
    """``gpu_mode='dp'``: ``torch.nn.DataParallel`` over the visible GPUs.

    ``fit(..., dp_model_args={...})`` passes arguments (``device_ids``, ``output_device``, ``dim``)
    to the DataParallel wrapper; the model is re-wrapped with them when training starts.
    """

    fit_kwargs = {"dp_model_args": None}

    def __init__(self, cuda_device_idx: Optional[int] = None):
        super().__init__(cuda_device_idx)
        self.feed: Optional[ModelFeed] = None
        self.compiled_module: Optional[nn.Module] = None

    def setup_model(self, module: nn.Module, feed_def, strategy_args: Optional[dict] = None) -> ModelFeed:
        """Move ``module`` to the first DP device, wrap it and return the feed the loop calls.

        A module that already is a DataParallel (e.g. a user-built ``TTDataParallel``) is used as is.
        """
        dp_args = dict((strategy_args or {}).get("dp_model_args") or {})
        self.device = _dp_device(dp_args, self.device)
        module.to(self.device)
        if isinstance(module, nn.DataParallel):
            if dp_args:
                logger.warning("dp_model_args ignored: the model passed to the TrainLoop already is a "
                               "DataParallel wrapper.")
            wrapper = module
        elif feed_def is None:
            wrapper = TTDataParallel(module, **dp_args)
        else:
            wrapper = nn.DataParallel(module, **dp_args)
        self.wrapped_module, self.compiled_module = wrapper, None
        self.feed = wrapper_feed(wrapper, wrapper.module, feed_def)
        return self.feed

    def setup_precision(self, amp_handler, module: nn.Module) -> None:
        # DataParallel runs its replicas in threads of their own: autocast's dtype must follow.
        amp_handler.follow_into_threads(module)

    def launch(self, loop, train_args: dict, strategy_args: dict):
        """Re-wrap the model when ``dp_model_args`` are given, then train in this process."""
        if strategy_args.get("dp_model_args") is not None:
            loop.feed = self.setup_model(loop.module, loop.feed_def, strategy_args)
            loop.device = self.device
        return loop._train(**train_args)

    def compile_model(self, feed_def, compile_args) -> ModelFeed:
        """``torch.compile`` the DataParallel wrapper; the feed then calls the compiled wrapper."""
        if self.compiled_module is None:
            self.compiled_module = torch.compile(self.wrapped_module, **_compile_kwargs(compile_args))
            self.feed = wrapper_feed(self.compiled_module, self.wrapped_module.module, feed_def)
        return self.feed


def wrapper_feed(caller: nn.Module, module: nn.Module, feed_def) -> ModelFeed:
    """The feed of a wrapped model: its methods, or ``feed_def``, see a view whose calls run ``caller``.

    Args:
        caller: what ``self(...)`` / ``model(...)`` runs: the DP / DDP wrapper (possibly compiled).
        module: the user's module inside it.
        feed_def: the ``ModelWrap`` feed definition, or None for a TTModel.
    """
    return ModelFeed(ModuleView(caller, module), feed_def)


def _compile_kwargs(compile_args) -> dict:
    return compile_args if isinstance(compile_args, dict) else {}


def _dp_device(dp_args: dict, default: torch.device) -> torch.device:
    """DataParallel needs the module on its first device (``device_ids[0]``)."""
    device_ids = dp_args.get("device_ids")
    if device_ids and torch.cuda.is_available():
        first = device_ids[0]
        return first if isinstance(first, torch.device) else torch.device(f"cuda:{first}")
    return default
