"""Callbacks of the DDP logger test (importable by the spawned ranks)."""
import json
import os

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback


class SaveThroughputCounts(AbstractCallback):
    """Every rank writes what its ThroughputMonitor counted in the last epoch (after the monitor ran)."""

    def __init__(self, out_dir):
        super().__init__("SaveThroughputCounts", execution_order=0)
        self.out_dir = out_dir

    def on_train_end(self):
        loop = self.train_loop_obj
        rank = loop.strategy.rank
        monitor = next(cb for cb in loop.callbacks if type(cb).__name__ == "ThroughputMonitor")
        with open(os.path.join(self.out_dir, f"counts_rank{rank}.json"), "w") as f:
            json.dump({"counts": monitor.last_counts, "samples_per_s": monitor.last["samples_per_s"],
                       "world_size": loop.strategy.world_size}, f)
