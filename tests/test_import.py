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


HEAVY_OPTIONAL = ("boto3", "matplotlib", "tensorboard", "wandb", "google.cloud", "torchmetrics")


def _loaded_heavy_modules(statement: str) -> list:
    code = (f"import sys\n{statement}\n"
            f"print(sorted(m for m in {HEAVY_OPTIONAL!r} if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180,
                            env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_import_aitoolbox_is_lazy_and_light():
    assert _loaded_heavy_modules("import aitoolbox") == "[]"
    # lazy: not even the TrainLoop (nor torch) is imported until a name is used
    assert _loaded_heavy_modules("import aitoolbox; assert 'aitoolbox.torchtrain.train_loop.train_loop' "
                                 "not in sys.modules and 'torch' not in sys.modules") == "[]"


def test_star_import_of_aitoolbox_pulls_no_optional_dependency():
    assert _loaded_heavy_modules("from aitoolbox import *\nassert TrainLoop and EarlyStopping") == "[]"
