"""Scenario 5: DDP on CPU (gloo, 2 processes) against a hand-written ``mp.spawn`` script.

Both arms are whole programs: the orchestrator times the process from launch to exit (imports,
spawning, process-group set-up, training, tear-down). Rank 0 stamps the wall clock at its first
training step; *start-up* is that stamp minus the launch time that the orchestrator passes in
``BENCH_LAUNCH_TIME``. Each rank trains ``steps`` batches of the tiny MLP.
"""
from __future__ import annotations

import gc
import os
import time

from bench import common

BASE = dict(sizes=[32, 64, 10], batch_size=32, steps=1_000, world_size=2)


def params(quick: bool) -> dict:
    """The workload; ``quick`` shrinks it to a smoke run."""
    out = dict(BASE)
    if quick:
        out.update(steps=20)
    return out


def train_data(p: dict):
    """Enough samples for ``steps`` batches on each of the ``world_size`` ranks."""
    n_in, n_out = p["sizes"][0], p["sizes"][-1]
    return common.dataset(p["steps"] * p["batch_size"] * p["world_size"], n_in, n_out)


def launch_time() -> float:
    """Wall-clock time at which the orchestrator launched this process."""
    return float(os.environ.get("BENCH_LAUNCH_TIME", time.time()))


def stamp_path() -> str:
    """File where rank 0 writes the wall-clock time of its first step."""
    return os.path.join(os.environ.get("BENCH_TMP", "/tmp"), f"bench_ddp_first_step_{os.getpid()}")


def read_stamp(path: str) -> dict:
    """Start-up seconds from the stamp file (then removed)."""
    with open(path) as fh:
        first_step = float(fh.read())
    os.remove(path)
    return {"startup_seconds": first_step - launch_time()}


def _hand_worker(rank: int, p: dict, port: int, stamp: str) -> None:
    """One rank of the hand-written DDP script."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler
    common.limit_threads()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=p["world_size"])
    model = DistributedDataParallel(common.mlp(p["sizes"]))
    data = train_data(p)
    sampler = DistributedSampler(data, num_replicas=p["world_size"], rank=rank, shuffle=True, seed=0)
    train = DataLoader(data, batch_size=p["batch_size"], sampler=sampler)
    opt, crit = common.sgd(model), torch.nn.CrossEntropyLoss()
    sampler.set_epoch(0)
    for step, (x, y) in enumerate(train):
        if step == 0 and rank == 0:
            with open(stamp, "w") as fh:
                fh.write(repr(time.time()))
        opt.zero_grad(set_to_none=True)
        crit(model(x), y).backward()
        opt.step()
    # A clean shutdown, as every DDP script needs: wait for the peer (a rank that tears its
    # connections down while the other still uses them aborts it), drop the DDP wrapper (it holds
    # the process group), destroy the group and collect it while the interpreter is alive. Left to
    # interpreter exit, gloo's threads abort the process ("terminate called without an active
    # exception"), as they did here in 3 runs of 4.
    dist.barrier()
    del model, opt, train, sampler
    dist.destroy_process_group()
    gc.collect()


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def arm_hand(p: dict) -> dict:
    """``torch.multiprocessing.spawn`` of two gloo ranks, written by hand."""
    import torch.multiprocessing as mp
    stamp = stamp_path()
    mp.spawn(_hand_worker, args=(p, _free_port(), stamp), nprocs=p["world_size"], join=True)
    return read_stamp(stamp)


def arm_aitoolbox(p: dict) -> dict:
    """``TrainLoop(..., gpu_mode='ddp').fit(num_gpus=2, on_gpu=False, backend='gloo')``."""
    import torch
    from aitoolbox import TrainLoop
    from bench.scenarios.ddp_stamp import FirstStepStamp
    model = common.mlp(p["sizes"])
    train = common.loader(train_data(p), p["batch_size"], shuffle=True)
    stamp = stamp_path()
    # The TrainLoop takes a built optimizer, so this process builds one, which the hand-written
    # parent never does; torch imports torch._dynamo when the first optimizer is built. Timed
    # apart, to show how much of the start-up that is.
    start = time.perf_counter()
    opt = common.sgd(model)
    parent_optimizer_seconds = time.perf_counter() - start
    loop = TrainLoop(model, train, None, None, opt, torch.nn.CrossEntropyLoss(),
                     gpu_mode="ddp", end_auto_eval=False, show_progress=False)
    loop.fit(num_epochs=1, callbacks=[FirstStepStamp(stamp)], num_gpus=p["world_size"],
             on_gpu=False, backend="gloo")
    return {**read_stamp(stamp), "parent_optimizer_seconds": parent_optimizer_seconds}
