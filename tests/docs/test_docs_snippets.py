"""Every ```python block of README.md and docs/*.md runs as pasted.

Each block is written to a file and run as a script in a fresh interpreter, with a temporary
folder as the working directory and the repository on ``PYTHONPATH``, as a user would paste it
into ``snippet.py``. Nothing is skipped. Blocks read two environment variables visibly:
``AITB_DOCS_EPOCHS`` (set small here, so that the long examples stay short) and
``AITOOLBOX_BUCKET`` (the S3 bucket of the tracking page; here one created on the moto server
of ``tests/conftest.py``, which the ``AWS_*`` variables point at). Other fenced blocks (bash,
text) are not run; the README's shell commands are checked against ``.ci/run`` in
``test_readme_commands.py``.

The pages are found when the tests are collected, so a page added to ``docs/`` is covered
without editing this file.
"""
import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
                   re.M | re.S)
TIMEOUT_S = 240


def pages():
    """README.md and every markdown page of docs/, relative to the repository root."""
    found = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    return [os.path.relpath(p, ROOT) for p in found]


def python_blocks(text: str):
    """The bodies of the fenced blocks whose language is ``python``, in page order, dedented."""
    blocks = []
    for match in FENCE.finditer(text):
        if match.group("info").strip().split(" ")[0].lower() not in ("python", "py", "python3"):
            continue
        indent = match.group("indent")
        lines = [ln[len(indent):] if ln.startswith(indent) else ln for ln in match.group("body").splitlines()]
        blocks.append("\n".join(lines) + "\n")
    return blocks


def cases():
    out = []
    for page in pages():
        with open(os.path.join(ROOT, page), encoding="utf-8") as fh:
            blocks = python_blocks(fh.read())
        out += [pytest.param(page, idx, id=f"{page}-{idx}") for idx in range(len(blocks))]
    return out


def run_block(page: str, idx: int, cwd, env_extra=None) -> subprocess.CompletedProcess:
    with open(os.path.join(ROOT, page), encoding="utf-8") as fh:
        code = python_blocks(fh.read())[idx]
    script = cwd / "snippet.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=ROOT, AITB_DOCS_EPOCHS="2", PYTHONUNBUFFERED="1",
               **(env_extra or {}))
    return subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


def test_the_runner_finds_the_blocks():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n  ```python\n  y = 2\n  ```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\n"]
    assert any(page == "README.md" for page, *_ in (c.values for c in cases()))
    assert len(cases()) >= 10  # the README and the guide pages have many examples


@pytest.mark.timeout(TIMEOUT_S + 30)
@pytest.mark.parametrize("page, idx", cases())
def test_block_runs_as_pasted(page, idx, tmp_path, s3_bucket):
    result = run_block(page, idx, tmp_path, {"AITOOLBOX_BUCKET": s3_bucket})
    assert result.returncode == 0, (f"{page} python block {idx} failed:\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}")


@pytest.mark.timeout(TIMEOUT_S + 30)
def test_readme_quickstart_learns(tmp_path):
    """The quickstart's task is learnable: its validation loss goes down and accuracy is high."""
    result = run_block("README.md", 0, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"val_loss ([\d.]+) -> ([\d.]+), val accuracy ([\d.]+)", result.stdout)
    assert match, result.stdout
    first, last, accuracy = map(float, match.groups())
    assert last < 0.7 * first
    assert accuracy > 0.8
