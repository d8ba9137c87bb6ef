"""Random erasing of the classification recipe: the host's box draw against the official
`RandomErasing._erase` with its Python `random` scripted (fixture `random_erasing`, made by
tests/official/erasing_case.py), the device fill (`multimae_jax/erasing.py`), the config fields
and the objective's wiring (boxes in the batch, erased after normalisation, before mixup)."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.finetune_cls import get_config
from multimae_jax import erasing, mixup
from multimae_jax.data import classify_transforms as ct
from multimae_jax.train.classify import ClassifyObjective
from multimae_jax.train.validate import ConfigError, validate

FIXTURE = Path(__file__).parent / "fixtures" / "official" / "random_erasing.json"
META = json.loads(FIXTURE.read_text())


def _samples(case: dict):
    """The official case's scripted draws as `erase_boxes_from_samples` arguments; the tries and
    corners the official never drew are NaN (an error if our rules used them)."""
    calls = list(case["calls"])
    probability, re_count = case["probability"], case["re_count"]
    _, height, width = case["image"]
    name, _, apply_uniform = calls.pop(0)
    assert name == "random"
    count = 1
    if apply_uniform <= probability and re_count > 1:
        name, args, count = calls.pop(0)
        assert (name, args) == ("randint", [1, re_count])
    area = np.full((re_count, ct.ERASE_TRIES), np.nan)
    aspect = np.full((re_count, ct.ERASE_TRIES), np.nan)
    top, left = np.full(re_count, np.nan), np.full(re_count, np.nan)
    if apply_uniform > probability:
        return (height, width, probability, re_count, apply_uniform, count, area, aspect, top,
                left)
    for i in range(count):
        for t in range(ct.ERASE_TRIES):
            (n1, args1, area[i, t]), (n2, args2, aspect[i, t]) = calls.pop(0), calls.pop(0)
            assert (n1, n2) == ("uniform", "uniform")
            assert np.allclose(args1, ct.ERASE_AREA) and np.allclose(args2, ct.ERASE_LOG_ASPECT)
            if calls and calls[0][0] == "randint":  # accepted: the corner's two randints
                for target in (top, left):
                    _, (lo, hi), value = calls.pop(0)
                    target[i] = (value - lo + 0.5) / (hi - lo + 1)  # floor(u (hi + 1)) = value
                break
    assert not calls
    return height, width, probability, re_count, apply_uniform, count, area, aspect, top, left


@pytest.mark.parametrize("name", sorted(META["cases"]))
def test_box_draw_matches_the_official(name):
    case = META["cases"][name]
    got = ct.erase_boxes_from_samples(*_samples(case))
    want = np.zeros((case["re_count"], 4), np.int32)
    for k, box in enumerate(case["boxes"]):
        want[k] = box
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def test_fixed_arguments_match_the_official():
    recipe = META["recipe"]
    assert ct.ERASE_AREA == (recipe["min_area"], recipe["max_area"])
    assert np.allclose(ct.ERASE_LOG_ASPECT, recipe["log_aspect"], rtol=0, atol=1e-15)
    assert recipe["min_count"] == 1 and recipe["mode"] == "pixel"
    assert get_config("in1k").augment.remode == recipe["mode"]


def test_rng_draw_is_in_range_and_takes_fixed_randomness():
    rng, hits, shares = np.random.default_rng(0), 0, []
    for _ in range(1000):
        boxes = ct.draw_erase_boxes(20, 24, 0.5, 2, rng)
        assert boxes.shape == (2, 4) and boxes.dtype == np.int32
        top, left, h, w = boxes.T
        assert (top >= 0).all() and (left >= 0).all()
        assert (top + h <= 20).all() and (left + w <= 24).all() and (h < 20).all()
        if h.any():
            hits += 1
            shares.append((h * w).sum() / (20 * 24))
    assert 0.45 < hits / 1000 < 0.55  # reprob 0.5
    assert 0.02 * 0.5 < np.mean(shares) < 1 / 3  # area / count per box
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    ct.draw_erase_boxes(16, 16, 0.0, 3, a)
    ct.draw_erase_boxes(16, 16, 1.0, 3, b)
    assert a.random() == b.random()  # the same amount of randomness, erased or not


def _image_and_boxes():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 64, 48, 3)) + 5.0  # far from N(0, 1)
    boxes = jnp.array([[[2, 3, 40, 30], [30, 20, 20, 20]],  # overlapping: the second wins
                       [[0, 0, 0, 0], [10, 5, 1, 7]]], jnp.int32)  # no box, then a 1 x 7 box
    mask = np.zeros((2, 64, 48), bool)
    mask[0, 2:42, 3:33] = mask[0, 30:50, 20:40] = mask[1, 10:11, 5:12] = True
    return x, boxes, mask


def test_fill_changes_exactly_the_boxes():
    x, boxes, mask = _image_and_boxes()
    key = jax.random.PRNGKey(2)
    const = np.asarray(erasing.erase_boxes(x, boxes, key, "const"))
    np.testing.assert_array_equal(const[mask], 0.0)
    np.testing.assert_array_equal(const[~mask], np.asarray(x)[~mask])
    pixel = np.asarray(erasing.erase_boxes(x, boxes, key, "pixel"))
    np.testing.assert_array_equal(pixel[~mask], np.asarray(x)[~mask])
    noise = pixel[mask]  # 1451 pixels x 3 channels
    assert abs(noise.mean()) < 0.1 and abs(noise.std() - 1) < 0.1
    assert len(np.unique(noise)) > 0.99 * noise.size  # per pixel and channel
    rand = np.asarray(erasing.erase_boxes(x, boxes, key, "rand"))
    np.testing.assert_array_equal(rand[~mask], np.asarray(x)[~mask])
    second = rand[0, 30:50, 20:40].reshape(-1, 3)
    first_only = rand[0, 2:30, 3:20].reshape(-1, 3)
    assert (second == second[0]).all() and (first_only == first_only[0]).all()
    assert (second[0] != first_only[0]).all()  # one colour per box and channel
    assert abs(rand[mask]).max() < 4.5  # normal draws, not the +5 image
    with pytest.raises(ValueError, match="'noise'"):
        erasing.erase_boxes(x, boxes, key, "noise")


def _config(**augment):
    c = get_config("in1k_tiny")
    c.model.image_size = 32
    c.model.overrides.depth = 1
    c.data.global_batch_size = 8
    c.mixup.update(mixup_alpha=0.8, cutmix_alpha=1.0)  # the recipe's (the tiny variant mixes none)
    c.augment.update(augment)
    return c


def test_config_fields_are_checked():
    validate(_config(reprob=0.25, remode="rand", recount=2), 1, 1)
    for augment, message in (({"reprob": 0.25, "remode": "zeros"}, "config.augment.remode='zeros'"),
                             ({"reprob": 1.5}, r"config.augment.reprob=1.5: must be in \[0, 1\]"),
                             ({"reprob": 0.25, "recount": 0}, "config.augment.recount=0")):
        with pytest.raises(ConfigError, match=message):
            validate(_config(**augment), 1, 1)


def test_objective_erases_after_normalising_and_before_mixing(monkeypatch):
    off = ClassifyObjective(_config())
    assert off.batch_keys == ("rgb", "label")
    row = off._recipe(train=True)({"rgb": np.zeros((40, 40, 3), np.uint8), "label": 1},
                                  np.random.default_rng(0))
    assert set(row) == {"rgb", "label"}

    objective = ClassifyObjective(_config(reprob=1.0, recount=2))
    assert objective.batch_keys == ("rgb", "label", "erase")
    row = objective._recipe(train=True)({"rgb": np.zeros((40, 40, 3), np.uint8), "label": 1},
                                        np.random.default_rng(0))
    assert row["erase"].shape == (2, 4) and row["erase"].dtype == np.int32
    assert row["erase"][0, 2] > 0  # reprob 1: a box
    batch = objective.random_batch(jax.random.PRNGKey(0), 8)
    assert batch["erase"].shape == (8, 2, 4) and batch["erase"].dtype == jnp.int32

    objective = ClassifyObjective(_config(reprob=1.0, remode="const", recount=2))
    seen = {}

    def recording_mix(x, labels, *args, **kwargs):
        seen["mix"] = np.asarray(x)
        return x + 1.0, jax.nn.one_hot(labels, objective.config.target.num_classes)

    def fake_logits(params, buffers, x, key, train):  # no model: its input recorded
        seen["model"] = np.asarray(x["rgb"])
        return jnp.zeros((x["rgb"].shape[0], objective.config.target.num_classes))

    monkeypatch.setattr(mixup, "mix_batch", recording_mix)
    monkeypatch.setattr(objective, "_logits", fake_logits)
    batch["erase"] = jnp.zeros_like(batch["erase"]).at[:, 1].set(jnp.array([4, 6, 10, 12]))
    batch["rgb"] = jnp.zeros_like(batch["rgb"])  # normalises to -mean / std < 0
    objective.loss({"params": {}}, {}, batch, jax.random.PRNGKey(1))
    mask = np.zeros((8, 32, 32), bool)
    mask[:, 4:14, 6:18] = True
    np.testing.assert_array_equal(seen["mix"][mask], 0.0)  # erased ('const') ...
    assert (seen["mix"][~mask] < 0).all()  # ... after normalising
    np.testing.assert_array_equal(seen["model"], seen["mix"] + 1.0)  # then mixed
