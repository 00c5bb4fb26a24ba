"""``gpu_mode='ddp'`` on the CPU with gloo and 2 processes (SPEC 4.6), plus GPU tests that need CUDA."""
import contextlib
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

import ddp_helpers as helpers
from aitoolbox import MultiOptimizer, TrainLoop
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.schedulers.basic import StepLRScheduler

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "torchtrain", "ddp_scripts", "train_ddp_script.py")
CPU_DDP = dict(num_gpus=2, on_gpu=False, backend="gloo")
needs_two_gpus = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                    reason="needs 2 CUDA GPUs")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def reference(batch_size=16, grad_accumulation=1, num_epochs=2, train_data=None, val_data=None):
    """The same training in one process with the batch of both ranks together."""
    model = helpers.RegressionNet()
    loop = helpers.make_loop(model, batch_size, train_data=train_data, val_data=val_data)
    loop.fit(num_epochs=num_epochs, grad_accumulation=grad_accumulation)
    return model, loop


@pytest.fixture(scope="module")
def ref():
    return reference()


@pytest.fixture
def busy_default_ports():
    """Hold 8888 and 29500 (the ports other tools hard-code) for the duration of a test."""
    with contextlib.ExitStack() as stack:
        for port in (8888, 29500):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen()
            except OSError:
                pass  # already taken by something else: busy either way
        yield


@pytest.fixture
def no_master_env(monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def _subprocess_env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = ROOT
    return env


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RecordGcState(AbstractCallback):
    """At the end of training every rank records what its garbage collector keeps frozen."""

    def __init__(self, out_dir):
        super().__init__("record gc state")
        self.out_dir = out_dir

    def on_train_end(self):
        import gc
        loop = self.train_loop_obj
        collectable = {id(obj) for obj in gc.get_objects()}  # the frozen objects are not listed
        helpers.save_rank_file(self.out_dir, "gc", loop, {
            "freeze_count": gc.get_freeze_count(), "torch_frozen": id(torch) not in collectable,
            "loop_collectable": id(loop) in collectable, "model_collectable": id(loop.model) in collectable})


def _assert_history_close(history, ref_history, keys=("loss", "accumulated_loss", "val_loss")):
    for key in keys:
        assert history[key] == pytest.approx(ref_history[key], rel=1e-6, abs=1e-7), key


# ---------------------------------------------------------------------------------------- spawn
@pytest.mark.timeout(120)
def test_parity_exact_evaluation_and_result_in_parent(ref, tmp_path, busy_default_ports, no_master_env):
    ref_model, ref_loop = ref
    model = helpers.RegressionNet()
    loop = helpers.make_loop(model, batch_size=8, gpu_mode="ddp")
    returned = loop.fit(num_epochs=2, callbacks=[helpers.RecordEvaluation(str(tmp_path)),
                                                 helpers.PinnedEvaluation(str(tmp_path)),
                                                 RecordGcState(str(tmp_path))], **CPU_DDP)

    # The parent's model holds the weights of one process with the batch of both ranks.
    assert returned is model
    assert helpers.max_weight_diff(model, ref_model) < 1e-5
    _assert_history_close(loop.train_history, ref_loop.train_history)
    assert (loop.epoch, loop.num_optimizer_steps) == (2, 8)

    ref_pred, ref_true, _ = ref_loop.predict_on_validation_set()
    ref_val_loss = float(ref_loop.evaluate_loss_on_validation_set())
    for rank, result in enumerate(helpers.load_rank_files(str(tmp_path), "eval")):
        assert result["world_size"] == 2
        assert len(result["y_pred"]) == 101 and torch.equal(result["y_true"], ref_true), rank
        torch.testing.assert_close(result["y_pred"], ref_pred, atol=1e-5, rtol=1e-5)
        assert result["metadata"]["first_feature"] == pytest.approx(helpers.validation_set().tensors[0][:, 0].tolist())
        assert result["val_loss"] == pytest.approx(ref_val_loss, rel=1e-6)
        assert result["cache_hit"]

    # A callback pinned to rank 0 evaluates alone (no collective, nothing hangs), exactly too.
    pinned = torch.load(tmp_path / "pinned_rank0.pt", weights_only=False)
    assert not (tmp_path / "pinned_rank1.pt").exists()
    assert [r["when"] for r in pinned] == ["mid_epoch", "epoch_end"] * 2
    for record in pinned:
        assert record["n"] == 101 and torch.equal(record["y_true"], ref_true)
    assert pinned[-1]["loss"] == pytest.approx(ref_loop.train_history["val_loss"][-1], rel=1e-6)

    # A spawned rank freezes its imported modules (cheap garbage collections, fast exit), not the run.
    for rank, state in enumerate(helpers.load_rank_files(str(tmp_path), "gc")):
        assert state == {"freeze_count": state["freeze_count"], "torch_frozen": True,
                         "loop_collectable": True, "model_collectable": True}, rank
        assert state["freeze_count"] > 10_000, rank

    # After fit the parent evaluates on its own, with the trained weights.
    assert float(loop.evaluate_loss_on_validation_set()) == pytest.approx(ref_val_loss, rel=1e-6)


@pytest.mark.timeout(120)
def test_grad_accumulation_all_reduces_only_on_stepping_batches(tmp_path, no_master_env):
    data = helpers.train_set(80)  # 5 batches of 8 per rank: windows 2, 2, 1
    ref_model, ref_loop = reference(batch_size=16, grad_accumulation=2, train_data=data)
    model = helpers.RegressionNet()
    loop = helpers.make_loop(model, batch_size=8, gpu_mode="ddp", train_data=data)
    loop.fit(num_epochs=2, grad_accumulation=2, callbacks=[helpers.CountAllReduces(str(tmp_path))],
             ddp_model_args={"bucket_cap_mb": 64}, **CPU_DDP)

    assert helpers.max_weight_diff(model, ref_model) < 1e-5
    _assert_history_close(loop.train_history, ref_loop.train_history)
    assert loop.num_optimizer_steps == ref_loop.num_optimizer_steps == 6
    for calls in helpers.load_rank_files(str(tmp_path), "allreduce"):
        assert calls == [(epoch, it) for epoch in range(2) for it in (1, 3, 4)]


@pytest.mark.timeout(120)
def test_multiloss_multioptimizer_scheduler_and_amp(no_master_env):
    def run(gpu_mode, batch_size, use_amp, **fit_kwargs):
        model = helpers.TwoHeadNet()
        optimizer = MultiOptimizer([torch.optim.SGD(list(model.trunk.parameters()) + list(model.head_a.parameters()),
                                                    lr=0.05),
                                    torch.optim.SGD(model.head_b.parameters(), lr=0.05)])
        loop = TrainLoop(model, DataLoader(helpers.train_set(), batch_size=batch_size), None, None, optimizer,
                         nn.MSELoss(), gpu_mode=gpu_mode, use_amp=use_amp, show_progress=False)
        loop.fit(num_epochs=2, callbacks=[StepLRScheduler(step_size=1, gamma=0.5)], **fit_kwargs)
        return model, loop

    for use_amp, tolerance in ((False, 1e-5), (True, 2e-2)):
        ref_model, ref_loop = run("single", 16, use_amp)
        model, loop = run("ddp", 8, use_amp, **CPU_DDP)
        assert helpers.max_weight_diff(model, ref_model) < tolerance, use_amp
        assert loop.train_history["loss_b"] == pytest.approx(ref_loop.train_history["loss_b"], rel=tolerance)
        # The optimizers' and the scheduler's state came back to the parent.
        assert [g["lr"] for g in loop.optimizer.param_groups] == [0.0125, 0.05]  # StepLR on optimizer 0
        assert loop._pending_callback_state == ref_loop.callbacks_handler.state_dict()


@pytest.mark.timeout(120)
def test_seeded_shuffled_loader_and_in_process_data_load(tmp_path, no_master_env):
    # A loader holding a torch.Generator kills spawned children unless the library copes (SPEC 6).
    data = helpers.IndexedDataset(40)
    model = helpers.RegressionNet()
    loader = DataLoader(data, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(0),
                        num_workers=1, persistent_workers=True)
    loop = TrainLoop(model, loader, None, None, torch.optim.SGD(model.parameters(), lr=0.01), nn.MSELoss(),
                     gpu_mode="ddp", show_progress=False)
    loop.fit(num_epochs=2, callbacks=[helpers.RecordSeenIndices(str(tmp_path))],
             in_process_data_load=helpers.LoadValidationInProcess(num_samples=7), **CPU_DDP)

    seen = helpers.load_rank_files(str(tmp_path), "seen")
    for epoch in range(2):
        for rank in range(2):  # shuffled iff the original was, seeded by the loader's generator
            sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            assert seen[rank][epoch] == list(sampler)
        assert sorted(seen[0][epoch] + seen[1][epoch]) == list(range(40))
    assert seen[0][0] != seen[0][1]  # set_epoch: every epoch is shuffled anew
    # The validation loader was loaded in each process: the end-of-epoch val_loss exists.
    assert len(loop.train_history["val_loss"]) == 2
    assert loader.generator.initial_seed() == 0 and len(loader) == 8  # the user's loader is unchanged


@pytest.mark.timeout(120)
def test_early_stop_on_one_rank_mid_epoch_stops_every_rank(no_master_env):
    model = helpers.RegressionNet()
    loop = helpers.make_loop(model, batch_size=8, gpu_mode="ddp")
    # Were the flag not shared, rank 0 would train on alone and wait in its next all-reduce.
    loop.fit(num_epochs=5, callbacks=[helpers.StopOnRank(rank=1, iteration=1)], timeout=60, **CPU_DDP)
    assert (loop.epoch, loop.total_iteration_idx, loop.num_optimizer_steps) == (1, 2, 2)
    assert len(loop.train_history["accumulated_loss"]) == 1


@pytest.mark.timeout(150)
def test_torch_compile_in_the_ranks(ref, no_master_env):
    ref_model, ref_loop = ref
    model = helpers.RegressionNet()
    loop = helpers.make_loop(model, batch_size=8, gpu_mode="ddp", torch_compile={"backend": "eager"})
    loop.fit(num_epochs=2, callbacks=[helpers.RecordCompiledFrames()], **CPU_DDP)
    assert loop.train_history["compiled_frames"][0] >= 1
    assert helpers.max_weight_diff(model, ref_model) < 1e-5
    _assert_history_close(loop.train_history, ref_loop.train_history)


@pytest.mark.timeout(120)
def test_tracking_loop_saves_once_with_exact_results(tmp_path, no_master_env):
    import json

    from aitoolbox.experiment.result_package.basic_packages import ClassificationResultPackage
    from aitoolbox.torchtrain.train_loop import TrainLoopCheckpointEndSave
    from tests.tracking.helpers import loop_args

    loop = TrainLoopCheckpointEndSave(*loop_args(), "proj", "exp", str(tmp_path), {"lr": 0.1},
                                      val_result_package=ClassificationResultPackage(), cloud_save_mode=None,
                                      show_progress=False, gpu_mode="ddp")
    loop.fit(num_epochs=2, **CPU_DDP)
    exp = loop.experiment_dir
    files = {os.path.relpath(os.path.join(r, f), exp) for r, _, fs in os.walk(exp) for f in fs}
    assert {"checkpoint_model/model_epoch_2.pt", "model/model.pt", "results/results.json"} <= files
    assert os.listdir(os.path.join(str(tmp_path), "proj")) == [os.path.basename(exp)]  # one experiment
    with open(os.path.join(exp, "results", "results.json")) as f:
        accuracy = json.load(f)["validation"]["Accuracy"]
    y_pred, y_true, _ = loop.predict_on_validation_set()  # the parent, with the weights it got back
    assert accuracy == pytest.approx((y_pred.argmax(1) == y_true).double().mean().item())


# ---------------------------------------------------------------------------------------- failures
@pytest.mark.timeout(120)
def test_failing_rank_ends_the_run_promptly_with_its_error(no_master_env):
    model = helpers.RegressionNet()
    loop = helpers.make_loop(model, batch_size=8, gpu_mode="ddp")
    start = time.monotonic()
    with pytest.raises(Exception, match="boom from rank 1"):
        loop.fit(num_epochs=50, callbacks=[helpers.RaiseOnRank(rank=1, iteration=2)], timeout=600, **CPU_DDP)
    assert time.monotonic() - start < 45


def _gone(pid):
    """Whether process ``pid`` has ended (a zombie counts: it no longer runs)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.timeout(120)
def test_a_frozen_rank_is_named_when_a_collective_times_out(tmp_path, no_master_env):
    """Rank 2 of 3 stops (SIGSTOP): the ranks that waited in the collective name it, not themselves."""
    loop = helpers.make_loop(helpers.RegressionNet(), batch_size=8, gpu_mode="ddp")
    start = time.monotonic()
    with pytest.raises(Exception, match="Rank 2 stopped answering") as info:
        loop.fit(num_epochs=50, callbacks=[helpers.StallOnRank(rank=2, iteration=3, out_dir=str(tmp_path))],
                 timeout=5, **{**CPU_DDP, "num_gpus": 3})
    message = str(info.value)
    assert "waited longer than timeout=5 s" in message
    assert "Rank 1 stopped" not in message and "Ranks" not in message  # the other waiting rank still beats
    assert time.monotonic() - start < 60
    stalled = int((tmp_path / "stalled_pid").read_text())
    deadline = time.monotonic() + 10
    while not _gone(stalled) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(stalled), "the stopped rank was left behind"


@pytest.mark.timeout(120)
def test_a_slow_rank_is_not_called_frozen_when_a_collective_times_out(tmp_path, no_master_env):
    """Rank 1 works alone (sleeps) past the timeout: the error says every rank is alive and where each is."""
    loop = helpers.make_loop(helpers.RegressionNet(), batch_size=8, gpu_mode="ddp")
    with pytest.raises(Exception, match="Every rank is alive") as info:
        loop.fit(num_epochs=50, callbacks=[helpers.StallOnRank(rank=1, iteration=3, out_dir=str(tmp_path),
                                                               sleep_s=12)], timeout=4, **CPU_DDP)
    assert "stopped answering" not in str(info.value)
    assert "rank 1 at epoch 0, iteration 3" in str(info.value)


@pytest.mark.timeout(120)
def test_evaluation_on_one_rank_only_raises_a_clear_error(no_master_env):
    model = helpers.RegressionNet()
    loop = helpers.make_loop(model, batch_size=8, gpu_mode="ddp")
    start = time.monotonic()
    with pytest.raises(Exception, match="entered different cross-rank operations") as info:
        loop.fit(num_epochs=3, callbacks=[helpers.MainProcessOnlyEvaluation()], timeout=600, **CPU_DDP)
    assert "device_idx_execution=0" in str(info.value)
    assert time.monotonic() - start < 45


# ---------------------------------------------------------------------------------------- launchers
@pytest.mark.timeout(150)
def test_torchrun_launch_trains_in_place(ref, tmp_path):
    ref_model, ref_loop = ref
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", SCRIPT,
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=_subprocess_env(), capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert (result["rank"], result["world_size"], result["in_place"]) == (rank, 2, True)
        assert max((result["state"][k] - v).abs().max().item() for k, v in ref_model.state_dict().items()) < 1e-5
        _assert_history_close(result["history"], ref_loop.train_history)


@pytest.mark.timeout(150)
def test_torchrun_failing_rank_ends_the_run_promptly(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", SCRIPT,
           "--out", str(tmp_path), "--fail-rank", "1"]
    start = time.monotonic()
    proc = subprocess.run(cmd, env=_subprocess_env(), capture_output=True, text=True, timeout=140)
    assert proc.returncode != 0
    assert "RuntimeError: boom from rank 1" in proc.stderr
    assert time.monotonic() - start < 60  # 200 epochs were asked for: nobody waited for a timeout


@pytest.mark.timeout(150)
def test_two_nodes_as_two_os_processes(ref, tmp_path):
    ref_model, ref_loop = ref
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, SCRIPT, "--out", str(tmp_path), "--num-nodes", "2",
                               "--node-rank", str(node), "--init-method", init_method],
                              env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for node in range(2)]
    outputs = [proc.communicate(timeout=140) for proc in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    for node in range(2):
        result = torch.load(tmp_path / f"node{node}.pt", weights_only=True)
        assert result["in_place"] is False  # the node's parent: it spawned its rank
        assert max((result["state"][k] - v).abs().max().item() for k, v in ref_model.state_dict().items()) < 1e-5
        _assert_history_close(result["history"], ref_loop.train_history)


# ---------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(on_gpu=True) if not torch.cuda.is_available() else dict(on_gpu=False, backend="nccl"),
     "on_gpu|nccl"),
    (dict(on_gpu=False, backend="nccl", num_gpus=2), "backend='gloo'"),
    (dict(on_gpu=False, backend="gloo"), "num_gpus is required"),
    (dict(on_gpu=False, backend="gloo", num_gpus=0), "num_gpus must be"),
    (dict(on_gpu=False, backend="gloo", num_gpus=1, num_nodes=2, node_rank=2), "node_rank"),
    (dict(on_gpu=False, backend="gloo", num_gpus=1, num_nodes=2), "MASTER_ADDR"),
    (dict(on_gpu=False, backend="gloo", num_gpus=1, init_method="http://x"), "init_method"),
    (dict(on_gpu=False, backend="gloo", num_gpus=1, ddp_model_args={"bucket_size": 1}), "bucket_size"),
    (dict(on_gpu=False, backend="gloo", num_gpus=1, in_process_data_load=[object()]), "in_process_data_load"),
    (dict(on_gpu=False, backend="gloo", num_gpus=1, dp_model_args={}), "dp_model_args"),
])
def test_bad_ddp_arguments_fail_before_any_work(kwargs, match, no_master_env):
    model = helpers.RegressionNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loop = helpers.make_loop(model, batch_size=8, gpu_mode="ddp")
    with pytest.raises((ValueError, TypeError), match=match):
        loop.fit(num_epochs=1, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unpicklable_loop_gets_a_clear_error(no_master_env):
    model = helpers.RegressionNet()
    loader = DataLoader(helpers.train_set(), batch_size=8, collate_fn=lambda batch: batch)
    loop = TrainLoop(model, loader, None, None, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(),
                     gpu_mode="ddp", show_progress=False)
    with pytest.raises(TypeError, match="module level"):
        loop.fit(num_epochs=1, **CPU_DDP)


# ---------------------------------------------------------------------------------------- GPU
@needs_gpu
@pytest.mark.timeout(300)
def test_nccl_ddp_matches_single_gpu_process(no_master_env):
    world = min(2, torch.cuda.device_count())
    data = helpers.train_set(64)
    ref_model = helpers.RegressionNet()
    ref_loop = helpers.make_loop(ref_model, 8 * world, train_data=data)
    ref_loop.fit(num_epochs=2)
    model = helpers.RegressionNet()
    loop = helpers.make_loop(model, batch_size=8, gpu_mode="ddp", train_data=data)
    loop.fit(num_epochs=2, num_gpus=world, backend="nccl", on_gpu=True)
    assert helpers.max_weight_diff(model.cpu(), ref_model.cpu()) < 1e-4
    assert loop.train_history["val_loss"] == pytest.approx(ref_loop.train_history["val_loss"], rel=1e-4)


@needs_gpu
@pytest.mark.timeout(300)
def test_nccl_ddp_amp_float16_multiloss(no_master_env):
    model = helpers.TwoHeadNet()
    optimizer = MultiOptimizer([torch.optim.SGD(list(model.trunk.parameters()) + list(model.head_a.parameters()),
                                                lr=0.05), torch.optim.SGD(model.head_b.parameters(), lr=0.05)])
    loop = TrainLoop(model, DataLoader(helpers.train_set(), batch_size=8), DataLoader(helpers.validation_set(), 10),
                     None, optimizer, nn.MSELoss(), gpu_mode="ddp", use_amp=True, show_progress=False)
    loop.fit(num_epochs=2, num_gpus=min(2, torch.cuda.device_count()), backend="nccl", on_gpu=True)
    assert loop.amp_scaler is None  # the parent keeps the model on the CPU
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert len(loop.train_history["val_loss_a"]) == 2


# ---------------------------------------------------------------------------------------- pieces
def _collate(batch):
    return torch.utils.data.default_collate(batch)


def _worker_init(worker_id):
    torch.manual_seed(worker_id)


def test_train_loader_copy_keeps_every_setting_and_the_sampler_seed():
    from aitoolbox.torchtrain.train_loop.strategies.data import distributed_train_loader, sampler_seed

    generator = torch.Generator().manual_seed(7)
    loader = DataLoader(helpers.train_set(), batch_size=5, shuffle=True, collate_fn=_collate, num_workers=1,
                        pin_memory=False, drop_last=True, persistent_workers=True, prefetch_factor=3,
                        worker_init_fn=_worker_init, generator=generator, timeout=30)
    assert sampler_seed(loader) == 7
    copy = distributed_train_loader(loader, rank=1, world_size=2, seed=sampler_seed(loader))
    for name in ("batch_size", "collate_fn", "num_workers", "pin_memory", "drop_last", "persistent_workers",
                 "prefetch_factor", "worker_init_fn", "timeout", "dataset"):
        assert getattr(copy, name) is getattr(loader, name) or getattr(copy, name) == getattr(loader, name), name
    # rank 1's workers get seeds of their own (test_reproducibility.py): a generator derived from the user's
    assert copy.generator is not generator and copy.generator.initial_seed() != 7
    sampler = copy.sampler
    assert isinstance(sampler, DistributedSampler)
    assert (sampler.shuffle, sampler.seed, sampler.rank, sampler.num_replicas) == (True, 7, 1, 2)
    assert len(copy) == 32 // 5  # 64 samples, 32 per rank, drop_last kept

    sequential = distributed_train_loader(DataLoader(helpers.train_set(), batch_size=4), 0, 2, seed=3)
    assert sequential.sampler.shuffle is False and list(sequential.sampler)[:3] == [0, 2, 4]


def test_custom_sampler_is_split_and_evaluation_shards_exactly():
    from aitoolbox.torchtrain.train_loop.strategies import data as ddp_data

    data = helpers.validation_set(11)
    subset = torch.utils.data.SubsetRandomSampler(list(range(9)), generator=torch.Generator().manual_seed(1))
    train = ddp_data.distributed_train_loader(DataLoader(data, batch_size=2, sampler=subset), 1, 2, seed=0)
    assert isinstance(train.sampler, ddp_data.ShardedSampler) and len(train.sampler) == 5

    solo = [False]
    plans = []
    loaders = [ddp_data.exact_eval_loader(DataLoader(data, batch_size=3, shuffle=True), rank, 3,
                                          lambda: solo[0], plans.append) for rank in range(3)]
    shares = [[int(y) for _, y in loader for y in y.flatten()] for loader in loaders]
    assert shares == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]  # no padding duplicates, in order
    assert plans[0] == ddp_data.EvalPlan(True, 11)
    solo[0] = True
    assert [int(y) for _, y in loaders[2] for y in y.flatten()] == list(range(11))
    tiny = ddp_data.exact_eval_loader(DataLoader(helpers.validation_set(2), batch_size=3), 0, 3,
                                      lambda: False, plans.append)
    assert tiny.plan == ddp_data.EvalPlan(False, 2)  # fewer samples than ranks: every rank reads all


@pytest.mark.parametrize("num_samples, world_size", [(101, 2), (10, 3), (7, 7), (5, 4)])
def test_rank_results_merge_back_into_dataset_order(num_samples, world_size):
    import numpy as np

    from aitoolbox.torchtrain.train_loop.strategies.collectives import _merge, _merge_metadata
    from aitoolbox.torchtrain.train_loop.strategies.data import shard_counts

    counts = shard_counts(num_samples, world_size)
    assert sum(counts) == num_samples
    tensors = [torch.arange(rank, num_samples, world_size) for rank in range(world_size)]
    assert torch.equal(_merge(tensors, counts), torch.arange(num_samples))
    assert _merge([t.tolist() for t in tensors], counts) == list(range(num_samples))
    assert np.array_equal(_merge([t.numpy() for t in tensors], counts), np.arange(num_samples))
    metadata = _merge_metadata([{"idx": t.tolist(), "batch": ["b"]} for t in tensors], counts)
    assert metadata["idx"] == list(range(num_samples))
    assert metadata["batch"] == ["b"] * world_size  # not per-sample: kept in rank order


def test_master_env_picks_a_free_port_and_honours_the_environment(busy_default_ports, monkeypatch):
    from aitoolbox.torchtrain.train_loop.strategies.config import DDPConfig
    from aitoolbox.torchtrain.train_loop.strategies.launch import is_peer_failure, master_env

    config = DDPConfig(1, 0, 2, "gloo", "env://", False, 60.0, {})
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    env = master_env(config)
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["MASTER_PORT"] not in ("8888", "29500")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", int(env["MASTER_PORT"])))  # it is free
    monkeypatch.setenv("MASTER_ADDR", "10.1.2.3")
    monkeypatch.setenv("MASTER_PORT", "4321")
    assert master_env(config) == {"MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "4321"}
    assert master_env(DDPConfig(1, 0, 2, "gloo", "tcp://127.0.0.1:5", False, 60.0, {})) == {}
    assert is_peer_failure(RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:1"))
    assert not is_peer_failure(RuntimeError("boom"))


@pytest.mark.timeout(150)
def test_skip_nonfinite_skips_the_same_update_on_every_rank(no_master_env):
    from aitoolbox.torchtrain.callbacks.basic import SkipNonFinite
    data = helpers.train_set()
    data.tensors[0][17, 0] = float("nan")  # rank 1's second batch; batch 1 of the one-process run
    single = helpers.RegressionNet()
    skip = SkipNonFinite()
    helpers.make_loop(single, 16, train_data=data, val_data=False).fit(num_epochs=2, callbacks=[skip])
    assert skip.skipped_iterations == [1, 5]
    model = helpers.RegressionNet()
    loop = helpers.make_loop(model, 8, gpu_mode="ddp", train_data=data, val_data=False)
    loop.fit(num_epochs=2, callbacks=[SkipNonFinite()], timeout=60, **CPU_DDP)
    # only rank 1 reads the NaN sample; both ranks must skip (rank 0 sees it through the averaged
    # gradients): the parent's weights then equal the one-process run's, which skipped the same updates
    for p, q in zip(model.parameters(), single.parameters()):
        assert torch.isfinite(p).all()
        assert torch.allclose(p, q, atol=1e-5)
