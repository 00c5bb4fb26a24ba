"""A tiny tracked training run that the preemption tests signal, stop and resume.

``--pause-at K``: after batch K (counted over the run) every rank writes ``<root>/paused_rank<r>``
and waits until the test creates ``<root>/go`` (after sending its signal), so that the stop lands
at a known batch boundary. ``--resume PATH`` loads a checkpoint first; ``--resume latest`` uses
``resume=True``. The final weights go to ``--out`` (not written when the run is stopped).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback  # noqa: E402
from aitoolbox.torchtrain.callbacks.stop_signal import StopOnSignal  # noqa: E402
from aitoolbox.torchtrain.train_loop import TrainLoopCheckpoint  # noqa: E402
from tests.tracking.helpers import loop_args  # noqa: E402


class PauseAt(AbstractCallback):
    """At batch ``k`` (1-based, over the run) wait for the test's ``go`` file."""

    def __init__(self, root: str, k: int):
        super().__init__("pause for the test", execution_order=-10)
        self.root, self.k = root, k

    def on_batch_end(self):
        loop = self.train_loop_obj
        if loop.total_iteration_idx + 1 != self.k:
            return
        rank = loop.strategy.rank
        with open(os.path.join(self.root, f"paused_rank{rank}"), "w") as f:
            f.write(str(os.getpid()))
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(self.root, "go")) and time.monotonic() < deadline:
            time.sleep(0.02)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pause-at", type=int, default=0)
    parser.add_argument("--ddp", action="store_true")
    parser.add_argument("--bucket", default=None)
    parser.add_argument("--signals", default="SIGTERM,SIGINT")
    parser.add_argument("--upload-timeout", type=float, default=20.0)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--iteration-save-freq", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(0)
    cloud = dict(cloud_save_mode="s3", bucket_name=args.bucket) if args.bucket else dict(cloud_save_mode=None)
    extra = {"resume": True} if args.resume == "latest" else {}
    loop = TrainLoopCheckpoint(*loop_args(seed=1), project_name="proj", experiment_name="exp",
                               local_model_result_folder_path=args.root, hyperparams={},
                               iteration_save_freq=args.iteration_save_freq,
                               gpu_mode="ddp" if args.ddp else "single", show_progress=False, **cloud, **extra)
    if args.resume and args.resume != "latest":
        loop.load_checkpoint(args.resume)
    callbacks = [StopOnSignal(signals=args.signals.split(","), upload_timeout=args.upload_timeout)]
    if args.pause_at:
        callbacks.append(PauseAt(args.root, args.pause_at))
    ddp = dict(num_gpus=2, on_gpu=False, backend="gloo") if args.ddp else {}
    loop.fit(num_epochs=args.epochs, callbacks=callbacks, **ddp)
    torch.save({"model": loop.model.state_dict(), "history": loop.train_history.get_train_history_dict(),
                "experiment_dir": loop.experiment_dir}, args.out)


if __name__ == "__main__":
    main()
