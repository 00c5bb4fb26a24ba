"""The first-step stamp callback of the DDP scenario.

It lives in its own module (not inside a function) because ``gpu_mode='ddp'`` pickles callbacks to
the processes it starts, and only the aitoolbox arm imports it, so the hand-written arm pays no
aitoolbox import.
"""
import time

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback


class FirstStepStamp(AbstractCallback):
    """Writes the wall-clock time at which rank 0 starts its first epoch into ``stamp``.

    It hooks ``on_epoch_begin`` (right before the first batch), not a batch hook: under DDP a
    callback with batch hooks makes the loop synchronise ``early_stop`` after every batch, a cost
    the hand-written script does not pay.
    """

    def __init__(self, stamp: str):
        super().__init__("first step stamp", device_idx_execution=0)
        self.stamp, self.done = stamp, False

    def on_epoch_begin(self):
        if not self.done:
            with open(self.stamp, "w") as fh:
                fh.write(repr(time.time()))
            self.done = True


class TrainEndStamp(AbstractCallback):
    """Writes the wall-clock time at which rank 0's training ends (after its last step) into ``stamp``."""

    def __init__(self, stamp: str):
        super().__init__("train end stamp", device_idx_execution=0)
        self.stamp = stamp

    def on_train_end(self):
        with open(self.stamp, "w") as fh:
            fh.write(repr(time.time()))
