"""``gpu_mode='fsdp'`` (FSDP2, ``fully_shard``) on the CPU with gloo and 2 processes (issue 11)."""
import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import ddp_helpers as helpers
import fsdp_helpers
from aitoolbox import MultiOptimizer, TrainLoop
from aitoolbox.torchtrain.callbacks.gradient import GradNormClip, GradValueClip
from aitoolbox.torchtrain.schedulers.basic import StepLRScheduler

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "torchtrain", "ddp_scripts", "train_fsdp_script.py")
CPU = dict(num_gpus=2, on_gpu=False, backend="gloo", timeout=60)
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def no_launcher_env(monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def adam_loop(gpu_mode, batch_size, **loop_kwargs):
    model = helpers.RegressionNet()
    loop = TrainLoop(model, DataLoader(helpers.train_set(), batch_size=batch_size),
                     DataLoader(helpers.validation_set(101), batch_size=10), None,
                     torch.optim.Adam(model.parameters(), lr=0.01), nn.MSELoss(), gpu_mode=gpu_mode,
                     show_progress=False, **loop_kwargs)
    return model, loop


def weights(state):
    return {k: v.detach().cpu() for k, v in state.items()}


@pytest.mark.timeout(150)
def test_parity_with_ddp_and_one_process_sharding_and_exact_evaluation(tmp_path):
    callbacks = lambda: [StepLRScheduler(step_size=1, gamma=0.5)]  # noqa: E731
    ref_model, ref_loop = adam_loop("single", 16)
    ref_loop.fit(num_epochs=2, callbacks=callbacks())
    ddp_model, ddp_loop = adam_loop("ddp", 8)
    ddp_loop.fit(num_epochs=2, callbacks=callbacks(), **CPU)
    model, loop = adam_loop("fsdp", 8)
    returned = loop.fit(num_epochs=2, callbacks=callbacks() + [helpers.RecordEvaluation(str(tmp_path)),
                                                             fsdp_helpers.RecordShards(str(tmp_path))], **CPU)

    # Bit-exact with DDP at world size 2; one process with the doubled batch within 1e-5.
    assert returned is model
    for key, value in ddp_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert dict(loop.train_history) == dict(ddp_loop.train_history)
    assert helpers.max_weight_diff(model, ref_model) < 1e-5
    for key in ("loss", "accumulated_loss", "val_loss"):
        assert loop.train_history[key] == pytest.approx(ref_loop.train_history[key], rel=1e-6), key
    # The parent got the full optimizer and scheduler state back.
    assert loop.optimizer.param_groups[0]["lr"] == pytest.approx(0.0025)
    assert set(loop.optimizer.state_dict()["state"]) == set(range(4))

    # Every parameter was a DTensor holding about half of its elements on each rank.
    records = helpers.load_rank_files(str(tmp_path), "shards")
    for name, (kind, _, full, shape) in records[0]["shards"].items():
        local = [record["shards"][name][1] for record in records]
        assert kind == "DTensor" and sum(local) == full, name
        assert max(local) == -(-shape[0] // 2) * (full // shape[0]), name  # rows split in two (dim 0)
    assert records[0]["shards"]["body.0.weight"][1] == 16  # of 32
    for record in records:
        assert record["forward"]["weight_dtype"] == torch.float32 and record["forward"]["autocast"] is False

    # Exact evaluation with uneven shards (51 / 50 samples): 101 predictions in order, the one-process loss.
    ref_pred, ref_true, _ = ref_loop.predict_on_validation_set()
    ref_val_loss = float(ref_loop.evaluate_loss_on_validation_set())
    for rank, result in enumerate(helpers.load_rank_files(str(tmp_path), "eval")):
        assert len(result["y_pred"]) == 101 and torch.equal(result["y_true"], ref_true), rank
        torch.testing.assert_close(result["y_pred"], ref_pred, atol=1e-5, rtol=1e-5)
        assert result["val_loss"] == pytest.approx(ref_val_loss, rel=1e-6)
        assert result["cache_hit"]


@pytest.mark.timeout(150)
def test_grad_accumulation_reduces_only_on_stepping_batches_and_clips_the_global_norm(tmp_path):
    data = helpers.train_set(80)  # 5 batches of 8 per rank: windows 2, 2, 1
    ref_model = helpers.RegressionNet()
    ref_loop = helpers.make_loop(ref_model, batch_size=16, train_data=data)
    ref_loop.fit(num_epochs=2, grad_accumulation=2, callbacks=[GradValueClip(0.4), GradNormClip(0.5)])
    model = helpers.RegressionNet()
    loop = helpers.make_loop(model, batch_size=8, gpu_mode="fsdp", train_data=data)
    # Every Linear a unit, gathered parameters kept for the backward, activations recomputed.
    fsdp_args = {"wrap": {nn.Linear}, "reshard_after_forward": False, "activation_checkpointing": True}
    loop.fit(num_epochs=2, grad_accumulation=2, callbacks=[GradValueClip(0.4), GradNormClip(0.5),
                                                           fsdp_helpers.CountReduceScatters(str(tmp_path)),
                                                           fsdp_helpers.CountTrainingForwards(str(tmp_path))],
             fsdp_args=fsdp_args, **CPU)

    assert helpers.max_weight_diff(model, ref_model) < 1e-5  # the norm over the whole model, not per shard
    assert loop.num_optimizer_steps == ref_loop.num_optimizer_steps == 6
    for calls in helpers.load_rank_files(str(tmp_path), "reduce_scatter"):
        assert calls == [(epoch, it) for epoch in range(2) for it in (1, 3, 4)]
    # Activation checkpointing: each of the 10 training batches ran the unit's forward twice.
    assert helpers.load_rank_files(str(tmp_path), "forwards") == [20, 20]


@pytest.mark.timeout(150)
def test_multiloss_multioptimizer_bfloat16_and_early_stop_from_one_rank(tmp_path):
    def run(gpu_mode, batch_size, **fit_kwargs):
        model = helpers.TwoHeadNet()
        optimizer = MultiOptimizer([torch.optim.SGD(list(model.trunk.parameters()) + list(model.head_a.parameters()),
                                                    lr=0.05),
                                    torch.optim.SGD(model.head_b.parameters(), lr=0.05)])
        loop = TrainLoop(model, DataLoader(helpers.train_set(), batch_size=batch_size), None, None, optimizer,
                         nn.MSELoss(), gpu_mode=gpu_mode, use_amp=True, show_progress=False)
        loop.fit(num_epochs=2, **fit_kwargs)
        return model, loop

    model, loop = run("fsdp", 8, callbacks=[fsdp_helpers.RecordShards(str(tmp_path)),
                                            helpers.StopOnRank(rank=1, iteration=2)], **CPU)
    # Stopped on every rank after rank 1's third batch; bfloat16 parameters in the forward, float32 master weights.
    assert (loop.epoch, loop.total_iteration_idx) == (1, 3)
    for record in helpers.load_rank_files(str(tmp_path), "shards"):
        assert record["forward"] == {"weight_dtype": torch.bfloat16, "output_dtype": torch.bfloat16,
                                     "autocast": torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert [len(opt.state_dict()["param_groups"][0]["params"]) for opt in loop.optimizer] == [4, 2]
    assert helpers.max_weight_diff(model, bfloat16_reference(num_iterations=3)) < 2e-2


def bfloat16_reference(num_iterations):
    """The one-process bfloat16 run stopped after the same number of batches."""
    model = helpers.TwoHeadNet()
    optimizer = MultiOptimizer([torch.optim.SGD(list(model.trunk.parameters()) + list(model.head_a.parameters()),
                                                lr=0.05),
                                torch.optim.SGD(model.head_b.parameters(), lr=0.05)])
    TrainLoop(model, DataLoader(helpers.train_set(), batch_size=16), None, None, optimizer, nn.MSELoss(),
              use_amp=True, show_progress=False).fit(num_iterations=num_iterations)
    return model


@pytest.mark.timeout(240)
def test_sharded_checkpoints_resume_exactly_reshard_to_three_ranks_and_final_model_loads(tmp_path):
    from aitoolbox.torchtrain.train_loop import TrainLoopCheckpointEndSave
    from tests.tracking.helpers import loop_args

    def tracking_loop(root):
        return TrainLoopCheckpointEndSave(*loop_args(), "proj", "exp", str(root), {"lr": 0.01},
                                          cloud_save_mode=None, show_progress=False, gpu_mode="fsdp")

    loop = tracking_loop(tmp_path / "a")
    loop.fit(num_epochs=2, **CPU)
    exp = loop.experiment_dir
    first = os.path.join(exp, "checkpoint_model", "model_epoch_1.pt")
    assert os.path.isdir(first) and os.path.isfile(os.path.join(first, "loop_state.pt"))
    assert not [name for name in os.listdir(os.path.dirname(first)) if name.endswith((".partial", ".old"))]
    from aitoolbox.experiment.checkpoint_registry import find_latest_checkpoint
    assert find_latest_checkpoint(os.path.dirname(first)) == os.path.join(os.path.dirname(first), "model_epoch_2.pt")
    # The final model: full tensors, loadable into a plain module.
    final = torch.load(os.path.join(exp, "model", "model.pt"), weights_only=True)
    plain = loop_args()[0]
    plain.load_state_dict(final["model_state_dict"])
    for key, value in loop.model.state_dict().items():
        assert torch.equal(plain.state_dict()[key], value), key

    # Resume from the epoch-1 shards in 2 ranks: the same weights as the uninterrupted run.
    resumed = TrainLoop(*loop_args(), gpu_mode="fsdp", show_progress=False)
    resumed.load_checkpoint(first)
    assert resumed.epoch == 1
    resumed.fit(num_epochs=2, **CPU)
    for key, value in loop.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert resumed.train_history["loss"] == loop.train_history["loss"]

    # A checkpoint written by 2 ranks loads into 3: every rank starts from the saved weights.
    three = TrainLoop(*loop_args(), gpu_mode="fsdp", show_progress=False).load_checkpoint(first)
    saved = {k: v.clone() for k, v in three.model.state_dict().items()}
    three.fit(num_epochs=2, callbacks=[fsdp_helpers.RecordStartWeights(str(tmp_path))],
              **{**CPU, "num_gpus": 3})
    assert three.epoch == 2
    for record in helpers.load_rank_files(str(tmp_path), "start", world_size=3):
        assert record["world_size"] == 3
        for key, value in saved.items():
            assert torch.equal(record["state"][key], value), key


@pytest.mark.timeout(200)
def test_resume_on_a_new_machine_downloads_sharded_checkpoints_from_the_bucket(s3_bucket, tmp_path, caplog):
    """resume=True with an empty local folder: the newest complete sharded folder comes from the bucket."""
    import logging

    from aitoolbox.cloud.AWS.s3 import get_s3_client
    from aitoolbox.torchtrain.train_loop import TrainLoopCheckpoint
    from tests.tracking.helpers import loop_args

    def tracking_loop(root, **kwargs):
        return TrainLoopCheckpoint(*loop_args(), "proj", "exp", str(root), {"lr": 0.01}, bucket_name=s3_bucket,
                                   cloud_dir_prefix="runs", show_progress=False, gpu_mode="fsdp", **kwargs)

    first = tracking_loop(tmp_path / "machine_a")
    first.fit(num_epochs=3, **CPU)
    run = os.path.basename(first.experiment_dir)
    client = get_s3_client()
    folder_key = f"runs/proj/{run}/checkpoint_model"
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=s3_bucket, Prefix=folder_key)["Contents"]]
    shards = sorted(k for k in keys if k.startswith(f"{folder_key}/model_epoch_3.pt/") and k.endswith(".distcp"))
    assert len(shards) == 2, keys  # one shard file per rank
    client.delete_object(Bucket=s3_bucket, Key=shards[1])  # the newest one's upload was cut short

    with caplog.at_level(logging.INFO, logger="aitoolbox"):
        resumed = tracking_loop(tmp_path / "machine_b", resume=True)
    assert os.path.basename(resumed.experiment_dir) == run
    expected = os.path.join(resumed.experiment_dir, "checkpoint_model", "model_epoch_2.pt")
    assert resumed.resumed_from == expected and os.path.isdir(expected)
    assert resumed.epoch == 2
    assert any("model_epoch_3.pt" in r.getMessage() and "shard files" in r.getMessage() for r in caplog.records)
    assert not os.path.exists(os.path.join(resumed.experiment_dir, "checkpoint_model", "model_epoch_3.pt"))
    resumed.fit(num_epochs=3, **CPU)
    for key, value in first.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert resumed.train_history["loss"] == first.train_history["loss"]


@pytest.mark.timeout(150)
def test_keep_best_removes_sharded_checkpoint_folders(tmp_path):
    import json

    from aitoolbox.torchtrain.train_loop import TrainLoopCheckpoint
    from tests.tracking.helpers import loop_args

    loop = TrainLoopCheckpoint(*loop_args(), "proj", "exp", str(tmp_path), {"lr": 0.01}, cloud_save_mode=None,
                               rm_subopt_local_models=True, num_best_checkpoints_kept=1, show_progress=False,
                               gpu_mode="fsdp")
    loop.fit(num_epochs=3, **CPU)
    folder = os.path.join(loop.experiment_dir, "checkpoint_model")
    best = min(range(3), key=lambda idx: loop.train_history["loss"][idx]) + 1
    expected = {f"model_epoch_{epoch}.pt" for epoch in (best, 3)}  # the best one and the newest
    assert {name for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name))} == expected
    with open(os.path.join(folder, "checkpoints.json")) as fh:
        assert {entry["file"] for entry in json.load(fh)["checkpoints"]} == expected


@pytest.mark.timeout(150)
def test_torchrun_runs_fsdp_in_place_and_fits_again(tmp_path):
    ref_model, ref_loop = adam_loop("single", 16)
    ref_loop.fit(num_epochs=2)
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    env["PYTHONPATH"] = ROOT
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", SCRIPT,
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert (result["rank"], result["world_size"], result["sharded"]) == (rank, 2, True)
        for key, value in ref_model.state_dict().items():
            assert (result["state"][key] - value).abs().max() < 1e-5, key
        assert result["history"]["val_loss"] == pytest.approx(ref_loop.train_history["val_loss"], rel=1e-6)


@pytest.mark.timeout(150)
def test_torch_compile_in_the_ranks():
    ref_model = helpers.RegressionNet()
    helpers.make_loop(ref_model, batch_size=16).fit(num_epochs=1)
    model = helpers.RegressionNet()
    loop = helpers.make_loop(model, batch_size=8, gpu_mode="fsdp", torch_compile={"backend": "eager"})
    loop.fit(num_epochs=1, callbacks=[helpers.RecordCompiledFrames()], **CPU)
    assert loop.train_history["compiled_frames"][0] >= 1
    assert helpers.max_weight_diff(model, ref_model) < 1e-5


@pytest.mark.timeout(120)
def test_evaluation_by_a_rank_pinned_callback_is_a_clear_error(tmp_path):
    loop = helpers.make_loop(helpers.RegressionNet(), batch_size=8, gpu_mode="fsdp")
    start = time.monotonic()
    with pytest.raises(Exception, match="one rank cannot evaluate alone"):
        loop.fit(num_epochs=1, callbacks=[helpers.PinnedEvaluation(str(tmp_path))], **CPU)
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("kwargs, error, match", [
    ({"fsdp_args": {"shard": True}}, ValueError, r"unknown key\(s\) \['shard'\]"),
    ({"fsdp_args": {"wrap": {nn.Conv2d}}}, ValueError, "matches no submodule"),
    ({"fsdp_args": {"wrap": 10_000}}, ValueError, "matches no submodule"),
    ({"fsdp_args": {"wrap": "Linear"}}, TypeError, "set of nn.Module classes"),
    ({"fsdp_args": {"reshard_after_forward": 1}}, TypeError, "True or False"),
    ({"fsdp_args": {"cpu_offload": True}}, ValueError, "drop cpu_offload"),
    ({"fsdp_args": ["wrap"]}, TypeError, "fsdp_args must be a dict"),
    ({"dp_model_args": {"device_ids": [0]}}, TypeError, "not \\(Distributed\\)DataParallel"),
    ({"ddp_model_args": {}}, TypeError, "fsdp_args"),
    ({"num_gpus": 0}, ValueError, "num_gpus must be an int >= 1"),
    ({"on_gpu": True}, ValueError, "gpu_mode='fsdp' with on_gpu=True needs CUDA GPUs"),
])
def test_bad_fsdp_arguments_fail_before_any_work(kwargs, error, match):
    if kwargs.get("on_gpu") and torch.cuda.is_available():
        pytest.skip("on_gpu=True is valid where CUDA exists")
    model = helpers.RegressionNet()
    loop = helpers.make_loop(model, batch_size=8, gpu_mode="fsdp")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        loop.fit(num_epochs=1, **{**CPU, **kwargs})
    assert loop.epoch == 0 and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_wrap_policies_pick_units():
    from aitoolbox.torchtrain.train_loop.strategies.config import fsdp_units

    model = nn.Sequential(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8)), nn.ReLU(), nn.Linear(8, 1))
    assert fsdp_units(model, None) == [model[0], model[2]]  # children with parameters
    assert fsdp_units(model, frozenset({nn.Linear})) == [model[0][0], model[0][2], model[2]]
    assert fsdp_units(model, 60) == [model[0][2]]  # 72 parameters; the rest of the block has 40
    assert fsdp_units(model, 30) == [model[0][0], model[0][2]]  # 40 and 72; nothing left in the block


@needs_gpu
@pytest.mark.timeout(300)
def test_nccl_fsdp_float16_with_grad_scaler_matches_ddp():
    world = min(torch.cuda.device_count(), 2)

    def run(gpu_mode):
        model, loop = adam_loop(gpu_mode, 8, use_amp=True)
        loop.fit(num_epochs=1, num_gpus=world, backend="nccl", timeout=120)
        return model, loop

    ddp_model, ddp_loop = run("ddp")
    model, loop = run("fsdp")
    assert helpers.max_weight_diff(model, ddp_model) < 5e-2
    assert loop.amp_scaler is not None
