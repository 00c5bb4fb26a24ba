"""One measured run in a fresh process: ``python -m bench.child MODULE ARM PARAMS_JSON``.

Runs ``bench.scenarios.MODULE.arm_ARM(params)`` and prints its result as one JSON line after
:data:`MARKER`, so that anything else the arm prints (progress bars, logs) is ignored. Only the
standard library is imported here: the import scenario must find a clean interpreter.
"""
from __future__ import annotations

import importlib
import json
import sys

MARKER = "@@BENCH_RESULT@@"


def main(argv) -> int:
    """Run one arm and print its result."""
    module_name, arm, params_json = argv
    module = importlib.import_module(f"bench.scenarios.{module_name}")
    result = getattr(module, f"arm_{arm}")(json.loads(params_json))
    sys.stdout.write(f"\n{MARKER}{json.dumps(result)}\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
