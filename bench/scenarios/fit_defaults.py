"""Scenario 3: a full ``fit`` with the defaults, and what the end-of-epoch evaluation costs.

``TrainLoop``'s defaults evaluate the loss on the training and the validation set after every
epoch (``end_auto_eval=True``) and show a progress bar. The fair reference is therefore the
hand-written loop followed, every epoch, by one plain ``torch.inference_mode()`` forward pass over
each evaluated set. Like scenarios 1-2, each process runs that reference, the arm, and the
reference again, and the arm is compared with the mean of its brackets (``hand`` against itself
is the noise floor). The ``*_eval`` arms time the evaluation alone, on the same data.
"""
from __future__ import annotations

from bench import common

BASE = dict(sizes=[784, 1024, 1024, 10], batch_size=128, num_train=12_800, num_val=3_200, num_epochs=2)


def params(quick: bool) -> dict:
    """The workload; ``quick`` shrinks it to a smoke run."""
    out = dict(BASE)
    if quick:
        out.update(num_train=128 * 8, num_val=128 * 2, num_epochs=1)
    return out


def build(p: dict):
    """``(model, train_loader, val_loader, optimizer, criterion)``: identical on every call."""
    import torch
    model = common.mlp(p["sizes"])
    n_in, n_out = p["sizes"][0], p["sizes"][-1]
    train = common.loader(common.dataset(p["num_train"], n_in, n_out), p["batch_size"], shuffle=True)
    val = common.loader(common.dataset(p["num_val"], n_in, n_out, seed=common.SEED + 7),
                        p["batch_size"], shuffle=False)
    return model, train, val, common.sgd(model), torch.nn.CrossEntropyLoss()


def setup(p: dict):
    """:func:`build` after limiting threads and a warm-up."""
    common.limit_threads()
    common.warm_up(p["sizes"], p["batch_size"])
    return build(p)


def hand_fit(model, train, val, opt, crit, p: dict) -> None:
    """Hand-written training plus, per epoch, one inference-mode pass over train and validation."""
    for _ in range(p["num_epochs"]):
        common.hand_train(model, train, opt, crit, 1)
        common.hand_eval_loss(model, train, crit)
        common.hand_eval_loss(model, val, crit)


def aitoolbox_fit(model, train, val, opt, crit, p: dict) -> None:
    """``TrainLoop`` with every default: end-of-epoch evaluation and the progress bar on."""
    from aitoolbox import TrainLoop
    TrainLoop(model, train, val, None, opt, crit).fit(num_epochs=p["num_epochs"])


def _paired(p: dict, run, imports=()) -> dict:
    """``run`` bracketed by two :func:`hand_fit` runs in one process (:func:`bench.common.paired`)."""
    return common.paired(lambda: build(p), lambda *b: hand_fit(*b, p), lambda *b: run(*b, p),
                         lambda: hand_fit(*setup(p), {**p, "num_epochs": 1}), imports)


def arm_hand(p: dict) -> dict:
    """The hand-written fit against itself: the noise floor of the paired measurement."""
    return _paired(p, hand_fit)


def arm_aitoolbox(p: dict) -> dict:
    """``TrainLoop``'s default fit against the hand-written fit + evaluation passes."""
    return _paired(p, aitoolbox_fit, ["aitoolbox"])


def hand_eval(model, train, val, opt, crit) -> None:
    """Only the evaluation: one inference-mode pass over the training and the validation set."""
    common.hand_eval_loss(model, train, crit)
    common.hand_eval_loss(model, val, crit)


def aitoolbox_eval(model, train, val, opt, crit) -> None:
    """Only the evaluation, as ``auto_execute_end_of_epoch`` runs it (uncached)."""
    from aitoolbox import TrainLoop
    loop = TrainLoop(model, train, val, None, opt, crit)
    loop.evaluate_loss_on_train_set(force_prediction=True)
    loop.evaluate_loss_on_validation_set(force_prediction=True)


def _paired_eval(p: dict, run, imports=()) -> dict:
    """``run`` bracketed by two :func:`hand_eval` runs in one process."""
    return common.paired(lambda: build(p), hand_eval, run, lambda: hand_eval(*setup(p)), imports)


def arm_hand_eval(p: dict) -> dict:
    """The evaluation passes against themselves: the noise floor."""
    return _paired_eval(p, hand_eval)


def arm_aitoolbox_eval(p: dict) -> dict:
    """``TrainLoop``'s end-of-epoch evaluation against plain inference-mode passes."""
    return _paired_eval(p, aitoolbox_eval, ["aitoolbox"])
