"""Real signals to a real training process: exact checkpoint, documented exit status, exact resume."""
import json
import os
import signal

import pytest
import torch

from tests.resilience.signal_helpers import (
    assert_same_weights, checkpoint_folder, load_weights, run_and_signal, run_script)

EPOCHS = 3  # 6 batches per epoch


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's final weights."""
    root = tmp_path_factory.mktemp("reference")
    result = run_script(root, root / "out.pt", "--epochs", EPOCHS)
    assert result.returncode == 0, result.stderr
    return load_weights(root / "out.pt")


@pytest.mark.parametrize("signum, signals, status", [
    (signal.SIGTERM, "SIGTERM,SIGINT", 143),
    (signal.SIGUSR1, "SIGTERM,SIGINT,SIGUSR1", 138),
])
def test_signal_mid_epoch_writes_exact_checkpoint_and_resumes_exactly(tmp_path, reference, signum, signals, status):
    root = tmp_path / "run"
    code, output, _ = run_and_signal(root, tmp_path / "stopped.pt", 8, signum, "self", "--epochs", EPOCHS,
                                     "--signals", signals)
    assert code == status, output
    name = signal.Signals(signum).name
    assert f"Stopped by {name} at epoch 2, batch 2/6 (8 batches in all)" in output
    assert f"exit status {status}" in output
    assert not (tmp_path / "stopped.pt").exists()  # fit raised: the script did not go on
    folder = checkpoint_folder(root)
    manifest = json.load(open(os.path.join(folder, "checkpoints.json")))
    assert manifest["newest"] == "model_iteration_8.pt"
    state = torch.load(os.path.join(folder, "model_iteration_8.pt"), weights_only=True)
    assert (state["epoch"], state["iteration"], state["total_iteration_idx"]) == (1, 2, 8)

    resumed = run_script(tmp_path / "resumed", tmp_path / "resumed.pt", "--epochs", EPOCHS,
                         "--resume", os.path.join(folder, "model_iteration_8.pt"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(load_weights(tmp_path / "resumed.pt"), reference)


def test_resume_true_continues_in_the_same_folder_past_a_truncated_checkpoint(tmp_path, reference, caplog):
    """Stop on SIGTERM, cut the stop checkpoint short (a disk that filled), resume with resume=True."""
    root = tmp_path / "run"
    code, output, _ = run_and_signal(root, tmp_path / "stopped.pt", 9, signal.SIGTERM, "self", "--epochs", EPOCHS)
    assert code == 143, output
    folder = checkpoint_folder(root)
    stop_checkpoint = os.path.join(folder, "model_iteration_9.pt")
    data = open(stop_checkpoint, "rb").read()
    with open(stop_checkpoint, "wb") as f:
        f.write(data[: len(data) // 3])
    open(os.path.join(folder, ".model_iteration_9.pt.x1y2z3.tmp"), "wb").write(data[:100])  # a killed write's leftover

    resumed = run_script(root, tmp_path / "resumed.pt", "--epochs", EPOCHS, "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr
    assert "Skipped 1 checkpoint file(s) that do not load" in resumed.stderr and "model_iteration_9.pt" in resumed.stderr
    assert "continuing" in resumed.stderr and "from model_epoch_1.pt" in resumed.stderr
    assert len(os.listdir(root / "proj")) == 1  # the same experiment folder
    result = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert os.path.dirname(folder) == result["experiment_dir"]
    assert len(result["history"]["loss"]) == EPOCHS and len(result["history"]["val_loss"]) == EPOCHS
    assert_same_weights(result["model"], reference)
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]


def test_second_ctrl_c_stops_at_once(tmp_path):
    """The second SIGINT (1 s or more after the first) interrupts the batch in progress."""
    code, output, elapsed = run_and_signal(tmp_path / "run", tmp_path / "o.pt", 8, signal.SIGINT, "self",
                                           "--epochs", EPOCHS, second_signal_after=1.2)
    assert code in (-signal.SIGINT, 130), output  # an uncaught KeyboardInterrupt: "killed by SIGINT"
    assert "KeyboardInterrupt: second SIGINT: stopping at once" in output
    assert "Stopped by" not in output
    assert elapsed < 30


def test_a_repeated_delivery_within_a_second_counts_once(tmp_path):
    code, output, _ = run_and_signal(tmp_path / "run", tmp_path / "o.pt", 8, signal.SIGTERM, "self",
                                     "--epochs", EPOCHS, second_signal_after=0.6)
    assert code == 143, output
    assert "Stopped by SIGTERM" in output


def test_unhandled_signal_keeps_its_default(tmp_path):
    """SIGUSR1 is not in the default set: it kills the process as before (no checkpoint)."""
    code, output, _ = run_and_signal(tmp_path / "run", tmp_path / "o.pt", 3, signal.SIGUSR1, "self", "--epochs", 1)
    assert code == -signal.SIGUSR1, output
    assert "Stopped by" not in output


# ---------------------------------------------------------------------- DDP (2 CPU ranks, gloo)
@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_reference")
    result = run_script(root, root / "out.pt", "--epochs", 2, "--ddp")
    assert result.returncode == 0, result.stderr
    return load_weights(root / "out.pt")


@pytest.mark.parametrize("target, signum, signals, status", [
    ("self", signal.SIGTERM, "SIGTERM,SIGINT", 143),     # to the parent alone
    ("rank1", signal.SIGUSR1, "SIGTERM,SIGINT,SIGUSR1", 138),  # to one rank alone
    ("self", signal.SIGINT, "SIGTERM,SIGINT", 130),       # a Ctrl-C to the parent alone
])
def test_ddp_signal_stops_every_rank_with_a_checkpoint(tmp_path, ddp_reference, target, signum, signals, status):
    root, private_tmp = tmp_path / "run", tmp_path / "tmp"
    private_tmp.mkdir()
    code, output, _ = run_and_signal(root, tmp_path / "stopped.pt", 3, signum, target, "--epochs", 2, "--ddp",
                                     "--signals", signals, ranks=2, env={"TMPDIR": str(private_tmp)})
    assert code == status, output
    name = signal.Signals(signum).name
    assert f"Stopped by {name} at epoch 1, batch 3/3 (3 batches in all)" in output
    folder = checkpoint_folder(root)
    assert json.load(open(os.path.join(folder, "checkpoints.json")))["newest"] == "model_iteration_3.pt"
    assert not [n for n in os.listdir(private_tmp) if n.startswith("aitoolbox-ddp-")]  # the parent cleaned up
    if target == "self" and signum == signal.SIGTERM:  # one resume parity check is enough (DDP runs are slow)
        resumed = run_script(tmp_path / "resumed", tmp_path / "resumed.pt", "--epochs", 2, "--ddp",
                             "--resume", os.path.join(folder, "model_iteration_3.pt"))
        assert resumed.returncode == 0, resumed.stderr
        assert_same_weights(load_weights(tmp_path / "resumed.pt"), ddp_reference)


# ---------------------------------------------------------------------- S3 (moto server)
def _bucket_keys(bucket):
    import boto3
    client = boto3.client("s3")
    return {item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", [])}


def test_sigterm_waits_for_pending_uploads(tmp_path, s3_bucket):
    root = tmp_path / "run"
    code, output, _ = run_and_signal(root, tmp_path / "o.pt", 8, signal.SIGTERM, "self", "--epochs", EPOCHS,
                                     "--bucket", s3_bucket)
    assert code == 143, output
    assert "no upload pending" in output
    folder = checkpoint_folder(root)
    experiment = os.path.basename(os.path.dirname(folder))
    keys = _bucket_keys(s3_bucket)
    for name in os.listdir(folder):  # every local checkpoint file and the manifest reached the bucket
        assert f"proj/{experiment}/checkpoint_model/{name}" in keys


def test_ddp_sigterm_to_the_parent_waits_for_pending_uploads(tmp_path, s3_bucket):
    # 2 gloo ranks, SIGTERM to the parent alone: rank 0 uploads; every checkpoint reaches the bucket
    root = tmp_path / "run"
    code, output, _ = run_and_signal(root, tmp_path / "o.pt", 3, signal.SIGTERM, "self", "--epochs", 2, "--ddp",
                                     "--bucket", s3_bucket, ranks=2)
    assert code == 143, output
    assert "no upload pending" in output
    folder = checkpoint_folder(root)
    assert json.load(open(os.path.join(folder, "checkpoints.json")))["newest"] == "model_iteration_3.pt"
    experiment = os.path.basename(os.path.dirname(folder))
    keys = _bucket_keys(s3_bucket)
    for name in os.listdir(folder):
        assert f"proj/{experiment}/checkpoint_model/{name}" in keys


def test_sigterm_during_s3_outage_exits_within_the_upload_timeout(tmp_path, s3_bucket, moto_server):
    root = tmp_path / "run"
    moto_was_stopped = []

    def stop_moto_when_paused():
        import threading
        import time

        def watch():
            while not (root / "paused_rank0").exists():
                time.sleep(0.05)
            moto_server.stop()  # connections refused from now on: the stop checkpoint cannot be uploaded
            moto_was_stopped.append(True)
        threading.Thread(target=watch, daemon=True).start()

    try:
        stop_moto_when_paused()
        code, output, elapsed = run_and_signal(root, tmp_path / "o.pt", 8, signal.SIGTERM, "self",
                                               "--epochs", EPOCHS, "--bucket", s3_bucket, "--upload-timeout", 2)
    finally:
        moto_server.start(reset_state=True)
    assert moto_was_stopped and code == 143, output
    assert "upload(s) NOT done within 2s" in output and "model_iteration_8.pt" in output
    assert elapsed < 2 + 20  # the upload bound, plus the paused batch's end and the interpreter's exit
    assert os.path.isfile(os.path.join(checkpoint_folder(root), "model_iteration_8.pt"))  # the local copy is complete
