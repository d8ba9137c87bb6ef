"""Taskonomy fine-tuning through the generic loop (configs/finetune_taskonomy.py) on a small tree
in the official layout: the head named as the official one ('depth') reads the depth_zbuffer
folder, split CSVs select their first rows, the DPT head trains on masked L1 and the evaluator
scores the validation rows; the synthetic `depth_tiny` target is the scenes' depth / 65535."""
import csv
import json
import re

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs.finetune_taskonomy import TASKS, get_config
from multimae_jax.data.synthetic import SyntheticScenes
from multimae_jax.evaluate import evaluate
from multimae_jax.train.finetune import FinetuneObjective
from multimae_jax.train.loop import train
from multimae_jax.train.validate import ConfigError, validate
from train_helpers import small_finetune

SIZE = 32
# the `depth` recipe shrunk to a one-block 96-wide encoder at 32 px, float32
SMALL = {
    "model.size": "tiny",
    "model.image_size": SIZE,
    "model.drop_path_rate": 0.0,
    "head.hooks": (0, 0, 0, 0),
    "head.layer_dims": (24, 48, 96, 96),
    "head.feature_dim": 32,
    "data.global_batch_size": 8,  # one sample per test device
    "data.eval_batch_size": 8,
    "data.num_workers": 0,
    "data.max_train_images": 8,
    "data.max_val_images": 5,  # the first 5 of the 6 validation rows, in a padded batch
    "train.compute_dtype": "float32",
    "train.num_steps": 2,
    "train.log_every": 1,
    "train.checkpoint_every": 2,
}


def _arrays(row) -> dict:
    """The stored arrays of a split row (building, point, view); values differ per row."""
    rng = np.random.default_rng([ord(row[0][0]), int(row[1]), int(row[2])])
    mask = np.full((SIZE, SIZE), 255, np.uint8)
    mask[5, 9] = 0  # dilated to the whole 4 x 4 block rows 4-7, columns 8-11
    return {"rgb": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
            "depth_zbuffer": rng.integers(0, 12000, (SIZE, SIZE), dtype=np.uint16),
            "mask_valid": mask}


def _write_split(root, name: str, rows) -> str:
    for b, p, v in rows:
        for folder, domain in (("rgb", "rgb"), ("depth_zbuffer", "depth_zbuffer"),
                               ("mask_valid", "depth_zbuffer")):
            path = root / folder / b / f"point_{p}_view_{v}_domain_{domain}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_arrays((b, p, v))[folder]).save(path)
    csv_path = root / f"{name}.csv"
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows([("building", "point", "view"), *rows])
    return str(csv_path)


@pytest.fixture(scope="module")
def taskonomy(tmp_path_factory):
    root = tmp_path_factory.mktemp("taskonomy")
    train_rows = [("ihlen", str(p), "0") for p in range(10)]
    val_rows = [("darden", str(p), str(p % 2)) for p in range(6)]
    return root, _write_split(root, "tiny_train", train_rows), _write_split(root, "tiny_val",
                                                                             val_rows)


def small_config(root, train_csv, val_csv, **overrides):
    c = small_finetune(get_config("depth"), {**SMALL, "data.path": str(root),
                                             "data.train_split": train_csv,
                                             "data.val_split": val_csv, **overrides})
    c.model.overrides = ml_collections.ConfigDict(dict(dim_tokens=96, depth=1, num_heads=3))
    return c


def test_the_depth_head_reads_depth_zbuffer_as_the_official_loader(taskonomy):
    root, train_csv, val_csv = taskonomy
    objective = FinetuneObjective(small_config(root, train_csv, val_csv))
    source = objective._source(val_csv, 0, 0, 5)
    assert len(source) == 5 and source[1]["key"] == "darden/point_1_view_1"
    row = objective._recipe(train=False)(source[1])
    raw = _arrays(("darden", "1", "1"))
    top = 8000 / 65535  # task_configs: depth clamped to 8000 / 65535, rescaled to [0, 1]
    np.testing.assert_allclose(row["depth"][..., 0],
                               np.minimum(raw["depth_zbuffer"] / 65535, top) / top, rtol=1e-5)
    np.testing.assert_array_equal(row["rgb"], raw["rgb"])  # same size: stored as it is
    expected = np.ones((SIZE, SIZE), bool)
    expected[4:8, 8:12] = False
    np.testing.assert_array_equal(row["mask_valid"][..., 0], expected)


def test_trains_evaluates_and_evaluates_again_stand_alone(taskonomy, tmp_path):
    root, train_csv, val_csv = taskonomy
    config = small_config(root, train_csv, val_csv)
    metrics = train(config, tmp_path / "run")
    assert np.isfinite(metrics["loss"])
    (entry,) = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert entry["step"] == 2 and entry["val"]["samples"] == 5
    assert np.isfinite(entry["val"]["loss"]) and np.isfinite(entry["val"]["loss_dataset"])
    again = evaluate(config, tmp_path / "run", tmp_path / "eval")
    assert again["val"]["loss"] == pytest.approx(entry["val"]["loss"], rel=1e-5)


def test_depth_tiny_regresses_the_synthetic_depth_over_65535():
    objective = FinetuneObjective(get_config("depth_tiny"))
    source = objective._source("", 0, 2)
    row = objective._recipe(train=True)(source[1])
    scene = SyntheticScenes(2, 64, 41, seed=1)[1]  # data.synthetic_seed
    np.testing.assert_allclose(row["depth"][..., 0], scene["depth"] / 65535, rtol=1e-5)


def test_every_official_task_has_a_config():
    for variant in TASKS:
        validate(get_config(variant), 8, 1)
    with pytest.raises(ValueError, match="unknown variant 'normal_tiny'"):
        get_config("normal_tiny")


@pytest.mark.parametrize("override,message", [
    ({"data.taskonomy_task": "albedo"}, "['albedo'] are not Taskonomy domains"),
    ({"data.taskonomy_overrides": {"gamma": 2.0}}, "config.data.taskonomy_overrides: ['gamma']"),
    ({"data.max_train_images": 0}, "config.data.max_train_images=0"),
])
def test_bad_configs_name_the_field(taskonomy, override, message):
    root, train_csv, val_csv = taskonomy
    config = small_config(root, train_csv, val_csv)
    if "data.taskonomy_overrides" in override:
        config.data.taskonomy_overrides = override.pop("data.taskonomy_overrides")
    config.update_from_flattened_dict(override)
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(config, 8, 1)
