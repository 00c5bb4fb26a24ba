"""Per-rank random streams under DDP: each rank its own (dropout masks differ), the same seed gives the
same run, and every rank's states travel in checkpoints (resume parity is in test_signal_stop.py)."""
import os

import pytest
import torch

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.train_loop import TrainLoop
from aitoolbox.torchtrain.train_loop.components.checkpointing import rank_stream_seed
from tests.tracking.helpers import loop_args


class RecordDraws(AbstractCallback):
    """Every rank saves a dropout mask and a torch.rand draw of its first batch."""

    def __init__(self, out_dir):
        super().__init__("record draws")
        self.out_dir = out_dir

    def on_batch_begin(self):
        loop = self.train_loop_obj
        if loop.total_iteration_idx == 0:
            mask = torch.nn.functional.dropout(torch.ones(64), p=0.5, training=True)
            torch.save({"mask": mask, "draw": torch.rand(4)},
                       os.path.join(self.out_dir, f"draws_rank{loop.strategy.rank}.pt"))


def run(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    loop = TrainLoop(*loop_args(seed=1), gpu_mode="ddp", show_progress=False, quiet=True)
    loop.fit(num_epochs=1, callbacks=[RecordDraws(str(out_dir))], num_gpus=2, on_gpu=False, backend="gloo")
    return loop, [torch.load(os.path.join(out_dir, f"draws_rank{r}.pt"), weights_only=True) for r in range(2)]


def test_rank_seeds_are_derived_from_the_seed_and_the_rank():
    assert rank_stream_seed(7, 0) == 7
    assert rank_stream_seed(7, 1) == rank_stream_seed(7, 1) != rank_stream_seed(7, 2) != rank_stream_seed(8, 1)


@pytest.mark.timeout(300)
def test_dropout_masks_differ_across_ranks_and_seeded_runs_are_identical(tmp_path):
    first, draws = run(tmp_path / "a")
    assert not torch.equal(draws[0]["mask"], draws[1]["mask"])
    assert not torch.equal(draws[0]["draw"], draws[1]["draw"])
    second, again = run(tmp_path / "b")
    for rank in range(2):
        assert torch.equal(draws[rank]["mask"], again[rank]["mask"])
    for name, value in first.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[name], value), name
