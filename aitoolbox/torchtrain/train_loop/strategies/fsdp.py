"""``gpu_mode='fsdp'``: fully sharded data parallel training with FSDP2 (``fully_shard``).

Each rank holds ``1/world_size`` of every parameter, of its gradient and of the optimizer state;
a unit's parameters are gathered for its forward and backward pass only. The run is launched,
rendezvoused and kept in step exactly as under ``gpu_mode='ddp'`` (this strategy is the DDP
strategy with another model wrapping, see :mod:`~aitoolbox.torchtrain.train_loop.strategies.ddp`): processes spawned by ``fit`` on one node
or many, or the current process as one rank under ``torchrun`` / a cluster launcher.

What differs from DDP:

* the model is sharded in place (``fully_shard`` on each unit of ``fsdp_args['wrap']``, then the
  root) over an explicit 1-D device mesh of the run's device type, and the optimizers are pointed
  at the sharded parameters (their state, e.g. after a resume, is sharded the same way);
* gradient accumulation turns the gradient reduce-scatter off on micro-batches
  (``set_requires_gradient_sync``);
* every forward pass is a collective, so evaluations pad the shorter shards with batches whose
  results are discarded (every rank runs as many batches; results stay exact) and an evaluation
  requested by a callback pinned to one rank is an error instead of a hang;
* checkpoints gather the shards: ``TrainLoop.state_dict()`` holds full tensors (a collective:
  every rank calls it), and :meth:`FSDPStrategy.save_sharded` writes a sharded checkpoint folder
  with ``torch.distributed.checkpoint``;
* ``use_amp`` becomes FSDP's ``MixedPrecisionPolicy``: parameters gathered in the AMP handler's
  dtype, gradients reduced in float32.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from typing import Any, ContextManager, Dict, Optional, Tuple

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from aitoolbox.torchtrain.model import ModelFeed
from aitoolbox.torchtrain.train_loop.components import checkpoint_files
from aitoolbox.torchtrain.train_loop.strategies import data
from aitoolbox.torchtrain.train_loop.strategies.base import DeviceStrategy
from aitoolbox.torchtrain.multi_loss_optim import MultiOptimizer
from aitoolbox.torchtrain.train_loop.strategies.config import (
    FSDP_FIT_KWARGS, DDPConfig, FSDPOptions, build_config, check_data_load_callbacks, check_fsdp_args, fsdp_units)
from aitoolbox.torchtrain.train_loop.strategies.ddp import DDPStrategy, RankFeed
from aitoolbox.torchtrain.train_loop.strategies.dp import _compile_kwargs

logger = logging.getLogger("aitoolbox")

#: file of a sharded checkpoint folder with the loop's own state (position, history, RNG, ...)
LOOP_STATE_FILE = "loop_state.pt"


class FSDPStrategy(DDPStrategy):
    """``gpu_mode='fsdp'``: ``torch.distributed.fsdp.fully_shard`` (FSDP2).

    ``fit`` keyword arguments: DDP's launch arguments (``in_process_data_load``, ``num_nodes``,
    ``node_rank``, ``num_gpus``, ``backend``, ``init_method``, ``on_gpu``, ``timeout``) and
    ``fsdp_args``, a dict with the keys of :class:`~.config.FSDPOptions` (``wrap``,
    ``reshard_after_forward``, ``cpu_offload``, ``activation_checkpointing``).

    Attributes:
        fsdp_model: the sharded root module in a rank (the user's module itself, sharded in
            place), None elsewhere.
        options: the run's :class:`~.config.FSDPOptions`.
    """

    fit_kwargs = FSDP_FIT_KWARGS

    def __init__(self, cuda_device_idx: Optional[int] = None):
        super().__init__(cuda_device_idx)
        self.options = FSDPOptions()
        self.fsdp_model: Optional[nn.Module] = None
        self.mesh = None
        self._loop = None
        self._eval_padding = 0
        self._sync_off = _GradientSyncOff(self)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.update(fsdp_model=None, mesh=None, _loop=None)
        return state

    # ------------------------------------------------------------------ launching
    def check_fit_kwargs(self, kwargs: dict) -> dict:
        """Validate the FSDP ``fit`` arguments (``fsdp_args`` against the model) before any work.

        Raises:
            TypeError, ValueError: an invalid argument, named in the message with the fix.
        """
        misplaced = sorted({"ddp_model_args", "dp_model_args"} & set(kwargs))
        if misplaced:
            raise TypeError(f"fit() got {misplaced} for gpu_mode='fsdp', which wraps the model with FSDP, not "
                            "(Distributed)DataParallel: drop them, and pass FSDP settings as fsdp_args={...} "
                            "(wrap, reshard_after_forward, cpu_offload, activation_checkpointing).")
        args = DeviceStrategy.check_fit_kwargs(self, kwargs)
        fsdp_args = args.pop("fsdp_args")
        config = build_config({**args, "ddp_model_args": None}, "fsdp")
        self.options = check_fsdp_args(fsdp_args, self.wrapped_module, config.on_gpu)
        return {"config": config, "in_process_data_load": check_data_load_callbacks(args["in_process_data_load"])}

    def setup_process(self, loop, config: DDPConfig, rank: int, world_size: int, local_rank: int) -> None:
        """Make this process rank ``rank`` (see :meth:`.DDPStrategy.setup_process`); keeps the loop."""
        self._loop = loop
        super().setup_process(loop, config, rank, world_size, local_rank)

    def _wrap_model(self, loop, config: DDPConfig) -> RankFeed:
        """Shard the model in place, unit by unit, and point the optimizers at the shards.

        A model sharded by an earlier ``fit`` in this process (under torchrun) stays as it is.
        """
        module = loop.module
        if not isinstance(module, FSDPModule):
            names = {id(param): name for name, param in module.named_parameters()}
            self._shard(module, loop.amp_handler)
            sharded = dict(module.named_parameters())
            for optimizer in loop.optimizers:
                _point_optimizer_at(optimizer, names, sharded)
            _shard_grad_scaler(loop.amp_handler)
        self.fsdp_model = self.wrapped_module = module
        self.feed = FSDPRankFeed(ModelFeed(module, loop.feed_def), self)
        return self.feed

    def _shard(self, module: nn.Module, amp_handler) -> None:
        """``fully_shard`` each unit, then the root, over a 1-D mesh of this rank's device type."""
        self.mesh = init_device_mesh(self.device.type, (self.world_size,))
        shard_args = dict(mesh=self.mesh, reshard_after_forward=self.options.reshard_after_forward,
                          mp_policy=mixed_precision_policy(amp_handler),
                          offload_policy=CPUOffloadPolicy() if self.options.cpu_offload else OffloadPolicy())
        units = fsdp_units(module, self.options.wrap)
        if self.options.activation_checkpointing:
            from torch.distributed._composable import checkpoint  # keeps the parameter names

            for unit in units or [module]:
                checkpoint(unit)
        for unit in units + [module]:
            fully_shard(unit, **shard_args)

    def shutdown(self, loop) -> None:
        """Destroy the process group if this strategy created it (see :meth:`.DDPStrategy.shutdown`)."""
        super().shutdown(loop)
        if self._comm is None:  # the group is gone: nothing is sharded over it any more
            self.fsdp_model = self.mesh = None

    # ------------------------------------------------------------------ strategy interface
    def compile_model(self, feed_def, compile_args) -> ModelFeed:
        """In a rank: ``torch.compile`` the sharded model (in place for a TTModel)."""
        if not self.active:
            return super().compile_model(feed_def, compile_args)
        if not getattr(self.fsdp_model, "_aitoolbox_compiled", False):
            kwargs = _compile_kwargs(compile_args)
            if feed_def is None:
                self.fsdp_model.compile(**kwargs)
                plain = ModelFeed(self.fsdp_model, feed_def)
            else:
                plain = ModelFeed(torch.compile(self.fsdp_model, **kwargs), feed_def)
            self.fsdp_model._aitoolbox_compiled = True
            self.feed = FSDPRankFeed(plain, self)
        return self.feed

    def no_sync(self) -> ContextManager:
        """No gradient reduce-scatter on accumulation micro-batches (``set_requires_gradient_sync``)."""
        return self._sync_off if self.fsdp_model is not None else contextlib.nullcontext()

    def prepare_eval_loader(self, loader):
        """This rank's exact share of ``loader``, and how many padding batches it needs."""
        if not self.active:
            return super().prepare_eval_loader(loader)
        planned = None

        def report(plan: data.EvalPlan) -> None:
            self._set_eval_plan(plan)
            self._eval_padding = data.padding_batches(planned.loader, plan, self.rank, self.world_size)

        planned = data.exact_eval_loader(loader, self.rank, self.world_size, self._is_solo, report)
        return planned

    def reduce_eval(self, loss_sum: Any, num_samples: int) -> Tuple[Any, int]:
        """Run this rank's padding batches (results discarded), then sum over the ranks."""
        self._run_padding("loss")
        return super().reduce_eval(loss_sum, num_samples)

    def gather_predictions(self, y_pred, y_true, metadata, dataset_len: Optional[int]):
        """Run this rank's padding batches (results discarded), then merge into data-set order."""
        self._run_padding("predictions")
        return super().gather_predictions(y_pred, y_true, metadata, dataset_len)

    def _run_padding(self, kind: str) -> None:
        """The forward passes this rank's shorter share lacks: each rank then ran as many batches,
        so every all-gather of the sharded parameters had all ranks in it."""
        padding, self._eval_padding = self._eval_padding, 0
        if not padding or not self._sharded_eval():
            return
        loop, batch = self._loop, self.feed.last_eval_batch
        was_training = loop.module.training
        loop.module.eval()
        try:
            with torch.no_grad(), loop.amp_handler.autocast():
                for _ in range(padding):
                    if kind == "loss":
                        self.feed.wrapped.get_loss_eval(batch, loop.criterion, loop.device)
                    else:
                        self.feed.wrapped.get_predictions(batch, loop.device)
        finally:
            loop.module.train(was_training)

    # ------------------------------------------------------------------ state
    @property
    def shards_checkpoints(self) -> bool:
        """In a rank, checkpoints are sharded folders written by every rank (:meth:`save_sharded`)."""
        return self.fsdp_model is not None

    def training_state(self, loop) -> Tuple[dict, Any, Optional[list]]:
        """Full tensors gathered from the shards (a collective: every rank must call it)."""
        if self.fsdp_model is None:
            return super().training_state(loop)
        model_state = {name: _full(value) for name, value in self.fsdp_model.state_dict().items()}
        optimizer_states = [_full_optimizer_state(opt.state_dict()) for opt in loop.optimizers]
        optimizer_state = optimizer_states if isinstance(loop.optimizer, MultiOptimizer) \
            else optimizer_states[0] if optimizer_states else None
        grads = [None if p.grad is None else _full(p.grad) for p in self.fsdp_model.parameters()]
        return model_state, optimizer_state, grads if any(g is not None for g in grads) else None

    def restore_grads(self, module: nn.Module, grads: list) -> None:
        """Shard the full gradients of an unfinished accumulation window like their parameters."""
        if self.fsdp_model is None:
            return super().restore_grads(module, grads)
        for param, grad in zip(module.parameters(), grads):
            param.grad = None if grad is None else _like(grad, param)

    def save_sharded(self, loop, path: str, state: dict) -> str:
        """Write a sharded checkpoint folder at ``path``; every rank calls it.

        Each rank writes its shards of the model and optimizer state through
        ``torch.distributed.checkpoint`` into ``<path>.partial``; rank 0 adds the loop's own state
        (``loop_state.pt``: ``state`` without the weights and optimizer state) and renames the
        folder into place once every rank has finished, so that a crash mid-write leaves the
        previous checkpoints and no half-written one under ``path``.

        Args:
            loop: the TrainLoop.
            path: the checkpoint folder to create (replaced if it exists).
            state: the loop's state (``TrainLoop.state_dict()`` or a crash state) on rank 0.
        """
        import torch.distributed.checkpoint as dcp

        partial = f"{path}.partial"
        if self.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            os.makedirs(partial)
        self._comm.barrier()
        shards = {"model": self.fsdp_model.state_dict(), "optim": [opt.state_dict() for opt in loop.optimizers],
                  "grads": {name: p.grad for name, p in self.fsdp_model.named_parameters() if p.grad is not None}}
        dcp.save(shards, checkpoint_id=partial)
        if self.rank == 0:
            rest = {k: v for k, v in state.items() if k not in ("model_state_dict", "optimizer_state_dict")}
            rest["sharded"] = {"multi_optimizer": isinstance(loop.optimizer, MultiOptimizer),
                               "parameters": [name for name, _ in self.fsdp_model.named_parameters()]}
            torch.save(rest, os.path.join(partial, LOOP_STATE_FILE))
            _replace_dir(partial, path)
        self._comm.barrier()
        return path


class FSDPRankFeed(RankFeed):
    """The loop's model feed in an FSDP rank: the sharded model, which does its own collectives.

    It remembers the last evaluation batch (the padding batches repeat it) and refuses an
    evaluation inside :meth:`.DDPStrategy.solo`: the other ranks would not join its all-gathers.
    """

    def __init__(self, feed: ModelFeed, strategy: FSDPStrategy):
        super().__init__(feed, feed, strategy)
        self.last_eval_batch = None

    def get_loss_eval(self, batch_data, criterion, device):
        self._check_not_solo()
        self.last_eval_batch = batch_data
        return self.wrapped.get_loss_eval(batch_data, criterion, device)

    def get_predictions(self, batch_data, device):
        self._check_not_solo()
        self.last_eval_batch = batch_data
        return self.wrapped.get_predictions(batch_data, device)

    def _check_not_solo(self) -> None:
        if self._strategy.in_solo:
            raise RuntimeError(
                "gpu_mode='fsdp': a callback pinned to one rank (device_idx_execution) asked for an evaluation, "
                "but under FSDP every forward pass gathers the sharded parameters from all ranks, so one rank "
                "cannot evaluate alone (it would wait forever). Give the callback device_idx_execution=None "
                "(it runs on every rank; write files only where train_loop_obj.is_main_process()).")


class _GradientSyncOff:
    """Reusable context: the root's gradient reduce-scatter off inside, on again after."""

    def __init__(self, strategy: FSDPStrategy):
        self._strategy = strategy

    def __enter__(self):
        self._strategy.fsdp_model.set_requires_gradient_sync(False)

    def __exit__(self, *exc) -> None:
        self._strategy.fsdp_model.set_requires_gradient_sync(True)


def mixed_precision_policy(amp_handler) -> MixedPrecisionPolicy:
    """FSDP's policy for the loop's ``use_amp``: parameters gathered in the AMP dtype, float32 reductions.

    Without AMP parameters and reductions stay in the parameters' dtype. A float16 run on CUDA
    keeps its GradScaler (the AMP handler's).
    """
    if not amp_handler.enabled:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=amp_handler.dtype, reduce_dtype=torch.float32)


def _shard_grad_scaler(amp_handler) -> None:
    """Float16 on CUDA: the AMP handler's GradScaler becomes torch's ``ShardedGradScaler``.

    Each rank sees only its shards of the gradients; the sharded scaler all-reduces the
    inf / NaN flag, so that every rank skips (or takes) the same optimizer steps.
    """
    scaler = amp_handler.scaler
    if scaler is None:
        return
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    sharded = ShardedGradScaler(amp_handler.device_type, init_scale=scaler._init_scale,
                                growth_factor=scaler._growth_factor, backoff_factor=scaler._backoff_factor,
                                growth_interval=scaler._growth_interval, enabled=scaler.is_enabled())
    sharded.load_state_dict(scaler.state_dict())
    amp_handler.scaler = amp_handler.grad_scaler = sharded


def _point_optimizer_at(optimizer, names: Dict[int, str], sharded: Dict[str, nn.Parameter]) -> None:
    """Replace the plain parameters in ``optimizer`` with their sharded ones; shard their state too."""
    for group in getattr(optimizer, "param_groups", ()):
        new_params = []
        for param in group["params"]:
            name = names.get(id(param))
            if name is None or name not in sharded:
                raise ValueError(f"gpu_mode='fsdp': the optimizer holds a parameter that is not the model's "
                                 f"({tuple(param.shape)}); build the optimizer on model.parameters().")
            new = sharded[name]
            state = optimizer.state.pop(param, None)
            if state:
                optimizer.state[new] = {k: _like(v, new) if _per_element(v, param) else v
                                        for k, v in state.items()}
            new_params.append(new)
        group["params"] = new_params


def _per_element(value, param) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape == param.shape


def _like(full: torch.Tensor, param: DTensor) -> DTensor:
    """``full`` sharded over the ranks as ``param`` is."""
    local = param.to_local()
    return distribute_tensor(full.to(local.device, full.dtype), param.device_mesh, param.placements)


def _full(value):
    """A full, detached CPU copy of a (possibly sharded) tensor; other values as they are."""
    if isinstance(value, DTensor):
        return value.full_tensor().detach().cpu()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return value


def _full_optimizer_state(state: dict) -> dict:
    return {"state": {idx: {k: _full(v) for k, v in per_param.items()} for idx, per_param in state["state"].items()},
            "param_groups": state["param_groups"]}


def _replace_dir(src: str, dst: str) -> None:
    """Move the finished folder ``src`` to ``dst``; an existing ``dst`` is replaced."""
    if os.path.exists(dst):
        old = f"{dst}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
    _fsync_dir(os.path.dirname(os.path.abspath(dst)))


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_sharded_checkpoint(path: str) -> dict:
    """A sharded checkpoint folder as one ``TrainLoop.state_dict()`` with full tensors.

    Needs no process group (the shards are read and joined in this process), so a checkpoint
    written by any number of ranks loads into any other (e.g. 2 ranks -> 3), or into a plain model.

    Raises:
        FileNotFoundError: ``path`` is no sharded checkpoint folder.
    """
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    loop_file = os.path.join(path, LOOP_STATE_FILE)
    if not os.path.isfile(loop_file):
        raise FileNotFoundError(f"{path!r} is no sharded checkpoint folder (it has no {LOOP_STATE_FILE}).")
    state = checkpoint_files.safe_torch_load(loop_file, map_location="cpu")
    with tempfile.TemporaryDirectory(prefix="aitoolbox-dcp-") as tmp:
        full_path = os.path.join(tmp, "full.pt")
        dcp_to_torch_save(path, full_path)
        shards = torch.load(full_path, map_location="cpu", weights_only=True)
    optimizers = [_int_keys(opt) for opt in shards["optim"]]
    info = state.pop("sharded")
    state["model_state_dict"] = shards["model"]
    grads = shards.get("grads") or {}
    state["pending_grads"] = [grads.get(name) for name in info["parameters"]] if grads else None
    state["optimizer_state_dict"] = optimizers if info["multi_optimizer"] else optimizers[0]
    return state


def _int_keys(optimizer_state: dict) -> dict:
    """Optimizer state keys back to ints (a checkpoint's storage may have made them strings)."""
    return {"state": {int(k): v for k, v in optimizer_state["state"].items()},
            "param_groups": optimizer_state["param_groups"]}


def is_sharded_checkpoint(path: str) -> bool:
    """Whether ``path`` is a sharded checkpoint folder written by :meth:`FSDPStrategy.save_sharded`."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, LOOP_STATE_FILE))

