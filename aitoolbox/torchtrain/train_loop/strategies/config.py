"""The arguments of ``fit(...)`` under ``gpu_mode='ddp'`` and ``'fsdp'``, checked before any work starts."""
from __future__ import annotations

import dataclasses
import inspect
import os
from typing import FrozenSet, List, Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

#: ``fit`` keyword arguments of ``gpu_mode='ddp'`` and their defaults. ``num_gpus=None`` means the
#: number of visible CUDA devices.
DDP_FIT_KWARGS = {"ddp_model_args": None, "in_process_data_load": None, "num_nodes": 1, "node_rank": 0,
                  "num_gpus": None, "backend": "nccl", "init_method": "env://", "on_gpu": True,
                  "timeout": 1800.0}

#: ``fit`` keyword arguments of ``gpu_mode='fsdp'``: DDP's launch arguments, ``fsdp_args`` for
#: ``ddp_model_args``.
FSDP_FIT_KWARGS = {**{k: v for k, v in DDP_FIT_KWARGS.items() if k != "ddp_model_args"}, "fsdp_args": None}

_DDP_ARGS = set(inspect.signature(DistributedDataParallel.__init__).parameters) - {"self", "module"}
_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclasses.dataclass(frozen=True)
class DDPConfig:
    """A validated DDP run configuration.

    Attributes:
        num_nodes: number of nodes (machines).
        node_rank: index of this node.
        num_gpus: processes per node (one per local GPU; on the CPU simply the count).
        backend: ``torch.distributed`` backend (``nccl``, ``gloo``, ...).
        init_method: ``env://``, ``tcp://host:port`` or ``file://path``.
        on_gpu: each process trains on its local GPU (else on the CPU).
        timeout: seconds a collective may wait before the process group raises.
        ddp_model_args: extra ``DistributedDataParallel`` arguments.
    """

    num_nodes: int
    node_rank: int
    num_gpus: int
    backend: str
    init_method: str
    on_gpu: bool
    timeout: float
    ddp_model_args: dict

    @property
    def world_size(self) -> int:
        """Total number of processes."""
        return self.num_nodes * self.num_gpus

    def global_rank(self, local_rank: int) -> int:
        """``node_rank * num_gpus + local_rank``."""
        return self.node_rank * self.num_gpus + local_rank


def launcher_env() -> Optional[Tuple[int, int, int]]:
    """``(rank, world_size, local_rank)`` when torchrun or a cluster launcher started this process."""
    if not all(name in os.environ for name in _LAUNCHER_VARS):
        return None
    return tuple(int(os.environ[name]) for name in _LAUNCHER_VARS)  # type: ignore[return-value]


def build_config(args: dict, gpu_mode: str = "ddp") -> DDPConfig:
    """Check ``fit``'s DDP (or FSDP) launch arguments and resolve their defaults.

    Args:
        args: the ``fit`` keyword arguments, defaults filled in.
        gpu_mode: the mode named in the error messages.

    Raises:
        ValueError, TypeError: an invalid argument, named in the message with the fix.
    """
    launched = launcher_env() is not None
    on_gpu, backend = bool(args["on_gpu"]), args["backend"]
    _check_device(on_gpu, backend, gpu_mode)
    num_nodes, node_rank = args["num_nodes"], args["node_rank"]
    num_gpus = 1 if launched else _resolve_num_gpus(args["num_gpus"], on_gpu)
    if not launched:
        _check_topology(num_nodes, node_rank)
        _check_init_method(args["init_method"], num_nodes)
    timeout = args["timeout"]
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
    return DDPConfig(num_nodes=num_nodes, node_rank=node_rank, num_gpus=num_gpus, backend=backend,
                     init_method=args["init_method"], on_gpu=on_gpu, timeout=float(timeout),
                     ddp_model_args=_check_ddp_model_args(args["ddp_model_args"]))


def _check_device(on_gpu: bool, backend: str, gpu_mode: str) -> None:
    if not dist.is_available():
        raise RuntimeError(f"gpu_mode='{gpu_mode}' needs torch.distributed, which this PyTorch build lacks.")
    if on_gpu and not torch.cuda.is_available():
        raise ValueError(f"gpu_mode='{gpu_mode}' with on_gpu=True needs CUDA GPUs, but none is visible. To train "
                         "on the CPU pass on_gpu=False, backend='gloo' and num_gpus=<processes per node>.")
    if not on_gpu and backend == "nccl":
        raise ValueError("backend='nccl' needs GPUs but on_gpu=False: pass backend='gloo' to train on the CPU.")
    if not isinstance(backend, str) or not dist.is_backend_available(backend):
        raise ValueError(f"backend={backend!r} is not available in this PyTorch build; use 'gloo' (CPU) or "
                         "'nccl' (CUDA GPUs).")


def _resolve_num_gpus(num_gpus, on_gpu: bool) -> int:
    if num_gpus is None and on_gpu:
        num_gpus = torch.cuda.device_count()
    if num_gpus is None:
        raise ValueError("num_gpus is required with on_gpu=False: pass the number of processes per node, "
                         "e.g. num_gpus=2.")
    if not isinstance(num_gpus, int) or isinstance(num_gpus, bool) or num_gpus < 1:
        raise ValueError(f"num_gpus must be an int >= 1 (processes per node), got {num_gpus!r}.")
    if on_gpu and num_gpus > torch.cuda.device_count():
        raise ValueError(f"num_gpus={num_gpus} but only {torch.cuda.device_count()} CUDA device(s) are "
                         "visible: pass at most that many (one process per GPU).")
    return num_gpus


def _check_topology(num_nodes, node_rank) -> None:
    if not isinstance(num_nodes, int) or isinstance(num_nodes, bool) or num_nodes < 1:
        raise ValueError(f"num_nodes must be an int >= 1, got {num_nodes!r}.")
    if not isinstance(node_rank, int) or isinstance(node_rank, bool) or not 0 <= node_rank < num_nodes:
        raise ValueError(f"node_rank must be an int in [0, num_nodes={num_nodes}), got {node_rank!r}.")


def _check_init_method(init_method, num_nodes: int) -> None:
    if not isinstance(init_method, str) or not init_method.startswith(("env://", "tcp://", "file://")):
        raise ValueError(f"init_method must be 'env://', 'tcp://<host>:<port>' or 'file://<path>', got "
                         f"{init_method!r}.")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if init_method.startswith("env://") and num_nodes > 1 and missing:
        raise ValueError(f"Multi-node DDP (num_nodes={num_nodes}) with init_method='env://' needs "
                         f"{' and '.join(missing)} set to the address / a free port of node 0 on every "
                         "node, or pass init_method='tcp://<node 0 address>:<port>'.")


def _check_ddp_model_args(ddp_model_args) -> dict:
    if ddp_model_args is None:
        return {}
    if not isinstance(ddp_model_args, dict):
        raise TypeError(f"ddp_model_args must be a dict of DistributedDataParallel arguments, got "
                        f"{type(ddp_model_args).__name__}.")
    unknown = sorted(set(ddp_model_args) - _DDP_ARGS)
    if unknown:
        raise ValueError(f"ddp_model_args has unknown DistributedDataParallel argument(s) {unknown}; valid "
                         f"keys are {sorted(_DDP_ARGS)}.")
    return dict(ddp_model_args)


def check_data_load_callbacks(in_process_data_load) -> List:
    """``in_process_data_load`` as a list of callbacks.

    Raises:
        TypeError: an element is not an ``AbstractCallback``.
    """
    from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback

    if in_process_data_load is None:
        return []
    callbacks = list(in_process_data_load) if isinstance(in_process_data_load, (list, tuple)) \
        else [in_process_data_load]
    for idx, cb in enumerate(callbacks):
        if not isinstance(cb, AbstractCallback):
            raise TypeError(f"in_process_data_load[{idx}] is a {type(cb).__name__}; pass AbstractCallback "
                            "objects whose on_multiprocess_start() loads the data.")
    return callbacks


@dataclasses.dataclass(frozen=True)
class FSDPOptions:
    """Validated ``fit(..., fsdp_args={...})`` of ``gpu_mode='fsdp'``.

    Attributes:
        wrap: which submodules become FSDP units (the root always is one): None (each child of
            the root that holds parameters), a frozenset of module classes (every submodule of
            one of them), or an int (every submodule whose parameters not yet in a unit number
            at least that many, innermost first).
        reshard_after_forward: free the gathered parameters after each unit's forward (less
            memory; gathered again for the backward pass).
        cpu_offload: keep the sharded parameters, gradients and optimizer state in CPU memory
            (GPU runs only).
        activation_checkpointing: recompute each unit's activations in the backward pass
            (non-reentrant) instead of keeping them.
    """

    wrap: Union[None, FrozenSet[type], int] = None
    reshard_after_forward: bool = True
    cpu_offload: bool = False
    activation_checkpointing: bool = False


_FSDP_OPTIONS = tuple(field.name for field in dataclasses.fields(FSDPOptions))


def check_fsdp_args(fsdp_args, module, on_gpu: bool) -> FSDPOptions:
    """``fsdp_args`` as :class:`FSDPOptions`, checked against the model.

    Raises:
        TypeError, ValueError: an unknown key, a value of the wrong type, a wrap policy that
            matches no submodule, CPU offload on a CPU run; the message names the fix.
    """
    if fsdp_args is None:
        return FSDPOptions()
    if not isinstance(fsdp_args, dict):
        raise TypeError(f"fsdp_args must be a dict with keys from {list(_FSDP_OPTIONS)}, got "
                        f"{type(fsdp_args).__name__}.")
    unknown = sorted(set(fsdp_args) - set(_FSDP_OPTIONS))
    if unknown:
        raise ValueError(f"fsdp_args has unknown key(s) {unknown}; valid keys are {list(_FSDP_OPTIONS)}.")
    for flag in ("reshard_after_forward", "cpu_offload", "activation_checkpointing"):
        if flag in fsdp_args and not isinstance(fsdp_args[flag], bool):
            raise TypeError(f"fsdp_args['{flag}'] must be True or False, got {fsdp_args[flag]!r}.")
    options = FSDPOptions(**{**fsdp_args, "wrap": _check_wrap(fsdp_args.get("wrap"))})
    if options.cpu_offload and not on_gpu:
        raise ValueError("fsdp_args['cpu_offload']=True moves sharded parameters off the GPUs, but this run "
                         "trains on the CPU (on_gpu=False), where they already are: drop cpu_offload.")
    if options.wrap is not None and not fsdp_units(module, options.wrap):
        raise ValueError(f"fsdp_args['wrap']={fsdp_args['wrap']!r} matches no submodule of "
                         f"{type(module).__name__}: only the root would be sharded, as one unit. Name classes "
                         "of the model's layers (e.g. {nn.Linear} or your block class), a smaller minimum "
                         "parameter count, or leave 'wrap' out (each child module with parameters).")
    return options


def _check_wrap(wrap) -> Union[None, FrozenSet[type], int]:
    if wrap is None:
        return None
    if isinstance(wrap, int) and not isinstance(wrap, bool):
        if wrap < 1:
            raise ValueError(f"fsdp_args['wrap'] as a minimum parameter count must be >= 1, got {wrap}.")
        return wrap
    classes = [wrap] if isinstance(wrap, type) else list(wrap) if isinstance(wrap, (set, frozenset, list, tuple)) \
        else None
    if not classes or not all(isinstance(cls, type) and issubclass(cls, torch.nn.Module) for cls in classes):
        raise TypeError("fsdp_args['wrap'] must be a set of nn.Module classes (e.g. {nn.TransformerEncoderLayer}), "
                        f"a minimum parameter count (int), or None; got {wrap!r}.")
    return frozenset(classes)


def fsdp_units(module: torch.nn.Module, wrap) -> List[torch.nn.Module]:
    """The submodules that become FSDP units before the root, innermost first (see :class:`FSDPOptions`)."""
    if wrap is None:
        return [child for child in module.children() if any(True for _ in child.parameters())]
    if isinstance(wrap, frozenset):
        return [sub for sub in _post_order(module) if sub is not module and isinstance(sub, tuple(wrap))]
    units, taken = [], set()
    for sub in _post_order(module):
        if sub is module:
            continue
        free = [p for p in sub.parameters() if id(p) not in taken]
        if sum(p.numel() for p in free) >= wrap:
            units.append(sub)
            taken.update(id(p) for p in free)
    return units


def _post_order(module: torch.nn.Module):
    for child in module.children():
        yield from _post_order(child)
    yield module
