"""The TrainLoop's full state: what a checkpoint holds and how a run continues from it.

A checkpoint is the union of the ``state_dict()`` of every piece plus the loop's position: epoch,
batches done in the epoch, counters, the RNG states now and at the start of the epoch, the
epoch's training losses so far and any gradients of an unfinished accumulation window. A run
resumed from it continues bit for bit as the uninterrupted run (on CPU).
"""
from __future__ import annotations

import os
import tempfile
from typing import Optional, Tuple

import torch

from aitoolbox.torchtrain.multi_loss_optim import MultiLoss
from aitoolbox.torchtrain.train_loop.components.data_loading import (
    loader_generator_states, set_loader_generator_states)
from aitoolbox.torchtrain.train_loop.components.rng_state import get_rng_state, set_rng_state
from aitoolbox.utils.io import atomic_torch_save

FORMAT_VERSION = 1


def rng_snapshot(loader) -> dict:
    """Global RNG states and the generator states of ``loader``."""
    return {"global": get_rng_state(), "loader": loader_generator_states(loader)}


def restore_rng(loader, snapshot: dict) -> None:
    """Restore a snapshot taken by :func:`rng_snapshot`."""
    set_rng_state(snapshot["global"])
    set_loader_generator_states(loader, snapshot["loader"])


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


def loop_state_dict(loop) -> dict:
    """Everything needed to continue ``loop``'s run exactly."""
    epoch, iteration, total_iteration = position(loop)
    mid_epoch = iteration > 0
    return {
        "format_version": FORMAT_VERSION,
        "model_state_dict": plain_module(loop.module).state_dict(),
        "optimizer_state_dict": loop.optimizer.state_dict(),
        "amp_scaler_state_dict": loop.amp_handler.state_dict(),
        "epoch": epoch, "iteration": iteration, "total_iteration_idx": total_iteration,
        "num_optimizer_steps": loop.num_optimizer_steps,
        "train_history": loop.train_history.state_dict(),
        "callbacks_state_dict": loop.callbacks_handler.state_dict(),
        "rng_state": rng_snapshot(loop.train_loader),
        "epoch_start_rng_state": loop.epoch_start_rng if mid_epoch else None,
        "loss_batch_accum": _pack_losses(loop.loss_batch_accum) if mid_epoch else None,
        "pending_grads": _pending_grads(loop.module),
    }


def load_loop_state_dict(loop, state: dict) -> None:
    """Restore ``loop`` from :func:`loop_state_dict`'s output; the next ``fit`` continues it."""
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"Unsupported checkpoint format_version {state.get('format_version')!r}; "
                         f"this aitoolbox writes and reads version {FORMAT_VERSION}.")
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
    loop.weights_version += 1
    loop.prediction_store.clear()


def restore_pending_grads(loop) -> None:
    """Put back the gradients of an unfinished accumulation window saved in a checkpoint."""
    grads = getattr(loop, "_pending_grads", None)
    if grads:
        for param, grad in zip(loop.module.parameters(), grads):
            param.grad = None if grad is None else grad.to(param.device)
    loop._pending_grads = None


def save_checkpoint(loop, path: str) -> str:
    """Write the loop's state to ``path`` atomically (temporary file, fsync, rename).

    An ``s3://bucket/key`` or ``gs://bucket/key`` URI is written to a temporary local file and
    uploaded (waiting for it).
    """
    from aitoolbox.cloud.backends import backend_for_uri

    cloud = backend_for_uri(path)
    if cloud is None:
        return atomic_torch_save(loop.state_dict(), path)
    bucket, key = cloud.parse_uri(path)
    with tempfile.TemporaryDirectory() as tmp_dir:
        local_path = os.path.join(tmp_dir, "checkpoint.pt")
        torch.save(loop.state_dict(), local_path)
        cloud.upload_file(local_path, bucket, key)
    return path


def load_checkpoint(loop, path: str) -> None:
    """Load a checkpoint from a local path or an ``s3://`` / ``gs://`` URI into ``loop``.

    Read onto the CPU: RNG states must stay CPU tensors; the model and optimizers copy their
    states to their own devices.
    """
    loop.load_state_dict(read_checkpoint(path, map_location="cpu"))


def read_checkpoint(path: str, map_location=None) -> dict:
    """``torch.load(path, weights_only=True)``; an ``s3://`` or ``gs://`` URI is downloaded first."""
    from aitoolbox.cloud.backends import backend_for_uri

    cloud = backend_for_uri(path)
    if cloud is None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No checkpoint file at {path!r}.")
        return torch.load(path, map_location=map_location, weights_only=True)
    bucket, key = cloud.parse_uri(path)
    with tempfile.TemporaryDirectory() as tmp_dir:
        local_path = os.path.join(tmp_dir, os.path.basename(key) or "checkpoint.pt")
        cloud.download_file(bucket, key, local_path)
        return torch.load(local_path, map_location=map_location, weights_only=True)


def _to_device(loss, device: torch.device):
    if isinstance(loss, MultiLoss):
        return loss.map_values(lambda value: value.to(device))
    return loss.to(device)


def _pending_grads(module) -> Optional[list]:
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
