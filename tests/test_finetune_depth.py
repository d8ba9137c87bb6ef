"""NYUv2 depth fine-tuning through the generic loop (configs/finetune_depth.py): the DPT head
regresses the standardised depth with berHu, the evaluator scores the official validation subset
with the NYU metrics de-normalised by the config's mean and std, bad configs are refused, and
`multimae_jax.evaluate` scores a saved checkpoint stand-alone."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs.finetune_depth import SYNTHETIC_DEPTH_MEAN, SYNTHETIC_DEPTH_STD, get_config
from configs.finetune_semseg import get_config as get_semseg_config
from multimae_jax import checkpoint_format as fmt
from multimae_jax.convert import export, official
from multimae_jax.evaluate import CheckpointMismatchError, evaluate
from multimae_jax.train import sharding
from multimae_jax.train.checkpoint import restore_state_only
from multimae_jax.train.finetune import FinetuneObjective
from multimae_jax.train.loop import train
from multimae_jax.train.step import Trainer
from multimae_jax.train.validate import ConfigError, validate
from train_helpers import small_finetune
from xla_flags import cpu_flags

REPO = Path(__file__).resolve().parents[1]

# nyu_tiny at 32 px (2 x 2 patches: DPT's even grid) with a one-block encoder hooked four times
SMALL_DEPTH = {
    "model.image_size": 32,
    "model.overrides.depth": 1,
    "head.hooks": (0, 0, 0, 0),
    "data.global_batch_size": 8,
    "data.eval_batch_size": 8,
    "data.synthetic_samples": 32,
    "data.synthetic_eval_samples": 16,
    "data.max_val_images": 10,  # the official subset: 10 of the 16, a padded second batch
    "train.num_steps": 4,
    "train.log_every": 2,
    "train.checkpoint_every": 2,
}
METRICS = ("loss", "rmse", "rel", "srel", "log10", "delta_1", "delta_2", "delta_3")


def small_depth_config(**overrides):
    return small_finetune(get_config("nyu_tiny"), {**SMALL_DEPTH, **overrides})


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finetune_depth") / "run"
    return workdir, train(small_depth_config(), workdir)


def test_trains_and_scores_the_validation_subset(finetuned):
    workdir, metrics = finetuned
    assert np.isfinite(metrics["loss"])
    history = json.loads((workdir / "metrics.json").read_text())
    assert [e["step"] for e in history] == [2, 4]
    for entry in history:
        val = entry["val"]
        assert val["samples"] == 10  # max_val_images of the 16 scenes, each once
        for name in METRICS + tuple(f"{m}_dataset" for m in METRICS[1:]):
            assert np.isfinite(val[name]), name
        assert 0 <= val["delta_1"] <= val["delta_2"] <= val["delta_3"] <= 1
    # the official criterion: the smallest val loss
    assert restore_state_only(workdir / "best_val")[0] == _best(workdir)["step"]
    assert sorted(p.name for p in (workdir / "pictures").iterdir()) == [
        "val_step_0000002.png", "val_step_0000004.png"]


def test_the_config_mean_and_std_reach_the_data_and_the_metrics():
    config = small_depth_config()
    objective = FinetuneObjective(config)
    source = objective._source("train", 0, 4)
    row = objective._recipe(train=False)(source[0])
    raw = source[0]["depth"].astype(np.float64)
    # the eval crop of a 32 px scene is the scene: the target is the standardised raw depth
    valid = row["mask_valid"][..., 0]
    np.testing.assert_allclose(row["depth"][..., 0][valid],
                               ((raw - SYNTHETIC_DEPTH_MEAN) / SYNTHETIC_DEPTH_STD)[valid],
                               rtol=1e-5)
    assert (row["depth"][..., 0][~valid] == 0).all()
    mesh = sharding.make_mesh(config.mesh.to_dict())
    evaluators, _ = objective.evaluators(Trainer(objective, config, mesh, 4, 0, 1e-3), 4)
    assert (evaluators["val"].mean, evaluators["val"].std) == (SYNTHETIC_DEPTH_MEAN,
                                                               SYNTHETIC_DEPTH_STD)


@pytest.mark.parametrize("override,message", [
    ({"data.recipe": "panoptic"}, "config.data.recipe='panoptic'"),
    ({"data.mask": ""}, "config.target.mask_valid=True needs config.data.mask='mask_valid'"),
    ({"data.mask": "", "target.mask_valid": False},
     "config.data.recipe='depth' needs a validity mask"),
    ({"target.std": 0.0}, "config.target.mean / std"),
    ({"data.max_val_images": 0}, "config.data.max_val_images=0"),
    ({"head.hooks": (0, 1, 2, 3)}, "config.head.hooks=(0, 1, 2, 3): DPT needs four encoder "
                                   "block indices in 0..0"),
    ({"model.image_size": 48}, "config.model.image_size=48: the DPT head needs an even number"),
])
def test_bad_configs_name_the_field(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(small_depth_config(**override), 8, 1)


def _best(workdir) -> dict:
    history = json.loads((workdir / "metrics.json").read_text())
    return min(history, key=lambda e: e["val"]["loss"])


@pytest.mark.parametrize("form", ["workdir", "exported file"])
def test_evaluate_reproduces_the_best_checkpoints_metrics(finetuned, tmp_path, form):
    workdir, _ = finetuned
    checkpoint = workdir / "best_val"
    if form == "exported file":  # the file path: official names, as an official .pth has them
        _, variables = fmt.load_checkpoint(checkpoint)
        checkpoint = tmp_path / "weights.npz"
        export.save_state_dict(official.flax_to_official(variables), checkpoint)
    results = evaluate(small_depth_config(), checkpoint, tmp_path / "out")
    best = _best(workdir)
    for name in METRICS:
        assert results["val"][name] == pytest.approx(best["val"][name], rel=1e-5), name
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["step"] == (best["step"] if form == "workdir" else None)
    assert written["val"]["samples"] == 10
    assert (tmp_path / "out" / "val.png").is_file()


def test_evaluate_refuses_weights_of_another_architecture(finetuned, tmp_path):
    workdir, _ = finetuned
    config = get_semseg_config("nyu_rgb_tiny")
    config.update_from_flattened_dict({"model.image_size": 32, "model.overrides.depth": 1})
    with pytest.raises(CheckpointMismatchError, match=re.escape(
            f"{workdir / 'best_val'} does not match the model")):
        evaluate(config, workdir / "best_val", tmp_path)


def test_the_evaluate_command_writes_its_table_and_refuses_a_mismatch(finetuned, tmp_path):
    workdir, _ = finetuned
    cmd = [sys.executable, "-m", "multimae_jax.evaluate",
           "--config=configs/finetune_depth.py:nyu_tiny", f"--checkpoint={workdir / 'best_val'}", f"--output_dir={tmp_path}",
           *(f"--config.{k}={v}" for k, v in SMALL_DEPTH.items() if not k.startswith("train."))]
    env = {**os.environ, "XLA_FLAGS": cpu_flags(1)}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"eval 'val' at step {_best(workdir)['step']}" in out.stdout
    assert json.loads((tmp_path / "metrics.json").read_text())["val"]["samples"] == 10
    cmd[3] = "--config=configs/finetune_semseg.py:nyu_rgb_tiny"
    out = subprocess.run(cmd[:5] + ["--config.model.image_size=32"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and "does not match the model" in out.stderr, out.stderr[-3000:]
