"""Scenario 4: prediction over 20,000 samples - time, peak memory, and the cached second call.

Peak memory: tracemalloc does not see torch's allocations and torch has no CPU allocator
statistics, so each arm runs in a fresh process with glibc's mmap threshold pinned to 64 KiB
(:data:`ENV`: every tensor buffer is its own mapping, unmapped when freed), resets
the kernel's RSS high-water mark (``/proc/self/clear_refs``) right before predicting and reads
``VmHWM`` right after. *Extra* memory is that peak minus the RSS before the call minus the bytes
of the returned predictions and targets, i.e. everything the call held beyond its result.
"""
from __future__ import annotations

from bench import common

BASE = dict(sizes=[784, 1024, 1000], batch_size=250, num_samples=20_000)

#: glibc's mmap threshold pinned at 64 KiB for this scenario only: every buffer above it is a
#: mapping of its own, returned to the OS when freed, so the RSS high-water mark follows the peak
#: of live tensor memory instead of whatever the heap kept. (Pinning it also fixes the heap's trim
#: threshold, which changes the cost of small allocations: the training scenarios run with the
#: allocator's defaults, as users do.)
ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def params(quick: bool) -> dict:
    """The workload; ``quick`` shrinks it to a smoke run."""
    out = dict(BASE)
    if quick:
        out.update(num_samples=2_000)
    return out


def setup(p: dict):
    """``(model, val_loader)`` after a warm-up; the model in eval mode is the caller's business."""
    common.limit_threads()
    common.warm_up(p["sizes"], p["batch_size"], steps=3)
    model = common.mlp(p["sizes"])
    data = common.dataset(p["num_samples"], p["sizes"][0], p["sizes"][-1], seed=common.SEED + 7)
    return model, common.loader(data, p["batch_size"], shuffle=False)


def nbytes(*tensors) -> int:
    """Bytes of the tensors' elements."""
    return sum(t.numel() * t.element_size() for t in tensors)


def measured(fn):
    """Run ``fn()`` and return ``(its result, its Timer, peak RSS growth in bytes)``."""
    rss_before, _ = common.rss_kib()
    peak_ok = common.reset_rss_peak()
    with common.Timer() as timer:
        out = fn()
    _, peak = common.rss_kib()
    return out, timer, (peak - rss_before) * 1024 if peak_ok else None


def report(timer, growth, y_pred, y_true) -> dict:
    """The fields every prediction arm reports."""
    out_bytes = nbytes(y_pred, y_true)
    extra = None if growth is None else growth - out_bytes
    return {**timer.times(), "output_bytes": out_bytes, "pred_bytes": nbytes(y_pred),
            "extra_bytes": extra, "extra_copies": None if extra is None else extra / nbytes(y_pred),
            "rows": int(y_pred.shape[0])}


def hand_predict(model, val_loader):
    """The reference: eval mode, inference mode, a list of batch outputs, one ``torch.cat``."""
    import torch
    model.eval()
    preds, targets = [], []
    with torch.inference_mode():
        for x, y in val_loader:
            preds.append(model(x))
            targets.append(y)
    return torch.cat(preds), torch.cat(targets)


def arm_hand(p: dict) -> dict:
    """Hand-written prediction loop."""
    model, val = setup(p)
    (y_pred, y_true), timer, growth = measured(lambda: hand_predict(model, val))
    return report(timer, growth, y_pred, y_true)


def arm_aitoolbox(p: dict) -> dict:
    """``predict_on_validation_set()``, then the cached second call."""
    import torch
    from aitoolbox import TrainLoop
    model, val = setup(p)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loop = TrainLoop(model, val, val, None, opt, torch.nn.CrossEntropyLoss())
    (y_pred, y_true, _), timer, growth = measured(loop.predict_on_validation_set)
    with common.Timer() as cached:
        again = loop.predict_on_validation_set()
    out = report(timer, growth, y_pred, y_true)
    out.update(cached_seconds=cached.seconds, cached_is_same=again[0] is y_pred)
    return out
