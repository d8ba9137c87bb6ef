"""Sharded, multi-process and resumed fine-tuning equal the plain run.

The tiny RGB-D segmentation recipe, shrunk further, runs 4 steps with an evaluation every 2 two
ways: on one device (the plain run), and as two local processes x 4 CPU devices (data parallel
over 8) that stop after step 3 (as a preemption would) and resume together. Both must end with
the same parameters and optimizer state, log the same losses and write the same validation
metrics, over every validation sample once (12 samples in batches of 8: the second batch half
padding, split across the two processes). Each run is a subprocess
(tests/multiprocess_worker.py), see tests/multiprocess_helpers.py.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from multiprocess_helpers import Runs, flat, restore_numpy

TIMEOUT_S = float(os.environ.get("MULTIPROCESS_TEST_TIMEOUT_S", 420))
STEPS = 4
CONFIG = "configs/finetune_semseg.py:nyu_rgbd_tiny"
# 32 px, a one-block encoder and a small head: four runs compile on two cores. As in
# tests/test_multiprocess.py: no warm-up and Adam's eps 1e-4, so that equal parameters mean
# equal gradients (eps 1e-8 turns the zero gradient of attention key biases into +-lr noise).
OVERRIDES = {
    "model.image_size": 32,
    "model.overrides.depth": 1,
    "head.embed_dim": 16 * 8,
    "optimizer.warmup_epochs": 0.0,
    "optimizer.eps": 1e-4,
    "data.global_batch_size": 8,
    "data.eval_batch_size": 8,
    "data.synthetic_samples": 16,  # 2 steps per epoch
    "data.synthetic_eval_samples": 12,
    "evals.val.every_epochs": 1,
    "train.num_steps": STEPS,
    "train.checkpoint_every": 1,
    "train.keep_checkpoints": STEPS,
    "train.log_every": 1,
}
RUNS = ("one_device", "two_processes")


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """{run name: workdir}, {run name: the last logged metrics} of the runs."""
    tmp = tmp_path_factory.mktemp("multiprocess_finetune")
    workdirs = {name: tmp / name for name in RUNS}
    runs = Runs(tmp, CONFIG, OVERRIDES)
    start = time.monotonic()
    try:
        runs.start("one_device", 1, workdirs["one_device"])
        runs.start_processes("stopped", 2, 4, workdirs["two_processes"], "--stop_at_step=3")
        runs.wait(TIMEOUT_S)
        runs.start_processes("resumed", 2, 4, workdirs["two_processes"])
        runs.wait(TIMEOUT_S)
    finally:
        runs.kill()
    print(f"\nthe runs took {time.monotonic() - start:.0f} s")
    metrics = {"one_device": runs.metrics("one_device", 0, 1, 1),
               **{f"process{i}": runs.metrics(f"resumed{i}", i, 2, 8) for i in range(2)}}
    return workdirs, metrics


def test_losses_match(finetuned):
    _, metrics = finetuned
    ref = metrics.pop("one_device")
    for name, m in metrics.items():
        for key in ("loss", "grad_norm", "lr"):
            np.testing.assert_allclose(m[key], ref[key], rtol=1e-5, err_msg=f"{name} {key}")


def test_states_match(finetuned):
    workdirs, _ = finetuned
    states = {name: restore_numpy(workdirs[name], STEPS) for name in RUNS}
    ref_params = flat(states["one_device"]["params"])
    moved = max(float(np.max(np.abs(v - ref_params[k])))
                for k, v in flat(restore_numpy(workdirs["one_device"], 1)["params"]).items())
    assert moved > 5e-4  # the updates are far above the tolerance
    ref_opt = flat(states["one_device"]["opt_state"])
    for name in RUNS[1:]:
        params, opt = flat(states[name]["params"]), flat(states[name]["opt_state"])
        assert params.keys() == ref_params.keys() and opt.keys() == ref_opt.keys()
        for k in params:
            np.testing.assert_allclose(params[k], ref_params[k], rtol=0, atol=1e-5,
                                       err_msg=f"{name} {k}")
        for k in opt:
            np.testing.assert_allclose(opt[k], ref_opt[k], rtol=1e-5, atol=1e-7,
                                       err_msg=f"{name} {k}")


def test_validation_metrics_match(finetuned):
    workdirs, _ = finetuned
    history = {name: json.loads((workdirs[name] / "metrics.json").read_text()) for name in RUNS}
    ref = history["one_device"]
    assert [e["step"] for e in ref] == [2, 4]
    for name in RUNS[1:]:
        assert [e["step"] for e in history[name]] == [2, 4], name
        for got, want in zip(history[name], ref):
            assert got["val"]["samples"] == want["val"]["samples"] == 12
            assert got["val"].keys() == want["val"].keys()
            for key, value in want["val"].items():
                np.testing.assert_allclose(got["val"][key], value, rtol=1e-4, atol=1e-4,
                                           err_msg=f"{name} step {want['step']} {key}")
