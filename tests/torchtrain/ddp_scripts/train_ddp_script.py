"""Trains ``RegressionNet`` with ``gpu_mode='ddp'`` on the CPU; run by the DDP tests.

Started by torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) it trains in place; otherwise it is
one node of a multi-node run (``--num-nodes``, ``--node-rank``, ``--init-method``). Either way it
saves the weights and history that this process holds after ``fit`` to ``--out``.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ddp_helpers as helpers  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--init-method", default="env://")
    parser.add_argument("--fail-rank", type=int, default=None, help="this rank raises at its 3rd batch")
    args = parser.parse_args()

    model = helpers.RegressionNet()
    loop = helpers.make_loop(model, batch_size=8, gpu_mode="ddp")
    callbacks = [] if args.fail_rank is None else [helpers.RaiseOnRank(args.fail_rank, iteration=2)]
    loop.fit(num_epochs=2 if args.fail_rank is None else 200, callbacks=callbacks, num_gpus=1, on_gpu=False,
             backend="gloo", num_nodes=args.num_nodes, node_rank=args.node_rank, init_method=args.init_method)
    tag = f"rank{os.environ['RANK']}" if "RANK" in os.environ else f"node{args.node_rank}"
    torch.save({"state": model.state_dict(), "history": loop.train_history.get_train_history_dict(),
                "rank": loop.strategy.rank, "world_size": loop.strategy.world_size,
                "in_place": loop.strategy.ddp_model is not None},
               os.path.join(args.out, f"{tag}.pt"))


if __name__ == "__main__":
    main()
