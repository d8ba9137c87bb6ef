"""Linear probing through the generic loop: the encoder stays bit-identical, the head and its
BatchNorm statistics train, evaluation uses the running statistics, and the MAE schedule and
LARS reach the step (their fidelity: tests/test_linear_probe_parts.py)."""
import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs.linear_probe import get_config
from multimae_jax.evaluate import evaluate
from multimae_jax.train.checkpoint import restore_state_only
from multimae_jax.train import sharding
from multimae_jax.train.linear_probe import LinearProbeObjective
from multimae_jax.train.loop import train
from multimae_jax.train.step import Trainer
from multimae_jax.train.validate import ConfigError, validate
from train_helpers import SMALL, small_finetune

SMALL_PROBE = {
    "model.image_size": SMALL["model.image_size"],
    "model.overrides.depth": SMALL["model.overrides.depth"],
    "data.global_batch_size": 8,
    "data.eval_batch_size": 8,
    "data.synthetic_samples": 32,
    "data.synthetic_eval_samples": 12,
    "train.num_steps": 4,
    "train.log_every": 2,
    "train.checkpoint_every": 2,
    "optimizer.warmup_epochs": 0.25,  # one warm-up step: lr 0 at step 0, then > 0
}


def small_probe_config(**overrides):
    return small_finetune(get_config("in1k_tiny"), {**SMALL_PROBE, **overrides})


@pytest.fixture(scope="module")
def probed(tmp_path_factory, finished_run):
    workdir = tmp_path_factory.mktemp("probe") / "run"
    metrics = train(small_probe_config(init=str(finished_run)), workdir)
    return workdir, metrics


def test_only_the_head_and_its_statistics_change(probed, finished_run):
    workdir, metrics = probed
    assert np.isfinite(metrics["loss"])
    _, pre = restore_state_only(finished_run)
    _, state = restore_state_only(workdir)
    flat_pre = traverse_util.flatten_dict(pre["params"])
    flat = traverse_util.flatten_dict(state["params"])
    encoder = [k for k in flat if k[0] != "output_adapters"]
    assert len(encoder) > 10
    for key in encoder:  # frozen: bit-identical to the pre-trained weights
        np.testing.assert_array_equal(flat[key], flat_pre[key], err_msg="/".join(key))
    head = state["params"]["output_adapters"]["cls"]["head"]
    assert np.abs(head["kernel"]).max() > 0
    stats = state["buffers"]["output_adapters"]["cls"]["bn"]
    # 4 steps of momentum 0.1 from (0, 1): the statistics moved
    assert np.abs(stats["running_mean"]).max() > 0
    assert not np.allclose(stats["running_var"], 1.0)


def test_evaluates_with_the_running_statistics(probed, tmp_path):
    workdir, _ = probed
    history = json.loads((workdir / "metrics.json").read_text())
    assert [e["step"] for e in history] == [2, 4]
    assert history[-1]["val"]["samples"] == 12
    results = evaluate(small_probe_config(), workdir, tmp_path)
    assert results["val"]["acc1"] == history[-1]["val"]["acc1"]


def test_probes_any_subset_of_the_pretraining_inputs(finished_run, tmp_path):
    """rgb, depth and semseg in: each input adapter is the pre-trained one, frozen."""
    inputs = ("rgb", "depth", "semseg")
    metrics = train(small_probe_config(init=str(finished_run), **{
        "model.input_tasks": inputs, "train.num_steps": 2}), tmp_path / "run")
    assert np.isfinite(metrics["loss"])
    _, pre = restore_state_only(finished_run)
    _, state = restore_state_only(tmp_path / "run")
    adapters = state["params"]["input_adapters"]
    assert sorted(adapters) == sorted(inputs)
    for name in inputs:
        jax.tree.map(np.testing.assert_array_equal, adapters[name],
                     pre["params"]["input_adapters"][name])
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert history[-1]["val"]["samples"] == 12


def test_the_step_follows_maes_schedule():
    c = small_probe_config()
    objective = LinearProbeObjective(c)
    trainer = Trainer(objective, c, sharding.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1]),
                      total_steps=4, warmup_steps=2, base_lr=0.8)
    # MAE's adjust_learning_rate: lr x step / warmup (0.4 at step 1), where the official
    # cosine_scheduler's np.linspace(0, lr, 2) would give 0.8; then half a cosine to min_lr
    lrs = [float(trainer.schedule(s)) for s in range(4)]
    np.testing.assert_allclose(lrs, [0.0, 0.4, 0.8, 0.4], rtol=1e-6)


@pytest.mark.parametrize("override,message", [
    ({"head.pool": "cls"}, "config.head.pool='cls'"),
    ({"optimizer.schedule": "step"}, "config.optimizer.schedule='step'"),
    ({"optimizer.momentum": 1.0}, "config.optimizer.momentum=1.0"),
    ({"head.bn_groups": 3}, "config.head.bn_groups=3: each micro-batch of 8"),
])
def test_bad_configs_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(small_probe_config(**override), 1, 1)


def test_full_recipe_is_maes():
    c = get_config("in1k")
    validate(c, 8, 1)
    assert c.data.global_batch_size == 16384 and c.optimizer.blr == 0.1
    assert (c.train.epochs, c.optimizer.warmup_epochs, c.optimizer.weight_decay) == (90, 10.0, 0.0)
    assert c.optimizer.schedule == "mae" and c.head.pool == "mean"
