"""The TrainLoop's full state: what a checkpoint holds and how a run continues from it.

A checkpoint is the union of the ``state_dict()`` of every piece plus the loop's position: epoch,
batches done in the epoch, counters, the RNG states now and at the start of the epoch, the
epoch's training losses so far and any gradients of an unfinished accumulation window. A run
resumed from it continues bit for bit as the uninterrupted run (on CPU).
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
import zipfile
from typing import Any, Optional, Tuple

import torch

from aitoolbox.torchtrain.multi_loss_optim import MultiLoss, MultiOptimizer
from aitoolbox.torchtrain.train_loop.components.data_loading import (
    loader_generator_states, set_loader_generator_states)
from aitoolbox.torchtrain.train_loop.components.reproducibility import seed_all
from aitoolbox.torchtrain.train_loop.components.rng_state import get_rng_state, set_rng_state
from aitoolbox.utils.io import atomic_torch_save

logger = logging.getLogger("aitoolbox")

FORMAT_VERSION = 1


def rng_snapshot(loader) -> dict:
    """Global RNG states and the generator states of ``loader``."""
    return {"global": get_rng_state(), "loader": loader_generator_states(loader)}


def restore_rng(loader, snapshot: dict) -> None:
    """Restore a snapshot taken by :func:`rng_snapshot`."""
    set_rng_state(snapshot["global"])
    set_loader_generator_states(loader, snapshot["loader"])


def rank_stream_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s random streams, derived from the run's ``seed`` (rank 0: ``seed``)."""
    if rank == 0:
        return int(seed)
    digest = hashlib.sha256(f"aitoolbox-rank-stream:{int(seed)}:{int(rank)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_rank_streams(rank: int, seed: Optional[int] = None) -> None:
    """Give rank ``rank`` its own streams: torch (CPU and CUDA), Python and NumPy generators seeded
    from :func:`rank_stream_seed` of ``seed`` and the rank, so dropout masks and augmentations
    differ across ranks and two runs with the same seed are identical.

    ``seed`` None (``fit`` was given no seed): the run's seed is ``torch.initial_seed()`` and
    rank 0 keeps the state it has.
    """
    if seed is None:
        if rank == 0:
            return
        seed = torch.initial_seed()
    seed_all(rank_stream_seed(seed, rank))


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


def is_sharded_checkpoint_folder(path: str) -> bool:
    """Whether ``path`` is a sharded (``gpu_mode='fsdp'``) checkpoint folder, not a folder of checkpoints."""
    from aitoolbox.experiment.checkpoint_registry import SHARDED_LOOP_STATE_FILE

    return os.path.isdir(path) and os.path.isfile(os.path.join(path, SHARDED_LOOP_STATE_FILE))


def resolve_checkpoint_path(path) -> str:
    """``path`` with ``~`` expanded; a local folder becomes its newest exact checkpoint.

    Raises:
        FileNotFoundError: a folder without a loadable checkpoint.
    """
    from aitoolbox.cloud.backends import backend_for_uri
    from aitoolbox.experiment.checkpoint_registry import find_latest_checkpoint

    path = os.fspath(path)
    if backend_for_uri(path) is not None:
        return path
    path = os.path.expanduser(path)
    if os.path.isdir(path) and not is_sharded_checkpoint_folder(path):
        found = find_latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"No loadable checkpoint in the folder {path!r} (nor in its checkpoint_model/).")
        return found
    return path


def read_checkpoint(path: str, map_location=None) -> dict:
    """``torch.load(path, weights_only=True)``; an ``s3://`` or ``gs://`` URI is downloaded first.

    A sharded checkpoint folder (``gpu_mode='fsdp'``) is read whole, its shards joined into full
    tensors, whatever number of ranks wrote it.
    """
    from aitoolbox.cloud.backends import backend_for_uri

    cloud = backend_for_uri(path)
    if cloud is None:
        path = os.path.expanduser(os.fspath(path))
    if cloud is None and os.path.isdir(path):
        from aitoolbox.torchtrain.train_loop.strategies.fsdp import read_sharded_checkpoint

        return read_sharded_checkpoint(path)  # a sharded (FSDP) checkpoint folder, joined here
    if cloud is None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No checkpoint file at {path!r}.")
        return safe_torch_load(path, map_location)
    bucket, key = cloud.parse_uri(path)
    with tempfile.TemporaryDirectory() as tmp_dir:
        local_path = os.path.join(tmp_dir, os.path.basename(key) or "checkpoint.pt")
        cloud.download_file(bucket, key, local_path)
        return safe_torch_load(local_path, map_location, shown_path=path)


def safe_torch_load(path: str, map_location=None, shown_path: Optional[str] = None):
    """``torch.load(path, weights_only=True)``, with a clear error for a file it refuses.

    Raises:
        ValueError: the file holds objects other than tensors, containers, numbers and strings
            (e.g. a pickled class in the hyperparameters), or is no torch file at all.
    """
    shown_path = shown_path or path
    verify_checkpoint_file(path, shown_path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # A refused class is "Unsupported global"; both torch.save formats (zip, and the legacy
        # one of torch < 1.6 that aitoolbox 1.8's older files have) can hold one.
        refused = [line.strip() for line in str(error).splitlines() if "Unsupported global" in line]
        if not zipfile.is_zipfile(path) and not refused:
            raise ValueError(f"{shown_path!r} is not a file written by torch.save ({error}).") from error
        lines = refused or [line.strip() for line in str(error).splitlines() if "Unsupported" in line]
        raise ValueError(
            f"{shown_path!r} holds objects that torch.load(weights_only=True) refuses to unpickle"
            f"{': ' + lines[0] if lines else ''}. aitoolbox loads checkpoints with weights_only=True only "
            "(no code runs from a file). If you trust the file, load it yourself with "
            "torch.load(path, weights_only=False), drop or convert the offending entries (often numpy "
            "values or objects in 'hyperparams') and save it again with torch.save.") from error
    except (KeyError, RuntimeError, EOFError) as error:
        if zipfile.is_zipfile(path):
            raise
        raise ValueError(f"{shown_path!r} is not a file written by torch.save ({type(error).__name__}: "
                         f"{error}).") from error


def verify_checkpoint_file(path: str, shown_path: Optional[str] = None) -> None:
    """Check a file before it is loaded: empty, truncated, or damaged since it was written.

    ``torch.save`` writes a zip archive with a CRC-32 checksum of every part; they are verified
    here (torch's own reader does not), so that a damaged file is refused instead of loading
    wrong numbers.

    Raises:
        ValueError: the file is empty, truncated or fails its checksums (message names it).
    """
    shown_path = shown_path or path
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(f"{shown_path!r} is empty (0 bytes): its write was interrupted. Load an older "
                         "checkpoint (find_latest_checkpoint / resume=True skip such files).")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not zipfile.is_zipfile(path):
        if magic == b"PK\x03\x04":
            raise ValueError(f"{shown_path!r} is truncated ({size} bytes; the end of the archive is missing): its "
                             "write was interrupted. Load an older checkpoint (find_latest_checkpoint / "
                             "resume=True skip such files).")
        return  # the legacy torch.save format, or no torch file (torch.load says which)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(f"{shown_path!r} is truncated or damaged ({size} bytes): {error}.") from error
    if bad is not None:
        raise ValueError(f"{shown_path!r} is corrupt: its part {bad!r} fails the CRC-32 checksum written with it "
                         "(the file changed after it was written). Load an older checkpoint "
                         "(find_latest_checkpoint / resume=True skip such files).")


# ---------------------------------------------------------------------- aitoolbox 1.8 checkpoints
#: keys of a checkpoint written by aitoolbox 1.8's savers (``model_<exp>_<ts>_E<n>.pth``)
ORIGINAL_REQUIRED_KEYS = ("model_state_dict", "optimizer_state_dict", "epoch")


def is_original_checkpoint(state: Any) -> bool:
    """Whether ``state`` is a checkpoint dict of aitoolbox 1.8 (no ``format_version``)."""
    return (isinstance(state, dict) and "format_version" not in state
            and all(key in state for key in ORIGINAL_REQUIRED_KEYS))


def unknown_checkpoint_message(state: Any) -> str:
    """The error message for a loaded object that is no checkpoint this aitoolbox reads."""
    if isinstance(state, dict) and state and all(isinstance(value, torch.Tensor) for value in state.values()):
        return ("Not an aitoolbox checkpoint: the file holds a model state dict only, with no optimizer state or position to continue training from. "
                "To predict with it: model.load_state_dict(torch.load(path, weights_only=True)). To continue "
                "training, load a checkpoint of checkpoint_model/ (ModelLoadContinueTraining's default "
                "saved_model_dir='checkpoint_model', or TrainLoop.load_checkpoint(path)).")
    what = f"a dict with the keys {sorted(map(str, state))[:12]}" if isinstance(state, dict) \
        else f"a {type(state).__name__}"
    return (f"Not an aitoolbox checkpoint: the file holds {what}. Expected a checkpoint written by "
            f"TrainLoop.save_checkpoint / ModelCheckpoint (with 'format_version'), or one written by "
            f"aitoolbox 1.8 (with {list(ORIGINAL_REQUIRED_KEYS)}). A bare model state dict loads with "
            "model.load_state_dict(torch.load(path, weights_only=True)).")


def strip_data_parallel_prefix(model_state: dict) -> dict:
    """``model_state`` without the ``module.`` prefix that ``nn.DataParallel`` / DDP added."""
    if model_state and all(str(key).startswith("module.") for key in model_state):
        return type(model_state)((key[len("module."):], value) for key, value in model_state.items())
    return model_state


def load_original_state_dict(loop, state: dict) -> None:
    """Load an aitoolbox 1.8 checkpoint dict into ``loop``; the next ``fit`` continues after it.

    Taken from it: the weights (a DataParallel ``module.`` prefix is removed), the optimizer
    state (a list for a ``MultiOptimizer``), the AMP scaler (``amp``), the position (the epoch
    after ``epoch``, ``iteration_idx + 1`` batches done), and the scheduler states
    (``schedulers_state_dict``), which go to the scheduler callbacks of the next ``fit``. Such a
    file holds no RNG state, no training history and no callback state: the continued run is
    not bit-exact, which is logged.

    Raises:
        ValueError, RuntimeError: the weights or optimizer state do not fit the loop's.
    """
    plain_module(loop.module).load_state_dict(strip_data_parallel_prefix(state["model_state_dict"]))
    if state["optimizer_state_dict"] is not None:
        _load_original_optimizer(loop.optimizer, state["optimizer_state_dict"])
    if state.get("amp"):
        if loop.amp_handler.scaler is not None:
            loop.amp_handler.load_state_dict(state["amp"])
        else:
            logger.info("The checkpoint holds an AMP GradScaler state; this TrainLoop uses no AMP, so it is ignored.")
    set_original_position(loop, state)
    reset_run_state(loop)
    loop._pending_scheduler_states = PendingSchedulerStates(list(state.get("schedulers_state_dict") or []))
    logger.warning("Loaded an aitoolbox 1.8 checkpoint (training continues at epoch %d): that format holds no "
                   "RNG state, so the continued run is not exactly the uninterrupted one.", loop.epoch)


def reset_run_state(loop) -> None:
    """Forget the state of a run in progress after new weights were loaded from an aitoolbox 1.8 file."""
    loop._pending_callback_state = None
    loop.epoch_start_rng = None
    loop.loss_batch_accum = []
    loop._pending_grads = None
    loop.weights_version += 1
    loop.prediction_store.clear()


def _load_original_optimizer(optimizer, optimizer_state) -> None:
    if isinstance(optimizer_state, list) and not isinstance(optimizer, MultiOptimizer):
        if len(optimizer_state) != 1:
            raise ValueError(f"The checkpoint holds the states of {len(optimizer_state)} optimizers (a "
                             "MultiOptimizer); give the TrainLoop a MultiOptimizer of as many optimizers.")
        optimizer_state = optimizer_state[0]
    elif isinstance(optimizer, MultiOptimizer) and not isinstance(optimizer_state, list):
        raise ValueError("The TrainLoop has a MultiOptimizer but the checkpoint holds one optimizer's state; "
                         "give the TrainLoop the single optimizer it was trained with.")
    optimizer.load_state_dict(optimizer_state)


def set_original_position(loop, state: dict) -> None:
    """Put ``loop`` at the start of the epoch after the one an aitoolbox 1.8 checkpoint ended.

    aitoolbox 1.8 stored the 0-based index of the finished epoch and the 0-based index of the
    last batch (``iteration_idx``); this loop counts epochs and batches done.
    """
    loop.epoch, loop.iteration = int(state["epoch"]) + 1, 0
    iteration_idx = state.get("iteration_idx")
    if iteration_idx is not None:
        loop.total_iteration_idx = int(iteration_idx) + 1
    else:
        try:
            loop.total_iteration_idx = loop.epoch * len(loop.train_loader)
        except TypeError:  # no train loader, or one without len()
            loop.total_iteration_idx = 0
    # Not saved by aitoolbox 1.8: one optimizer step per batch is assumed (no gradient accumulation).
    loop.num_optimizer_steps = loop.total_iteration_idx


class PendingSchedulerStates:
    """Scheduler states of an aitoolbox 1.8 checkpoint, waiting for the scheduler callbacks of ``fit``.

    Args:
        states: ``schedulers_state_dict``: one state per scheduler, in registration order.
        ignore_saved: with states but no schedulers: True ignores them, False raises, None warns.
        ignore_missing_saved: with schedulers but no states: True ignores, False raises, None warns.
    """

    def __init__(self, states: list, ignore_saved: Optional[bool] = None,
                 ignore_missing_saved: Optional[bool] = None):
        self.states = states
        self.ignore_saved = ignore_saved
        self.ignore_missing_saved = ignore_missing_saved

    def apply(self, schedulers: list) -> None:
        """Load the states into ``schedulers`` (the registered scheduler callbacks).

        Raises:
            ValueError, KeyError: the counts do not match (unless told to ignore it).
        """
        if not self.states and schedulers:
            self._mismatch(self.ignore_missing_saved, KeyError(
                "The checkpoint holds no scheduler states but schedulers were given to the TrainLoop; "
                "pass ignore_missing_saved_schedulers=True to ModelLoadContinueTraining to start them afresh."))
            return
        if self.states and not schedulers:
            self._mismatch(self.ignore_saved, ValueError(
                f"The checkpoint holds {len(self.states)} scheduler state(s) but no schedulers were given to the "
                "TrainLoop; pass them to fit(callbacks=...), or ignore_saved_schedulers=True to "
                "ModelLoadContinueTraining."))
            return
        if len(self.states) != len(schedulers):
            raise ValueError(f"The checkpoint holds {len(self.states)} scheduler state(s) but {len(schedulers)} "
                             "schedulers were given to the TrainLoop; give the same schedulers, in the same order.")
        for scheduler, state in zip(schedulers, self.states):
            load_original_scheduler_state(scheduler, state)

    @staticmethod
    def _mismatch(ignore: Optional[bool], error: Exception) -> None:
        if ignore is False:
            raise error
        if ignore is None:
            logger.warning("%s", error.args[0])


def load_original_scheduler_state(scheduler_callback, state: dict) -> None:
    """Load one scheduler state of an aitoolbox 1.8 checkpoint (a torch scheduler's ``state_dict``).

    The learning rates the scheduler had set are put back into the optimizer as well.

    Raises:
        TypeError: ``scheduler_callback`` is no scheduler callback with a torch scheduler.
    """
    scheduler = getattr(scheduler_callback, "scheduler", None)
    if scheduler is None or not callable(getattr(scheduler, "load_state_dict", None)):
        raise TypeError(f"{type(scheduler_callback).__name__} has no torch scheduler to load the saved state into.")
    if isinstance(state, dict) and set(state) == {"scheduler", "lrs"}:
        scheduler_callback.load_state_dict(state)  # this aitoolbox's own callback state
        return
    scheduler.load_state_dict(state)
    optimizer = getattr(scheduler, "optimizer", None)
    last_lrs = state.get("_last_lr") if isinstance(state, dict) else None
    if optimizer is not None and last_lrs and len(last_lrs) == len(optimizer.param_groups):
        for group, lr in zip(optimizer.param_groups, last_lrs):
            group["lr"] = lr


def apply_pending_scheduler_states(loop) -> None:
    """At the start of ``fit``: hand the scheduler states of a loaded aitoolbox 1.8 checkpoint over."""
    pending = getattr(loop, "_pending_scheduler_states", None)
    if pending is not None:
        loop._pending_scheduler_states = None
        pending.apply(loop.get_schedulers())


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
