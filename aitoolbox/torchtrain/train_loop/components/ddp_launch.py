"""Starting the processes of a ``gpu_mode='ddp'`` run and bringing its result back.

The parent writes the TrainLoop and the run's arguments to a private temporary file with
``torch.save`` and starts ``num_gpus`` processes with ``torch.multiprocessing.start_processes``.
Sending them through a file rather than through the spawn arguments keeps tensors out of
``torch.multiprocessing``'s shared memory: each rank gets its own copy of the model, and a
``DataLoader`` holding a ``torch.Generator`` works with the default ``file_descriptor`` sharing
strategy (which otherwise kills the children with "unable to resize file ... (22)").

When training ends, local rank 0 of the node writes the TrainLoop's state (weights, optimizer,
history, counters, callback state) atomically; the parent loads it into its own TrainLoop.
A rank that fails ends the run: ``start_processes`` terminates the others and raises its error.
"""
from __future__ import annotations

import logging
import os
import pickle
import socket
import tempfile
import time
from typing import Dict

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from aitoolbox.torchtrain.train_loop.components.ddp_config import DDPConfig
from aitoolbox.torchtrain.train_loop.components.rng_state import get_rng_state, set_rng_state
from aitoolbox.utils.io import atomic_torch_save
from aitoolbox.utils.log import get_logger

logger = logging.getLogger("aitoolbox")

#: seconds a rank that failed only because a peer failed waits before exiting, so that the run
#: reports the peer's (root-cause) error rather than "connection closed by peer"
PEER_FAILURE_DELAY_S = 2.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def master_env(config: DDPConfig) -> Dict[str, str]:
    """``MASTER_ADDR`` / ``MASTER_PORT`` for the ranks of an ``env://`` run.

    Values set in the environment win; on one node the missing ones default to the loopback
    address and a free port (so that a busy 29500 or 8888 does not matter).
    """
    if not config.init_method.startswith("env://"):
        return {}
    env = {name: os.environ[name] for name in ("MASTER_ADDR", "MASTER_PORT") if name in os.environ}
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in env:
        env["MASTER_PORT"] = str(free_port())
    return env


def spawn_fit(loop, train_args: dict, config: DDPConfig, data_load: list):
    """Train ``loop`` in ``config.num_gpus`` new processes; load the result into ``loop``.

    Returns:
        ``loop.model``, holding the trained weights.
    """
    ddp_args = {"config": config, "env": master_env(config)}
    with tempfile.TemporaryDirectory(prefix="aitoolbox-ddp-") as run_dir:
        payload_path = os.path.join(run_dir, "payload.pt")
        ddp_args["result_path"] = os.path.join(run_dir, "result.pt")
        save_payload(loop, {"train_args": train_args, "in_process_data_load": data_load}, payload_path)
        logger.info("gpu_mode='ddp': starting %d process(es) on node %d of %d (world size %d)",
                    config.num_gpus, config.node_rank, config.num_nodes, config.world_size)
        mp.start_processes(rank_main, args=(payload_path, ddp_args), nprocs=config.num_gpus,
                           join=True, start_method="spawn")
        loop.load_checkpoint(ddp_args["result_path"])
    loop.num_epochs, loop.num_iterations = train_args["num_epochs"], train_args["num_iterations"]
    loop.grad_accumulation = train_args["grad_accumulation"]
    return loop.model


def save_payload(loop, run_args: dict, path: str) -> None:
    """``torch.save`` the TrainLoop (without its device-specific feed) and ``run_args`` to ``path``.

    Raises:
        TypeError: something in the TrainLoop or the arguments cannot be pickled.
    """
    rng = get_rng_state()
    rng.pop("cuda", None)  # each rank seeds its own device below
    saved = loop.feed, loop._eval_loaders
    loop.feed, loop._eval_loaders = None, {}
    try:
        torch.save({"loop": loop, "rng": rng, "initial_seed": torch.initial_seed(), **run_args}, path)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise TypeError(
            "gpu_mode='ddp' hands the TrainLoop (model, loaders, optimizer, callbacks) to the processes it "
            f"starts with pickle, which failed: {exc}. Define models, data sets, collate / worker_init "
            "functions and callbacks at module level (no lambdas or local classes), or start the script "
            "with torchrun, which needs no pickling.") from exc
    finally:
        loop.feed, loop._eval_loaders = saved


def rank_main(local_rank: int, payload_path: str, ddp_args: dict) -> None:
    """Entry point of a spawned rank: load the TrainLoop, train, hand the result to the parent."""
    # Our own file in a private temporary directory: full unpickling is safe and needed.
    get_logger()  # the parent's logging set-up does not reach this process
    payload = torch.load(payload_path, map_location="cpu", weights_only=False)
    torch.manual_seed(payload["initial_seed"])  # also seeds this rank's CUDA generator
    set_rng_state(payload["rng"])
    _limit_cpu_threads(ddp_args["config"])
    loop, train_args = payload["loop"], payload["train_args"]
    try:
        loop._spawn_fit(local_rank, ddp_args, train_args["num_epochs"], train_args["num_iterations"],
                        train_args["callbacks"], train_args["grad_accumulation"], payload["in_process_data_load"])
        if local_rank == 0:
            atomic_torch_save(loop.state_dict(), ddp_args["result_path"])
        loop.strategy.barrier()
        loop.strategy.shutdown()
    except Exception as exc:
        if is_peer_failure(exc):
            time.sleep(PEER_FAILURE_DELAY_S)
        raise


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` only reports that another rank went away (not a root cause)."""
    text = str(exc)
    return isinstance(exc, getattr(dist, "DistNetworkError", ())) or any(
        marker in text for marker in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


def _limit_cpu_threads(config: DDPConfig) -> None:
    """Share the CPU cores between the ranks of a CPU run (as torchrun does), unless the user chose."""
    if not config.on_gpu and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.num_gpus))
