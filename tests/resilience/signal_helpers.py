"""Running ``preempt_script.py`` in a subprocess and signalling it at a known batch boundary."""
import os
import signal
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "preempt_script.py")


def script_env(extra=None):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    env.update(extra or {})
    return env


def run_script(root, out, *args, env=None, timeout=180):
    """Run the script to its end; returns the CompletedProcess."""
    return subprocess.run([sys.executable, SCRIPT, "--root", str(root), "--out", str(out), *map(str, args)],
                          env=script_env(env), capture_output=True, text=True, timeout=timeout)


def wait_for(path, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"the script ended before {path} appeared:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout}s")
        time.sleep(0.05)


def run_and_signal(root, out, pause_at, signum=signal.SIGTERM, target="self", *args, env=None, timeout=180,
                   ranks=1, second_signal_after=None):
    """Start the script, wait until it pauses at batch ``pause_at``, send ``signum`` and let it go on.

    ``second_signal_after``: send the signal again this many seconds after the first.
    ``target``: ``'self'`` (the script's process: the DDP parent under ``--ddp``) or ``'rank<r>'``
    (the process of DDP rank r). Returns ``(returncode, output, seconds from the signal to the exit)``.
    """
    os.makedirs(root, exist_ok=True)
    proc = subprocess.Popen([sys.executable, SCRIPT, "--root", str(root), "--out", str(out),
                             "--pause-at", str(pause_at), *map(str, args)], env=script_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for rank in range(ranks):
            wait_for(os.path.join(root, f"paused_rank{rank}"), proc)
        if target == "self":
            pid = proc.pid
        else:
            with open(os.path.join(root, f"paused_{target}")) as f:
                pid = int(f.read())
        os.kill(pid, signum)
        sent = time.monotonic()
        time.sleep(0.5)  # the handler runs before the paused batch ends
        if second_signal_after is not None:
            time.sleep(max(second_signal_after - 0.5, 0))
            os.kill(pid, signum)
            time.sleep(0.5)
        open(os.path.join(root, "go"), "w").close()
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def checkpoint_folder(root):
    project = os.path.join(root, "proj")
    (experiment,) = os.listdir(project)
    return os.path.join(project, experiment, "checkpoint_model")


def load_weights(path):
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(actual, expected):
    assert actual.keys() == expected.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name
