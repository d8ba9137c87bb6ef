"""Shared pytest fixtures: the official-implementation reference files (tests/fixtures/official,
written by tests/official/make_fixtures.py)."""

from __future__ import annotations

import os
from pathlib import Path

from xla_flags import cpu_flags

# Sharding tests need several devices: 8 fake CPU devices, set before JAX starts.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + cpu_flags(8)).strip()

import jax
import numpy as np
import pytest

# Training tests compile the same step several times (straight, interrupted, resumed runs):
# a persistent compilation cache makes the repeats cheap. It is keyed on the program, so it
# never changes results.
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("MULTIMAE_TEST_JAX_CACHE", "/tmp/multimae_jax_test_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

OFFICIAL_DIR = Path(__file__).resolve().parent / "fixtures" / "official"


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A finished run of train_helpers.FINISHED (checkpoints at steps 2, 4, 6, 8), written once
    for the restart, checkpoint and chaos tests; they work on copies."""
    from multimae_jax.train.loop import train
    from train_helpers import FINISHED, small_config
    workdir = tmp_path_factory.mktemp("finished") / "run"
    train(small_config(**FINISHED), workdir)
    return workdir


@pytest.fixture(scope="session")
def official_dir() -> Path:
    """Folder of reference checkpoints (.pth) and outputs (.npz + .json) from the official
    PyTorch MultiMAE, committed with the tests; tests/official/README.md says how to remake it."""
    return OFFICIAL_DIR


@pytest.fixture(scope="session")
def official_npz(official_dir):
    """``official_npz(name)`` -> dict of the arrays in ``<official_dir>/<name>.npz``."""
    cache: dict[str, dict[str, np.ndarray]] = {}

    def load(name: str) -> dict[str, np.ndarray]:
        if name not in cache:
            with np.load(official_dir / f"{name}.npz", allow_pickle=False) as npz:
                cache[name] = {key: npz[key] for key in npz.files}
        return cache[name]

    return load


@pytest.fixture(scope="session")
def official_state_dict(official_npz):
    """``official_state_dict(name)`` -> the official model's state dict saved in
    ``<name>.npz`` (its 'param/<key>' entries, keyed by <key>)."""
    def load(name: str) -> dict[str, np.ndarray]:
        return {k[len("param/"):]: v for k, v in official_npz(name).items() if k.startswith("param/")}

    return load
