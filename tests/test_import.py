"""`import aitoolbox` stays light: no optional dependency is imported (SPEC 8, STYLE)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_aitoolbox_pulls_no_optional_dependency():
    code = ("import sys, aitoolbox, aitoolbox.torchtrain.train_loop\n"
            "print(sorted(m for m in ('boto3', 'botocore', 'matplotlib', 'tensorboard', 'moto', 'sklearn', 'yaml')"
            " if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_public_import_paths_of_the_original_api():
    from aitoolbox import TrainLoop, TTModel  # noqa: F401
    from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback  # noqa: F401
    from aitoolbox.torchtrain.data.batch_model_feed_defs import AbstractModelFeedDefinition  # noqa: F401
    from aitoolbox.torchtrain.model import ModelWrap, MultiGPUModelWrap, TTBasicModel  # noqa: F401
    from aitoolbox.torchtrain.multi_loss_optim import MultiLoss, MultiOptimizer  # noqa: F401
    from aitoolbox.torchtrain.train_loop.components.pred_collate_fns import (  # noqa: F401
        append_predictions, torch_cat_transf)
    from aitoolbox.experiment.training_history import TrainingHistory  # noqa: F401
    from aitoolbox.torchtrain.train_loop import TrainLoop as PackageTrainLoop
    from aitoolbox.torchtrain.train_loop.train_loop import TrainLoop as ModuleTrainLoop

    assert PackageTrainLoop is ModuleTrainLoop is TrainLoop
