"""A stop request (SIGTERM / SIGINT) is agreed across processes only at log and checkpoint steps:
a collective on every step would block asynchronous dispatch. One process stops at once."""
import jax
import numpy as np
from jax.experimental import multihost_utils

from multimae_jax.train import loop


def fake_gather(calls: list, others: list):
    """process_allgather of this process's flag beside the other processes' `others`."""
    def gather(x):
        calls.append(int(x))
        return np.array([x, *others], np.int32)
    return gather


def test_one_process_stops_at_once_without_a_collective(monkeypatch):
    calls = []
    monkeypatch.setattr(multihost_utils, "process_allgather", fake_gather(calls, []))
    assert loop._stop_agreed(True, sync_step=False)
    assert not loop._stop_agreed(False, sync_step=True)
    assert calls == []


def test_several_processes_gather_only_at_sync_steps(monkeypatch):
    calls = []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", fake_gather(calls, [1]))
    assert not loop._stop_agreed(True, sync_step=False)  # signalled, but not a sync step
    assert calls == []
    assert loop._stop_agreed(False, sync_step=True)  # the other process was signalled
    assert calls == [0]
    monkeypatch.setattr(multihost_utils, "process_allgather", fake_gather(calls, [0]))
    assert not loop._stop_agreed(False, sync_step=True)
