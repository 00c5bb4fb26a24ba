"""Scenario 6: ``import aitoolbox`` against ``import torch``, each in a fresh interpreter.

Only the standard library is imported before the timed import. The orchestrator also records the
whole process's wall time (interpreter start-up included).
"""
from __future__ import annotations

import importlib
import sys
import time

#: optional dependencies that ``import aitoolbox`` must leave alone
HEAVY = ("boto3", "botocore", "matplotlib", "tensorboard", "pandas", "sklearn")


def params(quick: bool) -> dict:
    """No workload parameters."""
    return {}


def timed_import(name: str) -> dict:
    """Import ``name`` and report the seconds it took and which heavy modules it pulled in."""
    start = time.perf_counter()
    importlib.import_module(name)
    seconds = time.perf_counter() - start
    heavy = sorted(m for m in HEAVY if m in sys.modules)
    return {"seconds": seconds, "heavy_modules": heavy, "num_heavy_modules": len(heavy),
            "num_modules": len(sys.modules)}


def arm_torch(p: dict) -> dict:
    """``import torch``."""
    return timed_import("torch")


def arm_aitoolbox(p: dict) -> dict:
    """``import aitoolbox`` (which imports torch)."""
    return timed_import("aitoolbox")
