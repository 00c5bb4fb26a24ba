"""Callbacks of the original aitoolbox for ``gpu_mode='ddp'`` data handling.

Our DDP strategy already shards the training loader and calls ``set_epoch`` on its sampler every
epoch, and runs every callback's ``on_multiprocess_start`` in each process; these callbacks are
kept so that scripts using them run unchanged, and still do their job for samplers they are given.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback


class DistributedSamplerSetEpoch(AbstractCallback):
    """Call ``set_epoch(epoch)`` on the given samplers at the start of every epoch.

    The train loader's sampler is set by the TrainLoop already (calling it again is harmless);
    this matters for samplers the loop does not own, e.g. one driving a loader used elsewhere.

    Args:
        train_sampler: sampler of the train loader, or None.
        validation_sampler: sampler of the validation loader, or None.
        test_sampler: sampler of the test loader, or None.
    """

    def __init__(self, train_sampler=None, validation_sampler=None, test_sampler=None):
        super().__init__("set_epoch for DistributedSamplers at the start of each epoch", execution_order=-100)
        self.train_sampler = train_sampler
        self.validation_sampler = validation_sampler
        self.test_sampler = test_sampler

    def on_epoch_begin(self):
        for sampler in (self.train_sampler, self.validation_sampler, self.test_sampler):
            if sampler is not None and hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.train_loop_obj.epoch)


LoaderBuildFn = Optional[Union[Callable[[], object], bool]]


class InMultiProcessDataLoad(AbstractCallback):
    """Build the data loaders inside each DDP process (``on_multiprocess_start``).

    Give it in ``fit(callbacks=[...])`` or ``fit(..., in_process_data_load=...)``; outside DDP it
    does nothing. A loader built here replaces the TrainLoop's; the training loader is then sharded
    across the processes by the TrainLoop.

    Args:
        train_loader_build_fn: returns the train loader; None / False keeps the TrainLoop's.
        val_loader_build_fn: returns the validation loader; None / False keeps the TrainLoop's.
        test_loader_build_fn: returns the test loader; None / False keeps the TrainLoop's.
    """

    def __init__(self, train_loader_build_fn: LoaderBuildFn = None, val_loader_build_fn: LoaderBuildFn = None,
                 test_loader_build_fn: LoaderBuildFn = None):
        super().__init__("Multiprocess in-process data loading logic infuser")
        self.train_loader_build_fn = train_loader_build_fn
        self.val_loader_build_fn = val_loader_build_fn
        self.test_loader_build_fn = test_loader_build_fn

    def on_multiprocess_start(self):
        if self.train_loader_build_fn not in (None, False):
            self.train_loop_obj.train_loader = self.build_train_dataloader()
        if self.val_loader_build_fn not in (None, False):
            self.train_loop_obj.validation_loader = self.build_val_dataloader()
        if self.test_loader_build_fn not in (None, False):
            self.train_loop_obj.test_loader = self.build_test_dataloader()

    def build_train_dataloader(self):
        """The train loader (subclasses may override instead of passing a function)."""
        return self.train_loader_build_fn()

    def build_val_dataloader(self):
        """The validation loader (subclasses may override instead of passing a function)."""
        return self.val_loader_build_fn()

    def build_test_dataloader(self):
        """The test loader (subclasses may override instead of passing a function)."""
        return self.test_loader_build_fn()
