"""Dense fine-tuning through the generic loop: the semseg objective trains, evaluates on its
schedule, keeps the best checkpoint, starts from pre-trained weights, and refuses bad configs."""
import json
import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs.finetune_semseg import get_config
from multimae_jax.train.checkpoint import restore_state_only
from multimae_jax.train.finetune import FinetuneObjective
from multimae_jax.train.loop import train
from multimae_jax.train.validate import ConfigError, validate
from train_helpers import SMALL, small_finetune

# The tiny RGB-D variant at the size of train_helpers.SMALL (32 px, one encoder block).
SMALL_FINETUNE = {
    "model.image_size": SMALL["model.image_size"],
    "model.overrides.depth": SMALL["model.overrides.depth"],
    "head.embed_dim": 16 * 8,
    "data.global_batch_size": 8,
    "data.eval_batch_size": 8,
    "data.synthetic_samples": 32,
    "data.synthetic_eval_samples": 12,  # 1.5 global batches: the second one half padding
    "train.num_steps": 4,
    "train.log_every": 2,
    "train.checkpoint_every": 2,
}


def small_finetune_config(**overrides):
    return small_finetune(get_config("nyu_rgbd_tiny"), {**SMALL_FINETUNE, **overrides})


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, finished_run):
    """A 4-step fine-tuning run from the finished pre-training run's weights."""
    workdir = tmp_path_factory.mktemp("finetune") / "run"
    metrics = train(small_finetune_config(init=str(finished_run)), workdir)
    return workdir, metrics


def test_trains_evaluates_on_schedule_and_keeps_the_best(finetuned):
    workdir, metrics = finetuned
    assert np.isfinite(metrics["loss"])
    history = json.loads((workdir / "metrics.json").read_text())
    assert [e["step"] for e in history] == [2, 4]
    for entry in history:
        val = entry["val"]
        assert val["samples"] == 12  # every sample once, the padding left out
        assert 0 <= val["mean_iou"] <= 100 and 0 <= val["pixel_accuracy"] <= 100
    ious = [e["val"]["mean_iou"] for e in history]
    best = history[ious.index(max(ious))]["step"]  # strictly better replaces: the first max
    assert restore_state_only(workdir / "best_val")[0] == best
    assert sorted(p.name for p in (workdir / "pictures").iterdir()) == [
        "val_step_0000002.png", "val_step_0000004.png"]


def test_starts_from_the_pretrained_encoder(finetuned, finished_run, tmp_path):
    _, pre = restore_state_only(finished_run)
    # the first step's lr is 0 (the warm-up starts from 0): the encoder stays as loaded
    start = train(small_finetune_config(**{"init": str(finished_run), "train.num_steps": 1}),
                  tmp_path / "run")
    assert np.isfinite(start["loss"])
    _, new = restore_state_only(tmp_path / "run")
    flat_pre = traverse_util.flatten_dict(pre["params"])
    flat_new = traverse_util.flatten_dict(new["params"])
    encoder = [k for k in flat_new if k[0] == "encoder"]
    assert encoder
    for key in encoder:
        np.testing.assert_array_equal(flat_new[key], flat_pre[key], err_msg="/".join(key))


@pytest.mark.parametrize("override,message", [
    ({"head.main_tasks": ("normals",)}, "config.head.main_tasks: ['normals'] are not input tasks"),
    ({"head.type": "upernet"}, "config.head.type='upernet'"),
    ({"target.loss": "dice"}, "config.target.loss='dice'"),
    ({"optimizer.layer_decay": 0.0}, "config.optimizer.layer_decay=0.0: must be in (0, 1]"),
    ({"optimizer.lr": -1.0}, "config.optimizer.lr=-1.0: must be finite and > 0"),
])
def test_bad_configs_name_the_field(override, message):
    config = small_finetune_config(**override)
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(config, 8, 1)


def test_the_encoder_takes_the_loops_remat_and_residual_switches():
    # remat is what fits the 640 px RGB-D recipe in 4 GiB instead of 32 (docs/benchmarks.md)
    model = FinetuneObjective(small_finetune_config(**{
        "train.remat": True, "train.residual_dtype": "bfloat16"})).model
    assert model.remat is True and model.residual_dtype == jnp.bfloat16
    default = FinetuneObjective(small_finetune_config()).model
    assert default.remat is False and default.residual_dtype == jnp.float32
