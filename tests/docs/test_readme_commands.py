"""The README's shell commands are the ones CI runs (``.ci/run``), and agree with each other."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _read(*parts) -> str:
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as fh:
        return fh.read()


def _bash_commands(text: str):
    """Every command line of the README's bash blocks (indented blocks of lists included)."""
    out = []
    for match in re.finditer(r"^([ \t]*)```bash\n(.*?)^\1```", text, re.M | re.S):
        out += [ln.strip() for ln in match.group(2).splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return out


def _ci_test_command() -> str:
    lines = _read(".ci", "run").splitlines()
    marker = next(i for i, ln in enumerate(lines) if ln.startswith("# The README's test command"))
    return lines[marker + 1].strip()


def test_readme_test_command_is_what_ci_runs():
    ci = _ci_test_command()
    assert ci.endswith("python3 -m pytest") and "pip install torch==" in ci
    assert ci in _bash_commands(_read("README.md"))


def test_readme_example_command_installs_the_same_way():
    install = _ci_test_command().rsplit(" && ", 1)[0]
    assert f"{install} && python3 examples/train_digits.py" in _bash_commands(_read("README.md"))
    assert os.path.isfile(os.path.join(ROOT, "examples", "train_digits.py"))


def test_readme_cpu_install_pins_the_same_torch():
    pin = re.search(r"torch==[\d.]+", _ci_test_command()).group(0)
    cpu = [c for c in _bash_commands(_read("README.md")) if "download.pytorch.org/whl/cpu" in c]
    assert cpu == [f"python3 -m pip install {pin} --index-url https://download.pytorch.org/whl/cpu"]
