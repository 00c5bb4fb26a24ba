"""Which checkpoints are kept, and which is the newest."""
import json
import os

import pytest

from aitoolbox.experiment.checkpoint_registry import (
    CheckpointRegistry, checkpoint_file_name, find_latest_checkpoint, lower_is_better, newest_entry)


def entry(kind, total, value=None, epoch=0):
    return {"file": checkpoint_file_name(kind, epoch, total), "kind": kind, "total_iteration": total,
            "metric_value": value}


def test_file_names():
    assert checkpoint_file_name("epoch", 3, 30) == "model_epoch_3.pt"
    assert checkpoint_file_name("iteration", 1, 17) == "model_iteration_17.pt"
    assert checkpoint_file_name("crash", 1, 17) == "model_crash_iteration_17.pt"
    with pytest.raises(ValueError, match="kind"):
        checkpoint_file_name("other", 1, 1)


@pytest.mark.parametrize("name, lower", [("loss", True), ("val_loss", True), ("val_mse", True),
                                         ("val_accuracy", False), ("f1", False)])
def test_direction(name, lower):
    assert lower_is_better(name) is lower


def test_newest_orders_by_batches_then_kind():
    entries = [entry("iteration", 12), entry("epoch", 12, epoch=2), entry("iteration", 10)]
    assert newest_entry(entries)["file"] == "model_epoch_2.pt"
    entries.append(entry("crash", 12))
    assert newest_entry(entries)["kind"] == "crash"


def test_suboptimal_keeps_best_newest_and_crash():
    registry = CheckpointRegistry("val_accuracy", num_best=2)
    for total, value in [(6, 0.5), (12, 0.9), (18, 0.7), (24, 0.6)]:
        registry.add(entry("epoch", total, value, epoch=total // 6))
    registry.add(entry("iteration", 20))
    registry.add(entry("iteration", 22))
    registry.add(entry("crash", 23))
    drop = {e["file"] for e in registry.suboptimal()}
    # best two: epochs 2 and 3; epoch 4 is the newest; only the newest iteration checkpoint stays
    assert drop == {"model_epoch_1.pt", "model_iteration_20.pt"}
    assert CheckpointRegistry(None).suboptimal() == []


def test_find_latest_uses_manifest_and_skips_missing_files(tmp_path):
    for name in ("model_epoch_1.pt", "model_iteration_8.pt"):
        (tmp_path / name).write_bytes(b"x")
    manifest = {"checkpoints": [entry("epoch", 6, epoch=1), entry("iteration", 8), entry("iteration", 10)]}
    (tmp_path / "checkpoints.json").write_text(json.dumps(manifest))
    assert find_latest_checkpoint(str(tmp_path)) == os.path.join(str(tmp_path), "model_iteration_8.pt")
    os.remove(tmp_path / "checkpoints.json")
    os.utime(tmp_path / "model_epoch_1.pt", (2e9, 2e9))
    assert find_latest_checkpoint(str(tmp_path)).endswith("model_epoch_1.pt")
    assert find_latest_checkpoint(str(tmp_path / "empty")) is None
