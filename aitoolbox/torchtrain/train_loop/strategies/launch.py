"""Starting the processes of a ``gpu_mode='ddp'`` or ``'fsdp'`` run and bringing its result back.

The parent writes the TrainLoop and the run's arguments to a private temporary file with
``torch.save`` and starts ``num_gpus`` processes with ``torch.multiprocessing.start_processes``.
Sending them through a file rather than through the spawn arguments keeps tensors out of
``torch.multiprocessing``'s shared memory: each rank gets its own copy of the model, and a
``DataLoader`` holding a ``torch.Generator`` works with the default ``file_descriptor`` sharing
strategy (which otherwise kills the children with "unable to resize file ... (22)").

Each rank freezes what its imports created out of the garbage collector's reach (see
:func:`_freeze_imported_modules`), joins the process group (on one node through a rendezvous store
the parent hosts, see :func:`host_rendezvous_store`), then loads the payload.
When training ends, local rank 0 of the node writes the TrainLoop's state (weights, optimizer,
history, counters, callback state) atomically; the parent loads it into its own TrainLoop.
A rank that fails ends the run: ``start_processes`` terminates the others and raises its error.
"""
from __future__ import annotations

import datetime
import gc
import logging
import os
import pickle
import signal
import socket
import tempfile
import threading
import time
from typing import Dict, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from aitoolbox.torchtrain.train_loop.components.checkpointing import gather_rank_rng
from aitoolbox.torchtrain.train_loop.components.preemption import TrainingStopped
from aitoolbox.torchtrain.train_loop.components.rng_state import get_rng_state, set_rng_state
from aitoolbox.torchtrain.train_loop.strategies.config import DDPConfig
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
        store = host_rendezvous_store(config, ddp_args["env"])
        ddp_args["parent_store"] = store is not None
        logger.info("gpu_mode='%s': starting %d process(es) on node %d of %d (world size %d)",
                    loop.gpu_mode, config.num_gpus, config.node_rank, config.num_nodes, config.world_size)
        try:
            context = mp.start_processes(rank_main, args=(payload_path, ddp_args), nprocs=config.num_gpus,
                                         join=False, start_method="spawn")
            join_forwarding_signals(context, forwarded_signals(loop, train_args["callbacks"]))
        finally:
            del store  # closes the rendezvous server
        loop.load_checkpoint(ddp_args["result_path"])
        stop = read_stop(run_dir)
    loop.num_epochs, loop.num_iterations = train_args["num_epochs"], train_args["num_iterations"]
    loop.grad_accumulation = train_args["grad_accumulation"]
    if stop is not None:
        raise stop  # the ranks stopped on a signal, with their checkpoint: this process ends as they did
    return loop.model


# ---------------------------------------------------------------------- stop signals (see preemption.py)
STOP_FILE = "stopped.pt"


def forwarded_signals(loop, callbacks: list) -> tuple:
    """The signals the parent passes on to its ranks: SIGINT, SIGTERM and those of a StopOnSignal."""
    from aitoolbox.torchtrain.callbacks.stop_signal import StopOnSignal, with_default_stop

    signals = {signal.SIGINT, signal.SIGTERM}
    for cb in with_default_stop(callbacks, loop.callbacks_handler):
        if isinstance(cb, StopOnSignal):
            signals.update(cb.signals)
    return tuple(sorted(signals))


def join_forwarding_signals(context, signals: tuple) -> None:
    """Wait for the spawned ranks; a signal to this process (the parent alone) is sent on to them.

    Each rank then stops at a batch boundary as if it had received the signal itself (its
    StopOnSignal treats the same signal arriving twice within a second, e.g. a terminal Ctrl-C that
    reached the parent and the ranks, as one). Outside the main thread no handler can be set.
    """
    # After a rank failed, its peers get this long to end by themselves (they see the failure in
    # their next collective) before they are sent SIGTERM, then as long again before SIGKILL: a
    # rank that handles SIGTERM (StopOnSignal) would otherwise hold the run up for 30 s.
    grace = PEER_FAILURE_DELAY_S + 1.0
    if threading.current_thread() is not threading.main_thread():
        while not context.join(grace_period=grace):
            pass
        return

    def forward(signum, frame):
        for process in context.processes:
            if process.is_alive() and process.pid is not None:
                try:
                    os.kill(process.pid, signum)
                except ProcessLookupError:
                    pass

    previous = {signum: signal.signal(signum, forward) for signum in signals}
    try:
        while not context.join(timeout=0.2, grace_period=grace):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def write_stop(run_dir: str, stop: TrainingStopped) -> None:
    """Hand a rank's stop (signal, checkpoint, uploads not done) to the parent."""
    atomic_torch_save({"signum": stop.signum, "code": stop.code, "upload_timeout": stop.upload_timeout,
                       "checkpoint": stop.checkpoint, "not_uploaded": list(stop.not_uploaded),
                       "position": stop.position}, os.path.join(run_dir, STOP_FILE))


def read_stop(run_dir: str) -> Optional[TrainingStopped]:
    """The stop written by :func:`write_stop`, or None when the ranks trained to the end."""
    path = os.path.join(run_dir, STOP_FILE)
    if not os.path.exists(path):
        return None
    info = torch.load(path, weights_only=False)  # our own file in a private temporary directory
    stop = TrainingStopped(info["signum"], info["code"], info["upload_timeout"])
    stop.checkpoint, stop.not_uploaded, stop.position = info["checkpoint"], info["not_uploaded"], info["position"]
    return stop


def host_rendezvous_store(config: DDPConfig, env: Dict[str, str]) -> Optional["dist.TCPStore"]:
    """The ranks' rendezvous store, hosted by the parent on a one-node ``env://`` run (else None).

    It is up before any rank starts. Without it rank 0 hosts the store when it reaches
    ``init_process_group``, and a rank that gets there first (even by a few milliseconds) is
    refused and retries after a back-off of 0.1-0.6 s, which every rank then waits for. It also
    holds its port from the start: with no ``MASTER_PORT`` in the environment it binds a free one
    and ``env["MASTER_PORT"]`` is set to it. Multi-node runs and ``tcp://`` / ``file://`` init
    methods rendezvous as before.
    """
    if config.num_nodes != 1 or config.init_method != "env://":
        return None
    port = int(env["MASTER_PORT"]) if "MASTER_PORT" in os.environ else 0
    store = dist.TCPStore(env["MASTER_ADDR"], port, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=config.timeout))
    env["MASTER_PORT"] = str(store.port)
    return store


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
            f"gpu_mode='{loop.gpu_mode}' hands the TrainLoop (model, loaders, optimizer, callbacks) to the "
            f"processes it starts with pickle, which failed: {exc}. Define models, data sets, collate / worker_init "
            "functions and callbacks at module level (no lambdas or local classes), or start the script "
            "with torchrun, which needs no pickling.") from exc
    finally:
        loop.feed, loop._eval_loaders = saved


def rank_main(local_rank: int, payload_path: str, ddp_args: dict) -> None:
    """Entry point of a spawned rank: join the process group, load the TrainLoop, train, hand back."""
    get_logger()  # the parent's logging set-up does not reach this process
    _platform_start_method()
    _freeze_imported_modules()
    config: DDPConfig = ddp_args["config"]
    os.environ.update(ddp_args["env"])
    _limit_cpu_threads(config)
    try:
        rank_device(config, local_rank)
        store = None
        if ddp_args.get("parent_store"):  # see host_rendezvous_store
            store = dist.TCPStore(ddp_args["env"]["MASTER_ADDR"], int(ddp_args["env"]["MASTER_PORT"]),
                                  is_master=False, timeout=datetime.timedelta(seconds=config.timeout))
        join_process_group(config, config.global_rank(local_rank), config.world_size, store)
        del store  # the process group holds it
        # Our own file in a private temporary directory: full unpickling is safe and needed.
        payload = torch.load(payload_path, map_location="cpu", weights_only=False)
        torch.manual_seed(payload["initial_seed"])  # also seeds this rank's CUDA generator
        set_rng_state(payload["rng"])
        loop, train_args = payload["loop"], payload["train_args"]
        stop = None
        try:
            loop._spawn_fit(local_rank, ddp_args, train_args["num_epochs"], train_args["num_iterations"],
                            train_args["callbacks"], train_args["grad_accumulation"], payload["in_process_data_load"])
        except TrainingStopped as stopped:  # every rank stopped at the same batch; the checkpoint is written
            stop = stopped
        rank_rng = gather_rank_rng(loop)  # every rank: the parent's next fit gives each its own streams back
        state = loop.state_dict()  # on every rank: under FSDP it gathers the shards (collectives)
        if local_rank == 0:
            state["rank_rng_states"] = rank_rng
            atomic_torch_save(state, ddp_args["result_path"])
            if stop is not None:
                write_stop(os.path.dirname(ddp_args["result_path"]), stop)
        del state
        loop.strategy.barrier()
        loop.strategy.shutdown(loop)
    except Exception as exc:
        if is_peer_failure(exc):
            time.sleep(PEER_FAILURE_DELAY_S)
        raise


def rank_device(config: DDPConfig, local_rank: int) -> torch.device:
    """The device of local rank ``local_rank`` (made the current CUDA device on a GPU run)."""
    if not config.on_gpu:
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise RuntimeError(f"local rank {local_rank} has no GPU: only {torch.cuda.device_count()} visible.")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def join_process_group(config: DDPConfig, rank: int, world_size: int, store=None) -> bool:
    """Initialise the default process group as rank ``rank``; False when it already is (checked).

    ``store``: a rendezvous store to use instead of ``config.init_method``.

    Raises:
        RuntimeError: the initialised group has another rank or world size.
    """
    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
            raise RuntimeError(f"The initialised process group is rank {dist.get_rank()} of "
                               f"{dist.get_world_size()}, but the launcher says {rank} of {world_size}.")
        return False
    if store is None:
        store = elastic_restart_store(config, rank, world_size)
    rendezvous = {"init_method": config.init_method} if store is None else {"store": store}
    dist.init_process_group(config.backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=config.timeout), **rendezvous)
    return True


def elastic_restart_store(config: DDPConfig, rank: int, world_size: int) -> Optional["dist.Store"]:
    """Under torchrun (``TORCHELASTIC_RESTART_COUNT`` set), the rendezvous store of this attempt.

    torchrun keeps one store for all the attempts of a job (``TORCHELASTIC_USE_AGENT_STORE``): the
    process group of a restarted attempt reads the addresses the previous attempt's ranks left
    in it and fails to connect ("Gloo connectFullMesh failed ... Connection refused"). A prefix
    per attempt keeps each attempt's keys apart. None outside torchrun or for another init method.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or config.init_method != "env://" or "MASTER_PORT" not in os.environ:
        return None
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    base = dist.TCPStore(os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ["MASTER_PORT"]), world_size,
                         is_master=not agent_hosts and rank == 0, timeout=datetime.timedelta(seconds=config.timeout))
    return dist.PrefixStore(f"aitoolbox/attempt_{attempt}", base)


def _platform_start_method() -> None:
    """This rank starts its own processes (DataLoader workers) the platform's default way.

    ``multiprocessing`` makes a process started by spawn start its children by spawn too: each
    worker of a non-persistent DataLoader would import torch afresh, every epoch (seconds each). A
    rank started by torchrun uses the platform's default (fork on Linux up to Python 3.13), and so
    does a rank started here. A loader's own ``multiprocessing_context`` still decides for it.
    """
    import multiprocessing

    multiprocessing.set_start_method(None, force=True)


def _freeze_imported_modules() -> None:
    """Move the objects of the imported modules out of the cyclic garbage collector's reach.

    A spawned rank lives for one run, and its modules as long as it does. Frozen (``gc.freeze``),
    they are skipped by the full garbage collections of the run (the one in
    :meth:`~.DDPStrategy.shutdown` included) and of interpreter shut-down, which otherwise
    traverse the ~285,000 objects of torch's modules (0.1-0.2 s each; the rank's exit took ~1 s).
    ``DistributedDataParallel`` imports ``torch._dynamo`` in any case: it is imported here, to be
    frozen too. Everything of the run is created after the freeze and stays collectable: the
    process group above all, which must be released while the interpreter is alive (its gloo
    threads otherwise abort the process at exit: "terminate called without an active exception").
    Only processes this module starts do this: a rank started by torchrun is the user's process.
    """
    try:
        import torch._dynamo  # noqa: F401
    except Exception:  # pylint: disable=broad-except  # a build without it (DDP then does without it too)
        pass
    gc.freeze()


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` only reports that another rank went away (not a root cause)."""
    text = str(exc)
    return isinstance(exc, getattr(dist, "DistNetworkError", ())) or any(
        marker in text for marker in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


def _limit_cpu_threads(config: DDPConfig) -> None:
    """Share the CPU cores between the ranks of a CPU run (as torchrun does), unless the user chose."""
    if not config.on_gpu and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.num_gpus))
