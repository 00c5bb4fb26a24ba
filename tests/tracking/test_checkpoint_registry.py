"""Which checkpoints are kept, and which is the newest."""
import json
import os

import pytest
import torch

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


def _fake_checkpoint(path, total, crash=None):
    state = {"format_version": 1, "total_iteration_idx": total, "weights": torch.zeros(3)}
    if crash is not None:
        state["crash"] = {"exception": "RuntimeError: x", "exact_resume": crash}
    torch.save(state, path)


def test_find_latest_trusts_the_files_not_the_manifest(tmp_path):
    _fake_checkpoint(tmp_path / "model_epoch_1.pt", 6)
    _fake_checkpoint(tmp_path / "model_iteration_8.pt", 8)
    # the manifest names a file a killed run deleted (10) and misreports another's progress
    manifest = {"checkpoints": [entry("epoch", 60, epoch=1), entry("iteration", 8), entry("iteration", 10)]}
    (tmp_path / "checkpoints.json").write_text(json.dumps(manifest))
    assert find_latest_checkpoint(str(tmp_path)) == os.path.join(str(tmp_path), "model_iteration_8.pt")
    os.remove(tmp_path / "checkpoints.json")
    assert find_latest_checkpoint(str(tmp_path)).endswith("model_iteration_8.pt")
    assert find_latest_checkpoint(str(tmp_path / "empty")) is None


def test_find_latest_skips_truncated_and_inexact_and_accepts_an_experiment_folder(tmp_path, caplog):
    folder = tmp_path / "exp_2024-01-01_00-00-00" / "checkpoint_model"
    folder.mkdir(parents=True)
    _fake_checkpoint(folder / "model_iteration_8.pt", 8)
    _fake_checkpoint(folder / "model_crash_iteration_9.pt", 9, crash=False)  # taken mid-update
    _fake_checkpoint(folder / "model_iteration_12.pt", 12)
    data = (folder / "model_iteration_12.pt").read_bytes()
    (folder / "model_iteration_12.pt").write_bytes(data[: len(data) // 2])  # a truncated newest file
    (folder / "model_iteration_16.pt").write_bytes(b"")  # an empty one
    with caplog.at_level("WARNING", logger="aitoolbox"):
        newest = find_latest_checkpoint(str(folder.parent))  # the experiment folder
    assert newest == str(folder / "model_iteration_8.pt")
    assert "model_iteration_12.pt" in caplog.text and "model_iteration_16.pt" in caplog.text
    assert "model_crash_iteration_9.pt was taken mid-update" in caplog.text
    _fake_checkpoint(folder / "model_crash_iteration_10.pt", 10, crash=True)  # an exact crash checkpoint wins
    assert find_latest_checkpoint(str(folder)) == str(folder / "model_crash_iteration_10.pt")


def test_find_latest_tolerates_a_malformed_manifest_and_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _fake_checkpoint(tmp_path / "model_epoch_1.pt", 6)
    for content in ("{not json", "[1, 2]", json.dumps({"checkpoints": [{"file": 3}, "x"]})):
        (tmp_path / "checkpoints.json").write_text(content)
        assert find_latest_checkpoint("~") == str(tmp_path / "model_epoch_1.pt")


def test_remove_stale_temporaries_removes_only_atomic_write_leftovers(tmp_path):
    from aitoolbox.experiment.checkpoint_registry import remove_stale_temporaries

    for name in (".model_epoch_1.pt.abc123.tmp", "model_epoch_1.pt", "notes.tmp", ".hidden"):
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [str(tmp_path / ".model_epoch_1.pt.abc123.tmp")]
    assert sorted(os.listdir(tmp_path)) == [".hidden", "model_epoch_1.pt", "notes.tmp"]