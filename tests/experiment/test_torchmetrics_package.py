"""TorchMetricsPackage against torchmetrics' own values; HFEvaluateResultPackage without evaluate."""
import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

from aitoolbox.experiment.result_package.torch_metrics_packages import TorchMetricsPackage

torchmetrics = pytest.importorskip("torchmetrics")


def data(seed=0, n=64, classes=3):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, classes, (n,), generator=gen), torch.randint(0, classes, (n,), generator=gen)


def test_single_metric_equals_torchmetrics():
    y_true, y_pred = data()
    package = TorchMetricsPackage(torchmetrics.classification.MulticlassAccuracy(num_classes=3))
    package.prepare_result_package(y_true, y_pred)
    expected = torchmetrics.functional.classification.multiclass_accuracy(y_pred, y_true, num_classes=3).item()
    assert package.get_results() == {"MulticlassAccuracy_PTLMetrics": pytest.approx(expected)}
    assert isinstance(package.get_results()["MulticlassAccuracy_PTLMetrics"], float)


def test_collection_numpy_inputs_and_compute_reset():
    y_true, y_pred = data(1)
    collection = torchmetrics.MetricCollection({
        "acc": torchmetrics.classification.MulticlassAccuracy(num_classes=3),
        "f1": torchmetrics.classification.MulticlassF1Score(num_classes=3, average="macro")})
    package = TorchMetricsPackage(collection)
    package.prepare_result_package(y_true.numpy(), y_pred.numpy())
    f1 = torchmetrics.functional.classification.multiclass_f1_score(y_pred, y_true, num_classes=3, average="macro")
    acc = torchmetrics.functional.classification.multiclass_accuracy(y_pred, y_true, num_classes=3)
    assert package.get_results() == {"acc_PTLMetrics": pytest.approx(acc.item()),
                                     "f1_PTLMetrics": pytest.approx(f1.item())}
    assert package.metric_compute()["acc"].item() == pytest.approx(acc.item())
    package.metric_reset()
    assert collection["acc"].update_count == 0


def test_regression_metric_on_batched_tensor_lists():
    y_true = [torch.randn(8) for _ in range(3)]
    y_pred = [t + 0.1 for t in y_true]
    package = TorchMetricsPackage(torchmetrics.MeanSquaredError())
    package.prepare_result_package(y_true, y_pred)
    assert package.get_results()["MeanSquaredError_PTLMetrics"] == pytest.approx(0.01, rel=1e-4)
    with pytest.raises(TypeError, match="torch_metrics"):
        TorchMetricsPackage("accuracy")


def test_dict_results_of_a_duck_typed_metric():
    class Dummy:
        def __call__(self, *args):
            return {"metric_1": 12.34, "metric_2": np.float64(56.78)}

    package = TorchMetricsPackage(Dummy())
    package.prepare_result_package([], [])
    assert package.get_results() == {"metric_1_PTLMetrics": 12.34, "metric_2_PTLMetrics": 56.78}


@pytest.mark.skipif(importlib.util.find_spec("evaluate") is not None, reason="HF evaluate is installed")
def test_hf_evaluate_package_imports_and_names_the_extra_when_evaluate_is_missing():
    from aitoolbox.experiment.result_package.hf_evaluate_packages import HFEvaluateResultPackage

    with pytest.raises(ImportError, match=r'pip install "aitoolbox\[hf\]"'):
        HFEvaluateResultPackage(object())


def test_importing_the_packages_does_not_import_torchmetrics_or_evaluate():
    code = ("import sys, aitoolbox.experiment.result_package.torch_metrics_packages, "
            "aitoolbox.experiment.result_package.hf_evaluate_packages; "
            "bad = [m for m in ('torchmetrics', 'evaluate') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
