"""``gpu_mode='ddp'``: DistributedDataParallel, one process per local device, on one node or many.

How a run is launched:

* started by ``torchrun`` or a cluster launcher (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set):
  this process is one rank and trains in place (``fit`` spawns nothing);
* otherwise ``fit`` spawns ``num_gpus`` processes on this node (see :mod:`.launch`), global
  rank ``node_rank * num_gpus + local_rank``, and loads the trained state back when they finish.

In a rank the strategy wraps the model in DDP, shards the training loaders, evaluates exactly
(every sample once, results in data-set order, on every rank) and keeps the ranks in step.
Callbacks pinned to one rank (``device_idx_execution``) run in :meth:`DDPStrategy.solo`: an
evaluation they ask for reads the whole data set on their rank alone, without collectives, and
is not cached (so that every rank's cache holds the same entries).
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import gc
import logging
import os
from typing import Any, ContextManager, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.model import ModelFeed
from aitoolbox.torchtrain.loss_sum import LossSum
from aitoolbox.torchtrain.multi_loss_optim import MultiLoss
from aitoolbox.torchtrain.parallel import TTDistributedDataParallel
from aitoolbox.torchtrain.train_loop.components import checkpointing, reproducibility
from aitoolbox.torchtrain.train_loop.components.amp_handler import AmpHandler
from aitoolbox.torchtrain.train_loop.components.data_loading import set_loader_generator_states
from aitoolbox.torchtrain.train_loop.components.preemption import TrainingStopped
from aitoolbox.torchtrain.train_loop.components.prediction_store import PredictionStore
from aitoolbox.torchtrain.train_loop.strategies import data, launch as launcher
from aitoolbox.torchtrain.train_loop.strategies.base import DeviceStrategy
from aitoolbox.torchtrain.train_loop.strategies.collectives import RankComm
from aitoolbox.torchtrain.train_loop.strategies.heartbeat import (
    Heartbeat, RankTimeoutError, beat_interval, explain_timeout, is_collective_timeout)
from aitoolbox.torchtrain.train_loop.strategies.config import (
    DDP_FIT_KWARGS, DDPConfig, build_config, check_data_load_callbacks, launcher_env)
from aitoolbox.torchtrain.train_loop.strategies.dp import _compile_kwargs, wrapper_feed

logger = logging.getLogger("aitoolbox")

#: hooks in which a callback may set ``early_stop`` in the middle of an epoch
_BATCH_HOOKS = frozenset({"on_batch_begin", "on_after_gradient_update", "on_after_optimizer_step", "on_batch_end"})


class DDPStrategy(DeviceStrategy):
    """``gpu_mode='ddp'``: ``torch.nn.parallel.DistributedDataParallel``.

    ``fit`` keyword arguments (seed API): ``ddp_model_args`` (extra DDP arguments),
    ``in_process_data_load`` (callbacks whose ``on_multiprocess_start`` loads data in each process),
    ``num_nodes``, ``node_rank``, ``num_gpus`` (processes per node; default: the CUDA device count),
    ``backend``, ``init_method``, ``on_gpu`` (False: train on the CPU, e.g. with ``backend='gloo'``)
    and ``timeout`` (seconds a collective may block before the process group raises).

    Outside a rank (the parent of spawned ranks) it behaves like the single-device strategy on the CPU.

    Attributes:
        ddp_model: the ``DistributedDataParallel`` wrapper in a rank (None elsewhere); e.g. to
            register a communication hook from a callback's ``on_train_begin``.
        local_rank: this process's index on its node.
    """

    fit_kwargs = DDP_FIT_KWARGS
    multi_process = True

    def __init__(self, cuda_device_idx: Optional[int] = None):
        super().__init__(cuda_device_idx)
        env = launcher_env()
        use_cuda = env is not None and torch.cuda.is_available()
        self.device = torch.device("cuda", env[2]) if use_cuda else torch.device("cpu")
        self.rank, self.world_size, self.local_rank = 0, 1, 0
        self.config: Optional[DDPConfig] = None
        self.ddp_model: Optional[DistributedDataParallel] = None
        self.feed: Optional["RankFeed"] = None
        self._comm: Optional[RankComm] = None
        self._solo_depth = 0
        self._eval_plan: Optional[data.EvalPlan] = None
        self._owns_group = False
        self._failed = False
        self._rank_streams_ready = False  # this process's ranks' random streams are set up
        self._pending_loader_rng: Optional[list] = None  # see _set_rank_streams
        self._heartbeat: Optional[Heartbeat] = None

    def __getstate__(self) -> dict:
        # Only the configuration travels to spawned processes; the rest is set up there.
        state = dict(self.__dict__)
        state.update(ddp_model=None, feed=None, _comm=None, wrapped_module=None, _owns_group=False,
                     _failed=False, _rank_streams_ready=False, _pending_loader_rng=None,
                     _heartbeat=None)
        return state

    @property
    def active(self) -> bool:
        """Whether this process is a rank of a running DDP job."""
        return self._comm is not None

    @property
    def in_solo(self) -> bool:
        """Whether this rank is inside :meth:`solo`."""
        return self._solo_depth > 0

    # ------------------------------------------------------------------ launching
    def check_fit_kwargs(self, kwargs: dict) -> dict:
        """Validate the DDP ``fit`` arguments before any work.

        Raises:
            TypeError, ValueError: an invalid argument, named in the message with the fix.
        """
        args = super().check_fit_kwargs(kwargs)
        return {"config": build_config(args),
                "in_process_data_load": check_data_load_callbacks(args["in_process_data_load"])}

    def launch(self, loop, train_args: dict, strategy_args: dict):
        """Train in this process when it is a launcher-started rank, else spawn the ranks."""
        config, data_load = strategy_args["config"], strategy_args["in_process_data_load"]
        env = launcher_env()
        if env is None:
            return launcher.spawn_fit(loop, train_args, config, data_load)
        rank, world_size, local_rank = env
        self.setup_process(loop, config, rank, world_size, local_rank)
        return self.run(loop, train_args, data_load)

    def spawn_fit(self, loop, local_rank: int, ddp_args: dict, train_args: dict, data_load: list):
        """Train in a process spawned by :func:`~.launch.spawn_fit` (``TrainLoop._spawn_fit``)."""
        config: DDPConfig = ddp_args["config"]
        os.environ.update(ddp_args["env"])
        reproducibility.set_deterministic(getattr(loop, "_deterministic", False))  # process-global: set in each rank
        self.setup_process(loop, config, config.global_rank(local_rank), config.world_size, local_rank)
        self._owns_group = True  # the process is this run's: rank_main joined the group before loading the loop
        return self.run(loop, train_args, data_load)

    def run(self, loop, train_args: dict, data_load: list):
        """Run the ``in_process_data_load`` callbacks, then train; returns the trained model."""
        try:
            for cb in data_load:
                cb.register_train_loop_object(loop)
                cb.on_multiprocess_start()
            loop._train(**train_args)
        except BaseException as exc:
            # A stop signal ends every rank together at a batch boundary: not a failure.
            self._failed = not isinstance(exc, TrainingStopped)
            if self._heartbeat is not None and is_collective_timeout(exc):
                raise RankTimeoutError(explain_timeout(self._heartbeat, self.config.timeout, loop.gpu_mode)) from exc
            raise
        return loop.model

    def setup_process(self, loop, config: DDPConfig, rank: int, world_size: int, local_rank: int) -> None:
        """Make this process rank ``rank``: process group, device, DDP model, rank-aware caches."""
        self.config, self.rank, self.world_size, self.local_rank = config, rank, world_size, local_rank
        self.device = launcher.rank_device(config, local_rank)
        self._init_process_group(loop, config, rank, world_size)
        self._start_heartbeat(loop, config, rank, world_size)
        comm_device = self.device if config.backend == "nccl" else torch.device("cpu")
        flag_group = dist.new_group(backend="gloo") if config.backend != "gloo" else None
        self._comm = RankComm(rank, world_size, comm_device, flag_group)
        _place_loop(loop, self.device)
        self._set_rank_streams(loop, rank, world_size)
        loop.feed = self._wrap_model(loop, config)
        loop.prediction_store = RankConsistentStore(self)
        loop._eval_loaders = {}  # loaders prepared before this process became a rank

    def _set_rank_streams(self, loop, rank: int, world_size: int) -> None:
        """Each rank draws from its own random streams (see ``reproducibility.seed_rank_streams``).

        A checkpoint with every rank's states (``rank_rng_states``) gives each rank its own back
        (the train loader's generators once the rank's copy of the loader exists, in
        :meth:`setup_run`), so a resumed run continues exactly. Otherwise the streams
        are seeded from ``fit``'s ``seed`` and the rank, or, without one, on a process's first run
        from ``torch.initial_seed()`` and the rank (later fits in the same process continue them).
        """
        states, loop._rank_rng_states = getattr(loop, "_rank_rng_states", None), None
        self._pending_loader_rng = checkpointing.restore_rank_rng(loop, states, rank, world_size)
        if self._pending_loader_rng is not None:
            self._rank_streams_ready = True
            return
        if loop.total_iteration_idx > 0 and world_size > 1 and not self._rank_streams_ready and rank == 0:
            logger.warning("The loaded state holds no per-rank random states for %d ranks: ranks 1.. start new "
                           "streams, so the continued run is not exactly the uninterrupted one.", world_size)
        run_seed = getattr(loop, "_run_seed", None)
        if run_seed is not None or not self._rank_streams_ready:
            reproducibility.seed_rank_streams(rank, run_seed)
            self._rank_streams_ready = True

    def _start_heartbeat(self, loop, config: DDPConfig, rank: int, world_size: int) -> None:
        """Beat in the process group's store, so that a collective timeout names a frozen rank (heartbeat.py)."""
        if self._heartbeat is not None:
            return  # a later fit in the same rank
        try:
            store = dist.distributed_c10d._get_default_store()  # pylint: disable=protected-access
        except (AttributeError, RuntimeError, ValueError):
            return  # a torch without it, or a group without a store: timeouts are then reported as they come
        self._heartbeat = Heartbeat(store, rank, world_size, beat_interval(config.timeout),
                                    lambda: (loop.epoch, loop.total_iteration_idx)).start()

    def _init_process_group(self, loop, config: DDPConfig, rank: int, world_size: int) -> None:
        if not launcher.join_process_group(config, rank, world_size):
            return  # set up by the user's script, an earlier fit or rank_main
        self._owns_group = True
        if launcher_env() is not None:
            atexit.register(self.shutdown, loop)

    def _wrap_model(self, loop, config: DDPConfig) -> "RankFeed":
        args = dict(config.ddp_model_args)
        if config.on_gpu:
            args.setdefault("device_ids", [self.local_rank])
        wrapper_cls = TTDistributedDataParallel if loop.feed_def is None else DistributedDataParallel
        self.ddp_model = wrapper_cls(loop.module, **args)
        self.wrapped_module = self.ddp_model
        self.feed = RankFeed(wrapper_feed(self.ddp_model, loop.module, loop.feed_def),
                             ModelFeed(loop.module, loop.feed_def), self)
        return self.feed

    def shutdown(self, loop) -> None:
        """Destroy the process group if this strategy created it; ``loop`` goes back to its module.

        The group must really be gone (every reference, the DDP wrapper's included, dropped) while
        the interpreter is alive: gloo's worker threads otherwise release their last tensors during
        interpreter finalization and abort the process ("terminate called without an active
        exception"). The ranks first wait for each other (a rank tearing its connections down while
        a peer still uses them aborts the peer), but not after a failure, nor for long: that would
        delay the peers' own "connection closed" errors, which end a failed run.
        """
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self._owns_group and dist.is_initialized() and not self._failed:
            try:
                settled = dist.barrier(async_op=True).wait(timeout=datetime.timedelta(seconds=30))
            except RuntimeError:
                settled = False
            if settled:
                loop.feed = ModelFeed(loop.module, loop.feed_def)
                self.ddp_model = self.wrapped_module = self.feed = self._comm = None
                dist.destroy_process_group()
                # The group's destructor joins its threads (without the GIL). In a spawned rank the
                # imported modules are frozen (launcher._freeze_imported_modules): this is cheap.
                gc.collect()
        self._owns_group = False

    # ------------------------------------------------------------------ strategy interface
    def setup_model(self, module: nn.Module, feed_def, strategy_args: Optional[dict] = None) -> ModelFeed:
        """Outside a rank the model stays on this strategy's device; ranks wrap it at launch."""
        module.to(self.device)
        self.wrapped_module = module
        return ModelFeed(module, feed_def)

    def compile_model(self, feed_def, compile_args) -> ModelFeed:
        """In a rank: ``torch.compile`` the DDP wrapper; training and evaluation then call it."""
        if not self.active:
            return super().compile_model(feed_def, compile_args)
        if self.wrapped_module is self.ddp_model:  # not compiled yet
            self.wrapped_module = torch.compile(self.ddp_model, **_compile_kwargs(compile_args))
            self.feed = RankFeed(wrapper_feed(self.wrapped_module, self.ddp_model.module, feed_def),
                                 self.feed.plain, self)
        return self.feed

    def setup_run(self, loop) -> None:
        """In a rank: ``on_multiprocess_start`` hooks, then shard the training loader."""
        if not self.active:
            return
        loop.callbacks_handler.execute("on_multiprocess_start")
        loop.train_loader = self.prepare_train_loader(loop.train_loader)
        if self._pending_loader_rng is not None:  # a checkpoint's states of this rank's copy of the loader
            set_loader_generator_states(loop.train_loader, self._pending_loader_rng)
            self._pending_loader_rng = None
        # Pinned callbacks are registered on their rank only: decide together.
        local = any(_BATCH_HOOKS & cb.implemented_hooks() for cb in loop.callbacks_handler.registered_callbacks)
        # A stop signal reaches one rank (or the ranks at different batches): agree on it per batch.
        local = local or getattr(loop, "_stop_control", None) is not None
        if self._comm.any_rank(local):
            loop.callbacks_handler.register_callbacks([_EarlyStopSync(self)], rank=self.rank)

    def prepare_train_loader(self, loader):
        """A copy of ``loader`` with a ``DistributedSampler`` (all other settings kept)."""
        if not self.active:
            return loader
        seed = self._comm.broadcast_int(data.sampler_seed(loader))
        return data.distributed_train_loader(loader, self.rank, self.world_size, seed)

    def prepare_eval_loader(self, loader):
        """In a rank: this rank's exact share of ``loader`` (see :mod:`.data`)."""
        if not self.active:
            return super().prepare_eval_loader(loader)
        return data.exact_eval_loader(loader, self.rank, self.world_size, self._is_solo,
                                          self._set_eval_plan)

    def _is_solo(self) -> bool:
        return self.in_solo

    def _set_eval_plan(self, plan: data.EvalPlan) -> None:
        self._eval_plan = plan

    def set_epoch(self, loader, epoch: int) -> None:
        """``sampler.set_epoch(epoch)`` so that every epoch shuffles differently (same on all ranks)."""
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def no_sync(self) -> ContextManager:
        """``DDP.no_sync()`` on accumulation micro-steps: gradients are all-reduced only when stepping."""
        if self.ddp_model is None:
            return contextlib.nullcontext()
        return self.ddp_model.no_sync()

    @contextlib.contextmanager
    def solo(self):
        """This rank works alone: evaluations read whole data sets, collectives are skipped."""
        self._solo_depth += 1
        try:
            yield
        finally:
            self._solo_depth -= 1

    def _collective(self) -> bool:
        return self.active and not self.in_solo

    def _sharded_eval(self) -> bool:
        return self._collective() and self._eval_plan is not None and self._eval_plan.sharded

    def reduce_eval(self, loss_sum: Any, num_samples: int) -> Tuple[Any, int]:
        """Sum the evaluation loss sum and sample count over the ranks (they read disjoint shares)."""
        if not self._sharded_eval():
            return loss_sum, num_samples
        values = _loss_values(loss_sum)
        total = self._comm.sum("reduce_eval", torch.stack([*values, values[0].new_tensor(num_samples)]))
        return _rebuild_loss(loss_sum, total[:-1]), int(round(float(total[-1])))

    def gather_predictions(self, y_pred, y_true, metadata, dataset_len: Optional[int]):
        """Every rank's predictions merged into data-set order (same result on every rank)."""
        if not self._sharded_eval():
            return y_pred, y_true, metadata
        num_samples = self._eval_plan.num_samples
        # a split stream (ShardedIterable): no length; gather_in_order collects each rank's count
        counts = None if num_samples is None else data.shard_counts(num_samples, self.world_size)
        (y_pred, y_true), metadata = self._comm.gather_in_order((y_pred, y_true), metadata, counts)
        return y_pred, y_true, metadata

    def any_rank(self, flag: bool) -> bool:
        """True when ``flag`` is True on any rank (``early_stop``)."""
        return self._comm.any_rank(flag) if self._collective() else flag

    def mean_over_ranks(self, value):
        """Mean of a loss tensor (or ``MultiLoss``) over the ranks (``accumulated_loss``)."""
        if not self._collective():
            return value
        values = _loss_values(value)
        total = self._comm.sum("mean_over_ranks", torch.stack(values))
        return _rebuild_loss(value, total / self.world_size)

    def sum_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """Sum of a scalar tensor over the ranks: one all-reduce (once per optimizer step)."""
        return self._comm.sum_unchecked(value) if self._collective() else value

    def all_ranks(self, flag: bool) -> bool:
        """True when ``flag`` is True on every rank: one small all-reduce (once per batch of a stream)."""
        return not self._comm.any_rank_unchecked(not flag) if self._collective() else flag

    def barrier(self) -> None:
        """Wait for every rank."""
        if self._collective():
            self._comm.barrier()

    def gather_objects(self, obj) -> Optional[list]:
        """Every rank's (picklable) ``obj`` in rank order, over the CPU flag group; None outside a rank."""
        if not self._collective():
            return None
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj, group=self._comm.flag_group)
        return gathered


class RankFeed:
    """The loop's model feed in a rank.

    Training runs through the DDP wrapper; evaluation too, except in :meth:`DDPStrategy.solo`,
    where it calls the plain module (a DDP forward may broadcast buffers: a collective).
    A ``MultiLoss`` is returned as :class:`JointBackwardMultiLoss`.
    """

    def __init__(self, wrapped: ModelFeed, plain: ModelFeed, strategy: DDPStrategy):
        self.module = wrapped.module
        self.wrapped, self.plain, self._strategy = wrapped, plain, strategy

    def get_loss(self, batch_data, criterion, device):
        loss = self.wrapped.get_loss(batch_data, criterion, device)
        if isinstance(loss, LossSum):  # loss_weighting='tokens': the sums may be a MultiLoss
            return LossSum(_joint_backward(loss.loss_sum), loss.num_items)
        return _joint_backward(loss)

    def get_loss_eval(self, batch_data, criterion, device):
        return self._pick().get_loss_eval(batch_data, criterion, device)

    def get_predictions(self, batch_data, device):
        return self._pick().get_predictions(batch_data, device)

    def _pick(self) -> ModelFeed:
        return self.plain if self._strategy.in_solo else self.wrapped


def _joint_backward(loss):
    """A ``MultiLoss`` without a user ``backward`` as :class:`JointBackwardMultiLoss`, else ``loss``."""
    if isinstance(loss, MultiLoss) and type(loss).backward is MultiLoss.backward:  # no user override
        return JointBackwardMultiLoss(loss, loss.loss_optimizer_map, loss.retain_graph_until_last)
    return loss


class JointBackwardMultiLoss(MultiLoss):
    """A ``MultiLoss`` back-propagated in one pass, when the first optimizer asks.

    DDP allows one backward pass per forward: losses sharing parameters, back-propagated one
    after another, would mark those parameters ready twice. The gradients are the same: the
    loop steps every optimizer only after all the losses were back-propagated.
    """

    def backward_with(self, optimizer_idx: int, backward_fn=None) -> None:
        if optimizer_idx != 0:
            return
        total = sum(self[name] for name in self if name in self.loss_optimizer_map)
        if backward_fn is None:
            total.backward()
        else:
            backward_fn(total, retain_graph=False)

    def map_values(self, fn) -> "JointBackwardMultiLoss":
        return JointBackwardMultiLoss({k: fn(v) for k, v in self.items()}, self.loss_optimizer_map,
                                      self.retain_graph_until_last)


class RankConsistentStore(PredictionStore):
    """Prediction cache that keeps nothing computed by one rank alone.

    A hit on one rank and a miss on another would leave the missing rank alone in a collective.
    """

    def __init__(self, strategy: DDPStrategy):
        super().__init__()
        self._strategy = strategy

    def put(self, dataset: str, kind: str, version: int, value: Any) -> None:
        if not self._strategy.in_solo:
            super().put(dataset, kind, version, value)


class _EarlyStopSync(AbstractCallback):
    """Stops every rank after the batch in which any rank set ``early_stop`` or received a stop
    signal (runs last; one all-reduce of two integers per batch, on a CPU group)."""

    def __init__(self, strategy: DDPStrategy):
        super().__init__("DDP early_stop sync", execution_order=2 ** 31)
        self._strategy = strategy

    def on_batch_end(self):
        loop = self.train_loop_obj
        control = getattr(loop, "_stop_control", None)
        requested = (control.requested or 0) if control is not None else 0
        early_stop, signum = self._strategy._comm.max_unchecked([int(bool(loop.early_stop)), requested])
        if signum:
            loop._stop_request = signum
            early_stop = 1
        loop.early_stop = bool(early_stop)


def _place_loop(loop, device: torch.device) -> None:
    """Move the model, optimizer state and AMP handler of ``loop`` to this rank's ``device``."""
    loop.device = device
    loop.module.to(device)
    for optimizer in loop.optimizers:
        if optimizer.state:  # load_state_dict casts the state to the parameters' device
            optimizer.load_state_dict(optimizer.state_dict())
    if loop.amp_handler.device_type != device.type:
        amp_state = loop.amp_handler.state_dict()
        loop.amp_handler = AmpHandler(loop.use_amp, device)
        loop.amp_handler.load_state_dict(amp_state)


def _loss_values(loss) -> list:
    values = list(loss.values()) if isinstance(loss, MultiLoss) else [loss]
    return [v.detach().double().reshape(()) for v in values]


def _rebuild_loss(template, values: torch.Tensor):
    if isinstance(template, MultiLoss):
        return MultiLoss(dict(zip(template.keys(), values.unbind(0))), template.loss_optimizer_map)
    return values[0]
