"""The peers on the training workloads of scenarios 1 and 2 (``run.py --peers``).

Each arm trains the same model on the same data as ``train.arm_hand``, bracketed by hand-written
runs in the same process (``train.paired``), configured as lean as the
peer allows (no progress bar, logger, checkpointing or evaluation; data loading in the main
process), except ``lightning_defaults``, which keeps Lightning's ``Trainer`` defaults. The peers
are not dependencies of aitoolbox; install them into a separate virtualenv (docs/performance.md).
"""
from __future__ import annotations

import tempfile

from bench.scenarios import train

#: arm -> the module that must be importable for it
REQUIRES = {"ignite": "ignite", "accelerate": "accelerate",
            "pytorch_accelerated": "pytorch_accelerated", "lightning": "lightning",
            "lightning_defaults": "lightning"}


def ignite_run(model, loader, opt, crit, p: dict) -> None:
    """``ignite.engine.create_supervised_trainer(...).run``."""
    from ignite.engine import create_supervised_trainer
    create_supervised_trainer(model, opt, crit, device="cpu").run(loader, max_epochs=p["num_epochs"])


def accelerate_run(model, loader, opt, crit, p: dict) -> None:
    """A loop over ``Accelerator.prepare``-d objects with ``accelerator.backward``."""
    from accelerate import Accelerator
    accelerator = Accelerator(cpu=True)
    net, optim, data = accelerator.prepare(model, opt, loader)
    net.train()
    for _ in range(p["num_epochs"]):
        for x, y in data:
            optim.zero_grad(set_to_none=True)
            accelerator.backward(crit(net(x), y))
            optim.step()


def pytorch_accelerated_run(model, loader, opt, crit, p: dict) -> None:
    """``pytorch_accelerated.Trainer.train`` with only the move-to-device callback."""
    from pytorch_accelerated import Trainer
    from pytorch_accelerated.callbacks import MoveModulesToDeviceCallback
    trainer = Trainer(model=model, loss_func=crit, optimizer=opt, callbacks=(MoveModulesToDeviceCallback,))
    trainer.train(train_dataset=loader.dataset, num_epochs=p["num_epochs"],
                  per_device_batch_size=p["batch_size"],
                  train_dataloader_kwargs={"num_workers": 0, "shuffle": True, "generator": loader.generator})


def _lightning_module(model, opt, crit):
    """Wrap the model, optimizer and criterion in a minimal ``LightningModule``."""
    import lightning

    class Wrapped(lightning.LightningModule):
        """``training_step`` returns the loss; the optimizer is the one built outside."""

        def __init__(self):
            super().__init__()
            self.net = model

        def training_step(self, batch, batch_idx):
            x, y = batch
            return crit(self.net(x), y)

        def configure_optimizers(self):
            return opt

    return Wrapped()


def _lightning_fit(model, loader, opt, crit, p: dict, lean: bool) -> None:
    import lightning
    lean_args = dict(enable_progress_bar=False, enable_model_summary=False, logger=False,
                     enable_checkpointing=False) if lean else {}
    with tempfile.TemporaryDirectory() as root:
        trainer = lightning.Trainer(accelerator="cpu", devices=1, max_epochs=p["num_epochs"],
                                    default_root_dir=root, **lean_args)
        trainer.fit(_lightning_module(model, opt, crit), loader)


def lightning_run(model, loader, opt, crit, p: dict) -> None:
    """``lightning.Trainer.fit``, lean: no progress bar, summary, logger or checkpointing."""
    _lightning_fit(model, loader, opt, crit, p, lean=True)


def lightning_defaults_run(model, loader, opt, crit, p: dict) -> None:
    """``lightning.Trainer.fit`` with its defaults (progress bar, logger, checkpoint)."""
    _lightning_fit(model, loader, opt, crit, p, lean=False)


def arm_ignite(p: dict) -> dict:
    """ignite against the hand-written loop."""
    return train.paired(p, ignite_run, ["ignite.engine"])


def arm_accelerate(p: dict) -> dict:
    """accelerate against the hand-written loop."""
    return train.paired(p, accelerate_run, ["accelerate"])


def arm_pytorch_accelerated(p: dict) -> dict:
    """pytorch-accelerated against the hand-written loop."""
    return train.paired(p, pytorch_accelerated_run, ["pytorch_accelerated", "pytorch_accelerated.callbacks"])


def arm_lightning(p: dict) -> dict:
    """Lean Lightning against the hand-written loop."""
    return train.paired(p, lightning_run, ["lightning"])


def arm_lightning_defaults(p: dict) -> dict:
    """Lightning with its defaults against the hand-written loop."""
    return train.paired(p, lightning_defaults_run, ["lightning"])
