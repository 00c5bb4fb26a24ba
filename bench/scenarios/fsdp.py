"""Scenario 9: FSDP2 on CPU (gloo, 2 processes) against a hand-written ``fully_shard`` script.

Both arms shard the same MLP the same way (each ``Linear`` an FSDP unit, then the root) over an
explicit CPU device mesh and train ``steps`` batches per rank with SGD. Rank 0 stamps the wall
clock at its first and after its last training step; the compared number is the time between
the two (training after start-up), since the start-up (spawning, imports, process group) is the
DDP scenario's subject.
"""
from __future__ import annotations

import gc
import os
import time

from bench import common
from bench.scenarios.ddp import _free_port, train_data

BASE = dict(sizes=[64, 256, 256, 10], batch_size=32, steps=400, world_size=2)


def params(quick: bool) -> dict:
    """The workload; ``quick`` shrinks it to a smoke run."""
    out = dict(BASE)
    if quick:
        out.update(steps=20)
    return out


def stamp_paths() -> tuple:
    """Files where rank 0 writes the wall-clock times of its first step and of its end."""
    base = os.path.join(os.environ.get("BENCH_TMP", "/tmp"), f"bench_fsdp_{os.getpid()}")
    return f"{base}_first", f"{base}_end"


def read_stamps(paths: tuple) -> dict:
    """Training seconds after start-up from the two stamp files (then removed)."""
    times = []
    for path in paths:
        with open(path) as fh:
            times.append(float(fh.read()))
        os.remove(path)
    return {"train_seconds": times[1] - times[0]}


def _stamp(path: str) -> None:
    with open(path, "w") as fh:
        fh.write(repr(time.time()))


def _hand_worker(rank: int, p: dict, port: int, stamps: tuple) -> None:
    """One rank of the hand-written FSDP2 script."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.utils.data import DataLoader, DistributedSampler
    common.limit_threads()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=p["world_size"])
    model = common.mlp(p["sizes"])
    mesh = init_device_mesh("cpu", (p["world_size"],))
    for layer in model:
        if any(True for _ in layer.parameters()):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt, crit = common.sgd(model), torch.nn.CrossEntropyLoss()  # built on the sharded parameters
    data = train_data(p)
    sampler = DistributedSampler(data, num_replicas=p["world_size"], rank=rank, shuffle=True, seed=0)
    train = DataLoader(data, batch_size=p["batch_size"], sampler=sampler)
    sampler.set_epoch(0)
    for step, (x, y) in enumerate(train):
        if step == 0 and rank == 0:
            _stamp(stamps[0])
        opt.zero_grad(set_to_none=True)
        crit(model(x), y).backward()
        opt.step()
    if rank == 0:
        _stamp(stamps[1])
    dist.barrier()
    del model, opt, train, sampler, mesh
    dist.destroy_process_group()
    gc.collect()


def arm_hand(p: dict) -> dict:
    """``torch.multiprocessing.spawn`` of two gloo ranks running ``fully_shard`` by hand."""
    import torch.multiprocessing as mp
    stamps = stamp_paths()
    mp.spawn(_hand_worker, args=(p, _free_port(), stamps), nprocs=p["world_size"], join=True)
    return read_stamps(stamps)


def arm_aitoolbox(p: dict) -> dict:
    """``TrainLoop(..., gpu_mode='fsdp').fit(num_gpus=2, on_gpu=False, backend='gloo')``."""
    import torch
    from aitoolbox import TrainLoop
    from bench.scenarios.ddp_stamp import FirstStepStamp, TrainEndStamp
    model = common.mlp(p["sizes"])
    train = common.loader(train_data(p), p["batch_size"], shuffle=True)
    first, end = stamp_paths()
    loop = TrainLoop(model, train, None, None, common.sgd(model), torch.nn.CrossEntropyLoss(),
                     gpu_mode="fsdp", end_auto_eval=False, show_progress=False)
    # The default wrap (each child module with parameters, then the root) is the hand arm's.
    loop.fit(num_epochs=1, callbacks=[FirstStepStamp(first), TrainEndStamp(end)],
             num_gpus=p["world_size"], on_gpu=False, backend="gloo")
    return read_stamps((first, end))
