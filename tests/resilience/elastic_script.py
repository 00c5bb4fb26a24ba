"""Started by ``torchrun --max-restarts=1``: a tracked DDP run that resumes itself after a restart.

``--die-at K``: rank 1 ends its process with ``os._exit(1)`` after batch K, once (a marker file
remembers it), so that torchrun restarts the group; the new processes find the newest checkpoint
with ``resume=True``. Rank 0 saves the final weights to ``--out``.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback  # noqa: E402
from aitoolbox.torchtrain.train_loop import TrainLoopCheckpoint  # noqa: E402
from tests.tracking.helpers import loop_args  # noqa: E402


class DieOnce(AbstractCallback):
    """Rank 1 exits hard after batch ``k`` (after that batch's checkpoint), the first time only."""

    def __init__(self, k: int, marker: str):
        super().__init__("die once", execution_order=1500)  # after the checkpoint callback (1000)
        self.k, self.marker = k, marker

    def on_batch_end(self):
        loop = self.train_loop_obj
        if loop.strategy.rank == 1 and loop.total_iteration_idx + 1 == self.k and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--die-at", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(0)
    loop = TrainLoopCheckpoint(*loop_args(seed=1), project_name="proj", experiment_name="exp",
                               local_model_result_folder_path=args.root, hyperparams={}, cloud_save_mode=None,
                               iteration_save_freq=1, gpu_mode="ddp", show_progress=False, resume=True)
    callbacks = [DieOnce(args.die_at, os.path.join(args.root, "died"))] if args.die_at else []
    loop.fit(num_epochs=2, callbacks=callbacks, on_gpu=False, backend="gloo")
    if loop.strategy.rank == 0:
        torch.save({"model": loop.model.state_dict(), "history": loop.train_history.get_train_history_dict()},
                   args.out)


if __name__ == "__main__":
    main()
