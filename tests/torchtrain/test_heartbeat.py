"""The heartbeats that name a frozen rank on a collective timeout (strategies/heartbeat.py), in one process."""
import threading

import pytest
import torch.distributed as dist

from aitoolbox.torchtrain.train_loop.strategies import heartbeat
from aitoolbox.torchtrain.train_loop.strategies.heartbeat import Heartbeat, beat_interval, explain_timeout


def _beats(store, world_size, interval=0.02):
    return [Heartbeat(store, r, world_size, interval, lambda r=r: (1, 10 + r)).start() for r in range(world_size)]


def test_the_rank_that_stopped_beating_is_named_and_the_others_are_not():
    beats = _beats(dist.HashStore(), 3)
    beats[1].stop()
    message = explain_timeout(beats[0], 5.0, "ddp")
    assert "Rank 1 stopped answering" in message
    assert "rank 0 only waited for it" in message
    assert "Rank 2" not in message and "Ranks" not in message
    assert "rank 2 at epoch 1, iteration 12" in message
    for b in beats:
        b.stop()


def test_every_rank_beating_is_reported_as_alive_with_positions():
    beats = _beats(dist.HashStore(), 2)
    message = explain_timeout(beats[1], 5.0, "fsdp")
    assert message.startswith("gpu_mode='fsdp': a cross-rank operation on rank 1 waited longer than timeout=5 s.")
    assert "Every rank is alive" in message and "stopped answering" not in message
    assert "rank 0 at epoch 1, iteration 10; rank 1 at epoch 1, iteration 11" in message
    for b in beats:
        b.stop()


def test_a_rank_that_never_beat_counts_as_stopped():
    store = dist.HashStore()
    me = Heartbeat(store, 0, 3, 0.02, lambda: (0, 0)).start()
    Heartbeat(store, 2, 3, 0.02, lambda: (0, 0)).start()  # rank 1 never started
    silent, _ = me.diagnose()
    assert silent == [1]
    me.stop()


class _HungStore:
    """A store whose host has stopped: reads never return."""

    def __init__(self):
        self.release = threading.Event()

    def set(self, key, value):
        pass

    def check(self, keys):
        self.release.wait()
        return False


def test_a_store_that_does_not_answer_blames_its_host_within_the_read_limit(monkeypatch):
    monkeypatch.setattr(heartbeat, "READ_LIMIT_S", 0.2)
    store = _HungStore()
    me = Heartbeat(store, 1, 2, 0.02, lambda: (0, 0)).start()
    message = explain_timeout(me, 30.0, "ddp")
    assert "rendezvous store did not answer" in message and "rank 0" in message
    store.release.set()
    me.stop()


@pytest.mark.parametrize("timeout, interval", [(5.0, 0.5), (1800.0, 5.0), (20.0, 2.0), (1.0, 0.5)])
def test_beat_interval_is_a_tenth_of_the_timeout_within_bounds(timeout, interval):
    assert beat_interval(timeout) == interval


@pytest.mark.parametrize("text, expected", [
    ("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv operation to complete", True),
    ("Socket Timeout", True),
    ("boom from rank 1", False),
])
def test_collective_timeouts_are_told_from_other_errors(text, expected):
    assert heartbeat.is_collective_timeout(RuntimeError(text)) is expected
    assert not heartbeat.is_collective_timeout(ValueError(text))
