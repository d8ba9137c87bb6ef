"""Classification fine-tuning through the generic loop: the tiny recipe trains from pre-trained
weights, evaluates top-1 / top-5 on its schedule, keeps the best checkpoint, evaluates
stand-alone to the same numbers, and refuses bad configs and checkpoints."""
import json

import numpy as np
import pytest

from configs.finetune_cls import get_config
from multimae_jax.evaluate import CheckpointMismatchError, evaluate
from multimae_jax.train.checkpoint import restore_state_only
from multimae_jax.train.loop import train
from multimae_jax.train.validate import ConfigError, validate
from train_helpers import SMALL, small_finetune

# The tiny recipe at the size of train_helpers.SMALL (32 px, one encoder block).
SMALL_CLS = {
    "model.image_size": SMALL["model.image_size"],
    "model.overrides.depth": SMALL["model.overrides.depth"],
    "data.global_batch_size": 8,
    "data.eval_batch_size": 8,
    "data.synthetic_samples": 32,
    "data.synthetic_eval_samples": 12,  # 1.5 global batches: the second one half padding
    "train.num_steps": 4,
    "train.log_every": 2,
    "train.checkpoint_every": 2,
    # the full recipe's augmentation (the tiny variant drops it to learn within minutes)
    "augment.randaugment": "rand-m9-mstd0.5-inc1",
    "mixup.mixup_alpha": 0.8,
    "mixup.cutmix_alpha": 1.0,
}


def small_cls_config(**overrides):
    return small_finetune(get_config("in1k_tiny"), {**SMALL_CLS, **overrides})


@pytest.fixture(scope="module")
def classified(tmp_path_factory, finished_run):
    """A 4-step classification run from the finished pre-training run's weights."""
    workdir = tmp_path_factory.mktemp("classify") / "run"
    metrics = train(small_cls_config(init=str(finished_run)), workdir)
    return workdir, metrics


def test_trains_evaluates_and_keeps_the_best(classified):
    workdir, metrics = classified
    assert np.isfinite(metrics["loss"])
    history = json.loads((workdir / "metrics.json").read_text())
    assert [e["step"] for e in history] == [2, 4]
    for entry in history:
        val = entry["val"]
        assert val["samples"] == 12  # every sample once, the padding left out
        assert 0 <= val["acc1"] <= val["acc5"] <= 100
        # counts over 12 samples: acc1 is a multiple of 100 / 12
        assert val["acc1"] * 12 / 100 == pytest.approx(round(val["acc1"] * 12 / 100))
    accs = [e["val"]["acc1"] for e in history]
    best = history[accs.index(max(accs))]["step"]  # strictly better replaces: the first max
    assert restore_state_only(workdir / "best_val")[0] == best
    assert (workdir / "pictures" / "val_step_0000004.png").is_file()


def test_evaluate_cli_gives_the_training_numbers(classified, tmp_path):
    workdir, _ = classified
    last = json.loads((workdir / "metrics.json").read_text())[-1]
    results = evaluate(small_cls_config(), workdir, tmp_path)
    assert results["val"]["acc1"] == last["val"]["acc1"]
    assert results["val"]["acc5"] == last["val"]["acc5"]
    assert results["val"]["loss"] == pytest.approx(last["val"]["loss"], rel=1e-5)
    assert json.loads((tmp_path / "metrics.json").read_text())["step"] == 4
    assert (tmp_path / "val.png").is_file()


def test_a_checkpoint_of_another_model_is_refused(classified, tmp_path):
    workdir, _ = classified
    with pytest.raises(CheckpointMismatchError, match="output_adapters.cls"):
        evaluate(small_cls_config(**{"target.num_classes": 5}), workdir, tmp_path)


def test_init_from_another_architecture_is_refused(finished_run, tmp_path):
    # the pre-training run's encoder is 96 wide; this model's is 64
    with pytest.raises(ValueError, match="encoder"):
        train(small_cls_config(**{"init": str(finished_run), "model.overrides.dim_tokens": 64,
                                  "model.overrides.num_heads": 2}), tmp_path / "run")


@pytest.mark.parametrize("override,message", [
    ({"mixup.groups": 3}, "config.mixup.groups=3"),
    ({"mixup.prob": 1.5}, "config.mixup.prob=1.5: must be in [0, 1]"),
    ({"augment.randaugment": "rand-x9"}, "config.augment.randaugment='rand-x9'"),
    ({"augment.crop_pct": 1.2}, "config.augment.crop_pct=1.2"),
    ({"data.max_val_images": 0}, "config.data.max_val_images=0: must be -1"),
    ({"model.input_tasks": ("rgb", "depth"), "augment.randaugment": "rand-m9-mstd0.5-inc1"},
     "RandAugment and random erasing act on one rgb"),
    ({"model.input_tasks": ("rgb", "semseg"), "augment.randaugment": "", "mixup.cutmix_alpha": 1},
     "mixup / cutmix blend images, not the label maps of ['semseg']"),
])
def test_bad_configs_are_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        validate(small_cls_config(**override), 1, 1)


def test_full_recipe_matches_the_official_yaml():
    c = get_config("in1k")
    validate(c, 8, 1)
    assert (c.optimizer.blr, c.optimizer.layer_decay, c.optimizer.weight_decay) == (5e-4, 0.65,
                                                                                   0.05)
    assert (c.train.epochs, c.optimizer.warmup_epochs, c.optimizer.min_lr) == (100, 5.0, 1e-6)
    assert c.data.global_batch_size == 1024 and c.model.drop_path_rate == 0.1
    assert c.augment.randaugment == "rand-m9-mstd0.5-inc1"
    assert (c.mixup.mixup_alpha, c.mixup.cutmix_alpha, c.mixup.switch_prob,
            c.mixup.label_smoothing) == (0.8, 1.0, 0.5, 0.1)
