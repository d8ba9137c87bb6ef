"""Multi-process training equals single-process training.

Two local processes x 4 CPU devices (jax.distributed with a coordinator on 127.0.0.1, gloo CPU
collectives) run a few steps of the tiny pre-training; a one-process 8-device run of the same
config is the reference. Each process reads only its share of every global batch, the step's
collectives span both processes and Orbax writes one checkpoint from both, so equal final
parameters check the data split, the global-array assembly, the cross-process reductions and the
multi-process checkpoint together. The two processes stop after step 1 and resume together, so
the lock, the collective restore and the per-process data iterators are in it too.

Every run is a subprocess (tests/multiprocess_worker.py) with its own XLA_FLAGS, so the pytest
process (8 fake devices, see conftest.py) is left alone; the reference runs beside them.
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np
import pytest

from multimae_jax.train import checkpoint
from multiprocess_helpers import Runs, flat, restore_numpy

# A hang guard for the three runs together: they need about 190 s of CPU, 100 s on two idle
# cores, well over 200 s on a loaded machine.
TIMEOUT_S = float(os.environ.get("MULTIPROCESS_TEST_TIMEOUT_S", 420))
STEPS = 3
# The tiny recipe shrunk further so that three processes compile and run it on two cores:
# 32 px (2 x 2 patches of 16 per task, 12 tokens), 6 visible tokens, a one-block encoder.
# The optimizer is changed so that equal parameters mean equal gradients: no warm-up (the
# official warm-up starts at lr 0, and 3 steps would barely move anything) and lr 1e-3, so an
# update (~lr) is 100x the tolerance; Adam's eps 1e-4 instead of 1e-8, because Adam scales every
# gradient element to about +-lr, and elements whose true gradient is zero (the key bias of
# attention: softmax ignores a constant added to every logit) are pure rounding noise that
# summation order alone flips from +lr to -lr. With eps 1e-4 such elements move by ~1e-10.
OVERRIDES = {
    "optimizer.blr": 0.032,  # lr = blr * 8 / 256 = 1e-3
    "optimizer.warmup_epochs": 0.0,
    "optimizer.eps": 1e-4,
    "data.global_batch_size": 8,  # 1 sample per device, 4 per process
    "data.synthetic_samples": 32,
    "data.num_workers": 0,
    "model.image_size": 32,
    "model.overrides.depth": 1,
    "masking.num_encoded_tokens": 6,
    "train.num_steps": STEPS,
    "train.checkpoint_every": 1,
    "train.picture_every": 1000,
    "train.log_every": 1,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Runs the reference and the two processes at the same time; returns their workdirs."""
    tmp = tmp_path_factory.mktemp("multiprocess")
    one, two = tmp / "one_process", tmp / "two_processes"
    runs = Runs(tmp, "configs/pretrain.py:tiny", OVERRIDES)
    start = time.monotonic()
    try:
        runs.start("reference", 8, one)
        # the two processes stop after step 1 (as a preemption would), then resume together
        runs.start_processes("stopped", 2, 4, two, "--stop_at_step=1")
        runs.wait(TIMEOUT_S)
        runs.start_processes("resumed", 2, 4, two)
        runs.wait(TIMEOUT_S)
    finally:
        runs.kill()
    print(f"\nthe three runs took {time.monotonic() - start:.0f} s")
    metrics = {"reference": runs.metrics("reference", 0, 1, 8),
               **{f"resumed{i}": runs.metrics(f"resumed{i}", i, 2, 8) for i in range(2)}}
    return one, two, metrics


def test_last_step_metrics_match(trained):
    *_, metrics = trained
    ref = metrics.pop("reference")
    print(f"\nreference last step: loss {ref['loss']:.7f}, grad norm {ref['grad_norm']:.6f}")
    for name, m in metrics.items():
        print(f"{name}: loss {m['loss']:.7f}, grad norm {m['grad_norm']:.6f}")
        for key in ("loss", "grad_norm", "lr", "finite") + tuple(k for k in ref if "/" in k):
            np.testing.assert_allclose(m[key], ref[key], rtol=1e-5, err_msg=f"{name} {key}")


def test_two_processes_match_one(trained):
    one, two, _ = trained
    for workdir in (one, two):  # checkpoint_every=1: every step, the last 3 kept
        saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
        assert 1 in saved and STEPS in saved, saved
    state_one, state_two = restore_numpy(one, STEPS), restore_numpy(two, STEPS)
    for state in (state_one, state_two):
        assert int(state["step"]) == STEPS and int(state["skipped"]) == 0

    params_one, params_two = flat(state_one["params"]), flat(state_two["params"])
    assert params_one.keys() == params_two.keys()
    diffs = {k: float(np.max(np.abs(params_one[k] - params_two[k]))) for k in params_one}
    worst = max(diffs, key=diffs.get)
    # The updates are far above the tolerance, so agreement is not trivial.
    params_step1 = flat(restore_numpy(one, 1)["params"])
    moved = max(float(np.max(np.abs(v - params_one[k]))) for k, v in params_step1.items())
    print(f"\n{len(diffs)} parameter arrays after {STEPS} steps: largest |two processes - one| "
          f"{diffs[worst]:.3g} ({worst}); largest change from step 1 {moved:.3g}")
    assert moved > 5e-4
    for k in params_one:
        np.testing.assert_allclose(params_two[k], params_one[k], rtol=0, atol=1e-5, err_msg=k)
    opt_one, opt_two = flat(state_one["opt_state"]), flat(state_two["opt_state"])
    assert opt_one.keys() == opt_two.keys()
    opt_diff = max(float(np.max(np.abs(opt_one[k] - opt_two[k]))) for k in opt_one)
    print(f"largest |two processes - one| of the optimizer state: {opt_diff:.3g}")
    for k in opt_one:
        np.testing.assert_allclose(opt_two[k], opt_one[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_restore_state_only_reads_a_two_process_checkpoint(trained):
    _, two, _ = trained
    step, state = checkpoint.restore_state_only(two)
    assert step == STEPS
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(state["params"]))
