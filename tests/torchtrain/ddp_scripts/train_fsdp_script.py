"""Trains ``RegressionNet`` with ``gpu_mode='fsdp'`` on the CPU in place under torchrun (FSDP tests).

It fits twice (1 epoch, then on to 2: the second ``fit`` reuses the model sharded by the first).
Each rank saves the full weights (gathered from the shards) and whether its model was sharded.
"""
import argparse
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ddp_helpers as helpers  # noqa: E402
from aitoolbox import TrainLoop  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    model = helpers.RegressionNet()
    loop = TrainLoop(model, DataLoader(helpers.train_set(), batch_size=8),
                     DataLoader(helpers.validation_set(101), batch_size=10), None,
                     torch.optim.Adam(model.parameters(), lr=0.01), nn.MSELoss(), gpu_mode="fsdp",
                     show_progress=False)
    for num_epochs in (1, 2):
        loop.fit(num_epochs=num_epochs, num_gpus=1, on_gpu=False, backend="gloo", timeout=60)
    state = loop.state_dict()  # every rank: the full weights are gathered from the shards
    torch.save({"state": state["model_state_dict"], "rank": loop.strategy.rank,
                "world_size": loop.strategy.world_size, "history": dict(loop.train_history),
                "sharded": type(next(model.parameters())).__name__ == "DTensor"},
               os.path.join(args.out, f"rank{os.environ['RANK']}.pt"))


if __name__ == "__main__":
    main()
