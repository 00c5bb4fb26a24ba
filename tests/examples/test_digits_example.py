"""The README's main example trains to > 90 % accuracy on scikit-learn's digits."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.timeout(180)
def test_digits_example_reaches_90_percent_validation_accuracy():
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "train_digits.py")],
                            capture_output=True, text=True, env=env, timeout=170)
    assert result.returncode == 0, result.stderr[-2000:]
    accuracies = [float(a) for a in re.findall(r"^epoch +\d+ .*val_Accuracy (\d\.\d+)", result.stdout, re.M)]
    assert len(accuracies) == 15
    assert accuracies[-1] > 0.9
    assert float(re.search(r"test accuracy (\d\.\d+)", result.stdout).group(1)) > 0.9
