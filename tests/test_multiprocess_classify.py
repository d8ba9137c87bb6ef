"""Classification and k-NN evaluation give the same numbers on one device, eight devices and
two processes (x 4 CPU devices), every validation sample counted once.

A one-device worker fine-tunes the tiny classification recipe (shrunk) for 2 steps and
evaluates at the end; two processes then evaluate its checkpoint with `multimae_jax.evaluate`.
Alongside, two processes evaluate the session's finished pre-training run with the tiny k-NN
(configs/knn.py), compared with the same evaluation in this test process (8 devices). Each run
is a subprocess (tests/multiprocess_worker.py), see tests/multiprocess_helpers.py.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from multiprocess_helpers import Runs
from test_knn import stand_alone_config, KNN_SMALL
from multimae_jax.evaluate import evaluate

TIMEOUT_S = float(os.environ.get("MULTIPROCESS_TEST_TIMEOUT_S", 420))
CLS_OVERRIDES = {
    "model.image_size": 32,
    "model.overrides.depth": 1,
    "data.global_batch_size": 8,
    "data.eval_batch_size": 8,
    "data.synthetic_samples": 16,
    "data.synthetic_eval_samples": 12,  # the second batch half padding, split over processes
    "train.num_steps": 2,
    "train.log_every": 1,
}
KNN_OVERRIDES = {"model.image_size": 32, "model.overrides.depth": 1, **KNN_SMALL}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, finished_run):
    tmp = tmp_path_factory.mktemp("multiprocess_classify")
    cls = Runs(tmp, "configs/finetune_cls.py:in1k_tiny", CLS_OVERRIDES)
    knn = Runs(tmp, "configs/knn.py:tiny", KNN_OVERRIDES)
    try:
        cls.start("train", 1, tmp / "train")
        knn.start_processes("knn", 2, 4, tmp / "knn", f"--evaluate={finished_run}")
        cls.wait(TIMEOUT_S)
        knn.wait(TIMEOUT_S)
        cls.start_processes("cls", 2, 4, tmp / "cls", f"--evaluate={tmp / 'train'}")
        cls.wait(TIMEOUT_S)
    finally:
        cls.kill()
        knn.kill()
    return tmp, {name: [runs.metrics(f"{name}{i}", i, 2, 8) for i in range(2)]
                 for name, runs in (("cls", cls), ("knn", knn))}


def test_classification_two_processes_equal_one_device(evaluated):
    tmp, results = evaluated
    one_device = json.loads((tmp / "train" / "metrics.json").read_text())[-1]["val"]
    assert one_device["samples"] == 12
    for got in results["cls"]:
        assert got["val"]["samples"] == 12
        assert got["val"]["acc1"] == one_device["acc1"]
        assert got["val"]["acc5"] == one_device["acc5"]
        np.testing.assert_allclose(got["val"]["loss"], one_device["loss"], rtol=1e-5)


def test_knn_two_processes_equal_eight_devices(evaluated, finished_run, tmp_path):
    _, results = evaluated
    here = evaluate(stand_alone_config(), finished_run, tmp_path)["knn"]  # 8 devices
    assert here["samples"] == 24
    for got in results["knn"]:
        assert got["knn"] == here
