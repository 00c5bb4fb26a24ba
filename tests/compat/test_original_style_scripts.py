"""Scripts written for aitoolbox 1.8 run unchanged (issue 10), the way a user meets them.

Every script under ``tests/compat/scripts/`` is written as the original's examples are (its
import paths, its metric names, its arguments) and is run here as it is, in a subprocess with
``PYTHONPATH`` at the repository root. Each script records, from a callback, the predictions of
every epoch and the training history into a JSON file; the tests check that the accuracies the
script reported (in the history, in the printed report and in the saved results) equal
scikit-learn's ``accuracy_score`` of those predictions, that every sample was predicted once, and
what the experiment folder (and the S3 bucket) hold.
"""
import collections
import json
import os
import re
import subprocess
import sys

import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(ROOT, "tests", "compat", "scripts")
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
CHECKPOINT_SUFFIXES = (".pt", ".pth")


@pytest.fixture(scope="module")
def digits_labels():
    """The labels of the scripts' split: train 0-1199, validation 1200-1499, test 1500-1796."""
    y = load_digits().target.tolist()
    return {"train": y[:1200], "val": y[1200:1500], "test": y[1500:]}


def run_script(name, *args, cwd, timeout=240):
    """Run ``tests/compat/scripts/<name>`` unchanged; return its output (stdout and stderr interleaved)."""
    env = {k: v for k, v in os.environ.items() if k not in DDP_ENV}
    env["PYTHONPATH"] = ROOT
    env["PYTHONUNBUFFERED"] = "1"  # prints and log records in the order they were made
    result = subprocess.run([sys.executable, os.path.join(SCRIPTS, name), *map(str, args)], cwd=str(cwd),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=timeout)
    log = result.stdout
    assert result.returncode == 0, f"{name} failed:\n{log[-4000:]}"
    return log


def load_output(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sklearn_accuracy(record):
    return accuracy_score(record["y_true"], record["y_pred"])


def assert_accuracies_match_sklearn(output, labels, num_epochs):
    """Every epoch's train_Accuracy / val_Accuracy is scikit-learn's on that epoch's predictions."""
    history = output["train_history"]
    assert len(output["epochs"]) == num_epochs
    assert len(history["train_Accuracy"]) == len(history["val_Accuracy"]) == num_epochs
    for epoch, record in enumerate(output["epochs"]):
        for subset in ("train", "val"):
            # every sample predicted exactly once: no DDP padding, nothing dropped
            assert collections.Counter(record[subset]["y_true"]) == collections.Counter(labels[subset])
            assert history[f"{subset}_Accuracy"][epoch] == pytest.approx(sklearn_accuracy(record[subset]),
                                                                         abs=1e-12)
    assert collections.Counter(output["test"]["y_true"]) == collections.Counter(labels["test"])


def printed_metric(log, name):
    """The values printed as ``<name>: <value>`` (not ``train_end_<name>``, the end-of-training report)."""
    return [float(v) for v in re.findall(rf"(?<![\w]){name}: ([0-9.eE+-]+)", log)]


def assert_printed_report_matches_history(log, history):
    """ModelPerformancePrintReport printed every epoch's value, as the history holds it."""
    for name in ("train_Accuracy", "val_Accuracy"):
        assert printed_metric(log, name) == pytest.approx(history[name], abs=1e-12)


def experiment_dir(root, project_name, experiment_name):
    project_dir = os.path.join(root, project_name)
    found = [d for d in os.listdir(project_dir) if re.fullmatch(rf"{experiment_name}_\d{{4}}(-\d\d){{2}}_\d\d(-\d\d){{2}}", d)]
    assert len(found) == 1, os.listdir(project_dir)
    return os.path.join(project_dir, found[0])


def checkpoint_files(names):
    return sorted(n for n in names if n.endswith(CHECKPOINT_SUFFIXES))


def assert_tracked_experiment(exp_dir, num_checkpoints, output):
    """The experiment folder of a TrainLoopCheckpointEndSave run: checkpoints, final model, results."""
    for sub_dir in ("checkpoint_model", "model", "results"):
        assert os.path.isdir(os.path.join(exp_dir, sub_dir)), os.listdir(exp_dir)
    assert len(checkpoint_files(os.listdir(os.path.join(exp_dir, "checkpoint_model")))) == num_checkpoints
    assert len(checkpoint_files(os.listdir(os.path.join(exp_dir, "model")))) == 1
    with open(os.path.join(exp_dir, "results", "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    # the test_result_package evaluated at the end of training, on the test predictions
    assert results["test"]["Accuracy"] == pytest.approx(sklearn_accuracy(output["test"]), abs=1e-12)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("script, experiment_name", [
    ("trainloop_ttmodel.py", "CNN_digits_test"),
    ("trainloop_model_wrap.py", "CNN_digits_model_wrap_test"),
])
def test_checkpoint_end_save_to_local_disk(tmp_path, digits_labels, script, experiment_name):
    results_dir, output_path = tmp_path / "results", tmp_path / "output.json"
    log = run_script(script, "--epochs", 2, "--results-dir", results_dir, "--output", output_path, cwd=tmp_path)

    output = load_output(output_path)
    assert_accuracies_match_sklearn(output, digits_labels, num_epochs=2)
    assert_printed_report_matches_history(log, output["train_history"])
    assert output["train_history"]["val_Accuracy"][-1] > 0.5  # it learned
    exp_dir = experiment_dir(results_dir, "localRunCNNTest", experiment_name)
    assert_tracked_experiment(exp_dir, num_checkpoints=2, output=output)
    with open(os.path.join(exp_dir, "hyperparams.json"), encoding="utf-8") as f:
        assert json.load(f)["epochs"] == 2  # args.__dict__, saved as the hyperparameters


@pytest.mark.timeout(300)
@pytest.mark.parametrize("script", ["dp_training.py", "amp_training.py"])
def test_dp_and_amp_scripts(tmp_path, digits_labels, script):
    output_path = tmp_path / "output.json"
    log = run_script(script, "--epochs", 2, "--output", output_path, cwd=tmp_path)

    output = load_output(output_path)
    assert_accuracies_match_sklearn(output, digits_labels, num_epochs=2)
    assert_printed_report_matches_history(log, output["train_history"])
    assert output["train_history"]["val_Accuracy"][-1] > 0.5


@pytest.mark.timeout(300)
def test_ddp_script_with_two_gloo_processes(tmp_path, digits_labels):
    output_path = tmp_path / "output.json"
    log = run_script("ddp_training.py", "--epochs", 2, "--output", output_path, cwd=tmp_path)

    output = load_output(output_path)  # written by rank 0's callback
    assert_accuracies_match_sklearn(output, digits_labels, num_epochs=2)
    # each epoch's report printed once, by the main process only
    assert_printed_report_matches_history(log, output["train_history"])
    assert output["train_history"]["val_Accuracy"][-1] > 0.5


@pytest.mark.timeout(300)
def test_fully_tracked_experiment_to_s3(tmp_path, digits_labels, s3_bucket, s3_endpoint_url):
    import boto3

    results_dir, output_path = tmp_path / "results", tmp_path / "output.json"
    # the AWS_* environment (endpoint on loopback, test credentials) is inherited from the fixtures
    assert os.environ["AWS_ENDPOINT_URL"] == s3_endpoint_url
    log = run_script("trainloop_fully_tracked_s3.py", "--epochs", 3, "--results-dir", results_dir,
                     "--bucket", s3_bucket, "--output", output_path, cwd=tmp_path)

    output = load_output(output_path)
    assert_accuracies_match_sklearn(output, digits_labels, num_epochs=3)
    assert_printed_report_matches_history(log, output["train_history"])
    exp_dir = experiment_dir(results_dir, "tl_full_experiment_tracking", "tutorial_example")
    with open(os.path.join(exp_dir, "results", "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    assert results["test"]["Accuracy"] == pytest.approx(sklearn_accuracy(output["test"]), abs=1e-12)
    assert results["validation"]["Accuracy"] == pytest.approx(sklearn_accuracy(output["epochs"][-1]["val"]),
                                                              abs=1e-12)
    assert os.listdir(os.path.join(exp_dir, "results", "plots"))  # ModelTrainHistoryPlot

    client = boto3.client("s3", endpoint_url=s3_endpoint_url, region_name="us-east-1")
    keys = {obj["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
            for obj in page.get("Contents", [])}
    local_files = {os.path.relpath(os.path.join(d, f), results_dir).replace(os.sep, "/")
                   for d, _, files in os.walk(exp_dir) for f in files}
    local_checkpoints = [f for f in local_files if "/checkpoint_model/" in f and f.endswith(CHECKPOINT_SUFFIXES)]
    bucket_checkpoints = [k for k in keys if "/checkpoint_model/" in k and k.endswith(CHECKPOINT_SUFFIXES)]
    # rm_subopt_local_models=True, num_best_checkpoints_kept=2: the bucket keeps all 3, local disk the best 2
    # (and the newest, the resume point)
    assert len(bucket_checkpoints) == 3
    assert 2 <= len(local_checkpoints) <= 3 and set(local_checkpoints) <= set(bucket_checkpoints)
    other_local = local_files - set(local_checkpoints)
    assert other_local <= keys, sorted(other_local - keys)  # the same tree in the bucket
    for sub_dir in ("model", "results", "results/plots"):
        assert any(k.startswith(f"{os.path.relpath(exp_dir, results_dir)}/{sub_dir}/") for k in keys), sub_dir


@pytest.mark.timeout(300)
def test_pytorch_model_predictor(tmp_path, digits_labels):
    results_dir, output_path = tmp_path / "results", tmp_path / "output.json"
    run_script("model_predict.py", "--epochs", 2, "--results-dir", results_dir, "--output", output_path,
               cwd=tmp_path)

    output = load_output(output_path)
    assert output["y_true"] == digits_labels["test"]  # data-set order
    assert output["results"]["Accuracy"] == pytest.approx(sklearn_accuracy(output), abs=1e-12)
    assert output["results"]["Accuracy"] > 0.5
    # the loss over 297 samples in batches of 100: the mean over the samples (ours; see docs/migration.md)
    assert output["test_loss"] == pytest.approx(output["reference_loss"], rel=1e-5)
    exp_dir = experiment_dir(results_dir, "model_predictor_example", "digits_predict")
    assert os.listdir(os.path.join(exp_dir, "results"))  # evaluate_model saved the results


@pytest.mark.timeout(300)
def test_model_load_continue_training(tmp_path, digits_labels):
    results_dir = tmp_path / "results"
    first_path, continued_path = tmp_path / "first.json", tmp_path / "continued.json"
    log = run_script("continue_training.py", "--results-dir", results_dir, "--output-first", first_path,
                     "--output-continued", continued_path, cwd=tmp_path)

    first, continued = load_output(first_path), load_output(continued_path)
    assert_accuracies_match_sklearn(first, digits_labels, num_epochs=2)
    assert len(continued["epochs"]) == 2  # epochs 3 and 4: resumed after the second, trained on to 4
    continued_log = log[log.index("Continuing training from the checkpoint"):]
    assert len(printed_metric(continued_log, "val_Accuracy")) == 2
    for epoch, record in enumerate(continued["epochs"]):
        assert continued["train_history"]["val_Accuracy"][-2 + epoch] == pytest.approx(
            sklearn_accuracy(record["val"]), abs=1e-12)
    # the continued run starts from the trained weights, not from scratch
    assert sklearn_accuracy(continued["epochs"][0]["val"]) > sklearn_accuracy(first["epochs"][0]["val"])
    exp_dir = experiment_dir(results_dir, "continue_training_example", "digits_cnn_continued")
    assert len(checkpoint_files(os.listdir(os.path.join(exp_dir, "checkpoint_model")))) == 2
