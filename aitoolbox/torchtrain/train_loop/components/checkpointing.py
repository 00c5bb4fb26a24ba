"""The TrainLoop's full state: what a checkpoint holds and how a run continues from it.

A checkpoint is the union of the ``state_dict()`` of every piece plus the loop's position: epoch,
batches done in the epoch, counters, the RNG states now and at the start of the epoch, the
epoch's training losses so far and any gradients of an unfinished accumulation window. A run
resumed from it continues bit for bit as the uninterrupted run (on CPU).

Its neighbours hold the rest, and are re-exported here (``checkpointing.<name>`` keeps working):
RNG snapshots in ``rng_state.py``, the per-rank random streams in ``reproducibility.py``, reading
and verifying checkpoint files in ``checkpoint_files.py`` and the checkpoints of aitoolbox 1.8 in
``original_checkpoint.py``.
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Optional, Tuple

import torch

from aitoolbox.torchtrain.multi_loss_optim import MultiLoss
from aitoolbox.torchtrain.train_loop.components.checkpoint_files import (  # noqa: F401 (re-exported)
    is_sharded_checkpoint_folder, read_checkpoint, resolve_checkpoint_path, safe_torch_load, verify_checkpoint_file)
from aitoolbox.torchtrain.train_loop.components.data_loading import loader_generator_states
from aitoolbox.torchtrain.train_loop.components.original_checkpoint import (  # noqa: F401 (re-exported)
    ORIGINAL_REQUIRED_KEYS, PendingSchedulerStates, apply_pending_scheduler_states, is_original_checkpoint,
    load_original_scheduler_state, load_original_state_dict, reset_run_state, set_original_position,
    strip_data_parallel_prefix, unknown_checkpoint_message)
from aitoolbox.torchtrain.train_loop.components.reproducibility import (  # noqa: F401 (re-exported)
    rank_stream_seed, seed_rank_streams)
from aitoolbox.torchtrain.train_loop.components.rng_state import (  # noqa: F401 (re-exported)
    restore_rng, rng_snapshot, set_rng_state)
from aitoolbox.utils.io import atomic_torch_save

logger = logging.getLogger("aitoolbox")

FORMAT_VERSION = 1


def rank_rng_state(loop) -> dict:
    """This rank's RNG states as a checkpoint taken now holds them (now, and at the epoch start)."""
    _, iteration, _ = position(loop)
    return {"rng": rng_snapshot(loop.train_loader), "epoch_start": loop.epoch_start_rng if iteration > 0 else None}


def gather_rank_rng(loop) -> Optional[list]:
    """Every rank's :func:`rank_rng_state` (a collective: call it on every rank); None on one process."""
    return loop.strategy.gather_objects(rank_rng_state(loop))


def restore_rank_rng(loop, states: Optional[list], rank: int, world_size: int) -> Optional[list]:
    """Restore rank ``rank``'s own global RNG states and epoch-start states from a checkpoint's
    ``rank_rng_states``.

    Returns:
        The rank's train loader generator states, for the rank's own copy of the loader (see
        ``strategies/data.py``), to restore with ``set_loader_generator_states``; None when the
        checkpoint holds no states for this world size (nothing is restored).
    """
    if not states or len(states) != world_size:
        return None
    set_rng_state(states[rank]["rng"]["global"])
    loop.epoch_start_rng = states[rank]["epoch_start"]
    return states[rank]["rng"]["loader"]


def plain_module(module: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside any DataParallel / DDP / ``torch.compile`` wrappers.

    Its state dict has no ``module.`` / ``_orig_mod.`` prefixes, so a checkpoint loads into a
    plain model.
    """
    wrappers = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    while True:
        if isinstance(module, wrappers):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), torch.nn.Module):
            module = module._orig_mod
        else:
            return module


def position(loop) -> Tuple[int, int, int]:
    """``(epoch, batches done in it, total batches done)`` as a resumed run must see them."""
    if loop._checkpoint_phase == "batch_end":
        return loop.epoch, loop.iteration + 1, loop.total_iteration_idx + 1
    if loop._checkpoint_phase == "epoch_end":
        return loop.epoch + 1, 0, loop.total_iteration_idx
    return loop.epoch, loop.iteration, loop.total_iteration_idx


class CrashResumePoint:
    """Follows the run through callback hooks so that a crash checkpoint resumes exactly.

    A crash inside a batch but before its backward pass (data loading, ``on_batch_begin``, the
    forward pass) leaves the weights and optimizers as they were after the previous batch, but
    the RNGs have moved on; the crash checkpoint then takes the RNG states of the start of the
    batch. A crash after the backward pass, or in the end-of-epoch evaluation, is not a clean
    point: its checkpoint holds the state as it was and is flagged as not exact.

    To keep the per-batch cost near zero (a full snapshot costs ~45 us, mostly NumPy's state
    getter), only torch's, CUDA's and the loader's generators are saved at every batch end (~2 us).
    Python's and NumPy's global generators are compared, at crash time, with the last full
    snapshot (training start or epoch start): if the batch drew from them, the checkpoint is
    flagged as not exact. Regular checkpoints are always exact.

    The hooks must be called from a callback that runs after all others (a saver).
    """

    def __init__(self):
        self.batch_started = False
        self.batch_start_rng: Optional[dict] = None  # torch / CUDA / loader states only
        self.host_reference: Optional[dict] = None  # last full snapshot (Python and NumPy)
        self.seen_epoch_rng: Optional[dict] = None

    def on_train_begin(self, loop) -> None:
        """At registration and training start (after a resume the RNGs are the checkpoint's)."""
        self.batch_started = False
        full = rng_snapshot(loop.train_loader)
        self.host_reference = full["global"]
        self.batch_start_rng = _device_rng(full) if loop.iteration > 0 else None
        self.seen_epoch_rng = loop.epoch_start_rng

    def on_batch_begin(self) -> None:
        self.batch_started = True

    def on_batch_end(self, loop) -> None:
        self.batch_started = False
        state = {"torch": torch.get_rng_state(), "loader": loader_generator_states(loop.train_loader)}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        self.batch_start_rng = state

    def on_epoch_end(self, loop) -> None:
        self.seen_epoch_rng = loop.epoch_start_rng

    def state_dict(self, loop) -> Tuple[dict, bool]:
        """The loop's state as of the last clean point, and whether resuming from it is exact."""
        state = loop_state_dict(loop)
        exact, rng = self._resume_rng(loop, state["rng_state"])
        if rng is not None:
            state["rng_state"] = rng
        return state, exact

    def _resume_rng(self, loop, current: dict) -> Tuple[bool, Optional[dict]]:
        if loop._checkpoint_phase is not None:
            return True, None  # a batch or an epoch is complete: the current state resumes exactly
        if self.batch_started and len(loop.loss_batch_accum) > loop.iteration:
            return False, None  # this batch's backward pass (or optimizer step) may have run
        if 0 < loop._epoch_len <= loop.iteration:
            return False, None  # in the end-of-epoch work: the history may be half updated
        if loop.epoch_start_rng is not self.seen_epoch_rng:
            self.host_reference = loop.epoch_start_rng["global"]
        if loop.iteration == 0:
            # The epoch was opened (or not yet): a resume opens it again from its start state.
            return True, loop.epoch_start_rng if loop.epoch_start_rng is not self.seen_epoch_rng else None
        if self.batch_start_rng is None:
            return False, None
        exact = self.host_reference is not None and _same_host_rng(current["global"], self.host_reference)
        return exact, _with_device_rng(current, self.batch_start_rng)


def _device_rng(snapshot: dict) -> dict:
    state = {"torch": snapshot["global"]["torch"], "loader": snapshot["loader"]}
    if "cuda" in snapshot["global"]:
        state["cuda"] = snapshot["global"]["cuda"]
    return state


def _with_device_rng(snapshot: dict, device_rng: dict) -> dict:
    global_state = dict(snapshot["global"], torch=device_rng["torch"])
    if "cuda" in device_rng:
        global_state["cuda"] = device_rng["cuda"]
    return {"global": global_state, "loader": device_rng["loader"]}


def _same_host_rng(state: dict, reference: dict) -> bool:
    """Whether Python's and NumPy's generators are in the same state in both snapshots."""
    kind, keys, *rest = state["numpy"]
    ref_kind, ref_keys, *ref_rest = reference["numpy"]
    return (state["python"] == reference["python"] and kind == ref_kind and rest == ref_rest
            and torch.equal(keys, ref_keys))


def loop_state_dict(loop, training_state: bool = True) -> dict:
    """Everything needed to continue ``loop``'s run exactly.

    Args:
        loop: the TrainLoop.
        training_state: include the weights, optimizer states and pending gradients (False: they
            are None, for a sharded checkpoint that writes them itself).
    """
    epoch, iteration, total_iteration = position(loop)
    mid_epoch = iteration > 0
    model_state, optimizer_state, grads = loop.strategy.training_state(loop) if training_state else (None,) * 3
    return {
        "format_version": FORMAT_VERSION,
        "model_state_dict": model_state,
        "optimizer_state_dict": optimizer_state,
        "optimizer_type": [type(optimizer).__name__ for optimizer in loop.optimizers],
        "amp_scaler_state_dict": loop.amp_handler.state_dict(),
        "epoch": epoch, "iteration": iteration, "total_iteration_idx": total_iteration,
        "num_optimizer_steps": loop.num_optimizer_steps,
        "train_history": loop.train_history.state_dict(),
        "callbacks_state_dict": loop.callbacks_handler.state_dict(),
        "rng_state": rng_snapshot(loop.train_loader),
        "epoch_start_rng_state": loop.epoch_start_rng if mid_epoch else None,
        "loss_batch_accum": _pack_losses(loop.loss_batch_accum) if mid_epoch else None,
        "loss_weight_accum": _pack_weights(loop.loss_weight_accum) if mid_epoch else None,
        "stream_position": _stream_position(loop, iteration) if mid_epoch else None,
        "pending_grads": grads,
        # what the run looked like, to tell on resume what cannot continue exactly
        "run_shape": {"train_loader_len": _loader_len(loop.train_loader), "world_size": loop.strategy.world_size},
    }


def load_loop_state_dict(loop, state: dict) -> None:
    """Restore ``loop`` from :func:`loop_state_dict`'s output; the next ``fit`` continues it.

    A checkpoint dict written by aitoolbox 1.8 is loaded by :func:`load_original_state_dict`.

    Raises:
        ValueError: ``state`` is neither format.
    """
    if is_original_checkpoint(state):
        load_original_state_dict(loop, state)
        return
    if not isinstance(state, dict) or "format_version" not in state:
        raise ValueError(unknown_checkpoint_message(state))
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"Unsupported checkpoint format_version {state.get('format_version')!r}; "
                         f"this aitoolbox writes and reads version {FORMAT_VERSION}.")
    # Everything that can be checked is checked before anything changes: a failed load leaves the loop as it was.
    check_model_fits(plain_module(loop.module), state["model_state_dict"])
    check_optimizers_fit(loop, state["optimizer_state_dict"], state.get("optimizer_type"))
    plain_module(loop.module).load_state_dict(state["model_state_dict"])
    loop.optimizer.load_state_dict(state["optimizer_state_dict"])
    loop.amp_handler.load_state_dict(state["amp_scaler_state_dict"])
    loop.epoch, loop.iteration = state["epoch"], state["iteration"]
    loop.total_iteration_idx = state["total_iteration_idx"]
    loop.num_optimizer_steps = state["num_optimizer_steps"]
    loop.train_history.load_state_dict(state["train_history"])
    loop._pending_callback_state = state["callbacks_state_dict"]
    if loop.callbacks_handler.registered_callbacks:
        loop.callbacks_handler.load_state_dict(state["callbacks_state_dict"])
    restore_rng(loop.train_loader, state["rng_state"])
    loop.epoch_start_rng = state["epoch_start_rng_state"]
    losses = _unpack_losses(state["loss_batch_accum"])
    loop.loss_batch_accum = [_to_device(loss, loop.device) for loss in losses]
    loop._pending_grads = state["pending_grads"]
    loop._resumed_run_shape = state.get("run_shape")
    loop._rank_rng_states = state.get("rank_rng_states")  # every DDP rank's own, restored in each rank
    loop._rng_restored = True  # the saved states win over a later fit(seed=...)
    # Absent from the checkpoints written before weighted accumulation and streams existed.
    weights = state.get("loss_weight_accum") or []
    loop.loss_weight_accum = [_to_device(w, loop.device) if isinstance(w, torch.Tensor) else w for w in weights]
    loop._pending_stream_position = state.get("stream_position")
    loop.weights_version += 1
    loop.prediction_store.clear()


def check_model_fits(module: torch.nn.Module, saved: dict) -> None:
    """Raise before loading when the saved weights do not fit ``module`` (another architecture).

    Raises:
        ValueError: naming the missing, unexpected and differently shaped parameters.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    shapes = [f"{k} (checkpoint {tuple(saved[k].shape)}, model {tuple(own[k].shape)})" for k in own
              if k in saved and isinstance(saved[k], torch.Tensor) and saved[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label}: {names[:8]}{' ...' if len(names) > 8 else ''}" for label, names in
                 (("missing in the checkpoint", missing), ("not in the model", unexpected), ("other shape", shapes))
                 if names]
        raise ValueError("The checkpoint's weights do not fit this model (another architecture?): "
                         + "; ".join(parts) + ". Build the model the checkpoint was trained with.")


def check_optimizers_fit(loop, saved, saved_types: Optional[list]) -> None:
    """Raise before loading when the saved optimizer state belongs to other optimizers.

    Raises:
        ValueError: another optimizer type or number of optimizers / parameter groups / parameters.
    """
    own_types = [type(optimizer).__name__ for optimizer in loop.optimizers]
    if saved_types is not None and list(saved_types) != own_types:
        raise ValueError(f"The checkpoint holds the state of {list(saved_types)} but the TrainLoop has {own_types}: "
                         "give it the optimizer(s) the checkpoint was trained with (their states are not "
                         "interchangeable), or load only the weights: "
                         "model.load_state_dict(torch.load(path, weights_only=True)['model_state_dict']).")
    saved_list = saved if isinstance(saved, list) else [saved]
    if len(saved_list) != len(loop.optimizers):
        raise ValueError(f"The checkpoint holds {len(saved_list)} optimizer state(s), the TrainLoop has "
                         f"{len(loop.optimizers)} optimizer(s).")
    for idx, (optimizer, state) in enumerate(zip(loop.optimizers, saved_list)):
        groups = state.get("param_groups", []) if isinstance(state, dict) else []
        own = [len(group["params"]) for group in optimizer.param_groups]
        theirs = [len(group.get("params", [])) for group in groups]
        if own != theirs:
            raise ValueError(f"Optimizer {idx} ({type(optimizer).__name__}): the checkpoint's parameter groups hold "
                             f"{theirs} parameters, this optimizer's {own}: another model or optimizer set-up.")


def _loader_len(loader) -> Optional[int]:
    try:
        return len(loader)
    except TypeError:  # None, or a loader without len()
        return None


def warn_inexact_resume(loop, unclaimed_callback_states) -> None:
    """At the start of a resumed ``fit`` (main process): say what cannot continue exactly.

    A callback whose state the checkpoint holds but that is not registered again (a scheduler
    left out), a train loader of another length, or another number of processes.
    """
    shape = getattr(loop, "_resumed_run_shape", None)
    loop._resumed_run_shape = None
    if not loop.is_main_process():
        return
    stateful = [key.split(":")[1] if key.count(":") >= 2 else key for key in unclaimed_callback_states]
    if stateful:
        logger.warning("The checkpoint holds the state of callback(s) %s that this fit does not register again; "
                       "the run does not continue exactly (pass the same callbacks to fit(callbacks=...)).", stateful)
    if not shape:
        return
    length, world_size = _loader_len(loop.train_loader), loop.strategy.world_size
    if shape.get("world_size") not in (None, world_size):
        logger.warning("The checkpoint was written by a run of %s process(es), this run has %s: the data is sharded "
                       "differently, so the run does not continue exactly.", shape["world_size"], world_size)
    elif shape.get("train_loader_len") not in (None, length):
        logger.warning("The checkpoint's train loader had %s batches per epoch, this one has %s: the run does not "
                       "continue exactly (another data set, batch size or drop_last).", shape["train_loader_len"], length)


def _pack_weights(weights: list) -> list:
    """The epoch's batch weights ('samples' / 'tokens' weighting): ints, or CPU tensors."""
    return [w.detach().cpu() if isinstance(w, torch.Tensor) else w for w in weights]


def _stream_position(loop, iteration: int) -> Optional[tuple]:
    """``(iteration, state)`` of a stateful stream at the checkpoint's position, else None.

    None for a loader with a length, or a stream with no ``state_dict()``: a resume then
    replays the epoch's start and skips the batches done (see ``streams``).
    """
    stream = getattr(loop, "_stream", None)
    if stream is None:
        return None
    state = stream.position_state(iteration)
    return None if state is None else (iteration, state)


def restore_pending_grads(loop) -> None:
    """Put back the gradients of an unfinished accumulation window saved in a checkpoint."""
    grads = getattr(loop, "_pending_grads", None)
    if grads:
        loop.strategy.restore_grads(loop.module, grads)
    loop._pending_grads = None


def save_checkpoint(loop, path: str) -> str:
    """Write the loop's state to ``path`` atomically (temporary file, fsync, rename).

    An ``s3://bucket/key`` or ``gs://bucket/key`` URI is written to a temporary local file and
    uploaded (waiting for it).
    """
    from aitoolbox.cloud.backends import backend_for_uri

    cloud = backend_for_uri(path)
    if getattr(loop.strategy, "shards_checkpoints", False):
        if cloud is not None:
            raise ValueError(f"gpu_mode='fsdp' writes sharded checkpoints (a folder, by every rank) to a local or "
                             f"shared file system, not to {path!r}: pass a local path (tracking TrainLoops mirror "
                             "their checkpoint folders to the cloud themselves).")
        state = loop_state_dict(loop, training_state=False)
        state["rank_rng_states"] = gather_rank_rng(loop)  # every rank calls this: a collective is fine
        return loop.strategy.save_sharded(loop, path, state)
    if cloud is None:
        return atomic_torch_save(loop.state_dict(), os.path.expanduser(os.fspath(path)))
    bucket, key = cloud.parse_uri(path)
    with tempfile.TemporaryDirectory() as tmp_dir:
        local_path = os.path.join(tmp_dir, "checkpoint.pt")
        torch.save(loop.state_dict(), local_path)
        cloud.upload_file(local_path, bucket, key)
    return path


def load_checkpoint(loop, path: str) -> str:
    """Load a checkpoint from a local path or an ``s3://`` / ``gs://`` URI into ``loop``.

    A local folder (an experiment folder or its ``checkpoint_model/``) loads its newest exact
    checkpoint (see :func:`~aitoolbox.experiment.checkpoint_registry.find_latest_checkpoint`);
    ``~`` is expanded. Read onto the CPU: RNG states must stay CPU tensors; the model and
    optimizers copy their states to their own devices.

    Returns:
        The path of the file loaded.

    Raises:
        FileNotFoundError: no checkpoint at ``path`` (or in the folder).
    """
    path = resolve_checkpoint_path(path)
    loop.load_state_dict(read_checkpoint(path, map_location="cpu"))
    return path


def _to_device(loss, device: torch.device):
    if isinstance(loss, MultiLoss):
        return loss.map_values(lambda value: value.to(device))
    return loss.to(device)


def module_grads(module) -> Optional[list]:
    """Copies of the parameters' gradients (None when no parameter has one)."""
    grads = [None if p.grad is None else p.grad.detach().clone() for p in module.parameters()]
    return grads if any(g is not None for g in grads) else None


def _pack_losses(losses: list):
    if not losses:
        return None
    if isinstance(losses[0], MultiLoss):
        return {"losses": {k: torch.stack([l[k] for l in losses]) for k in losses[0]},
                "map": losses[0].loss_optimizer_map}
    return torch.stack(losses)


def _unpack_losses(packed) -> list:
    if packed is None:
        return []
    if isinstance(packed, dict):
        names = list(packed["losses"])
        count = len(packed["losses"][names[0]])
        return [MultiLoss({k: packed["losses"][k][i] for k in names}, packed["map"]) for i in range(count)]
    return list(packed.unbind(0))
