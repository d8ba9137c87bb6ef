"""Mixup / CutMix of the ImageNet fine-tuning (multimae_jax/mixup.py) against the official timm
`Mixup` (tests/fixtures/official/mixup_batch, NCHW, its np.random draws recorded): the same draws
give the same mixed batch and targets; our own draws follow the official distributions and box
geometry; sharding the batch changes nothing."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multimae_jax.mixup import MixDraw, check_options, draw_mixup, mix_batch
from multimae_jax.train.sharding import batch_sharding, make_mesh

RECIPE = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5)
CASES = ("mixup", "cutmix_inside", "cutmix_rect", "cutmix_corner", "cutmix_minmax", "prob_miss",
         "groups2")


@pytest.fixture(scope="module")
def official(official_npz, official_dir):
    meta = json.loads((official_dir / "mixup_batch.json").read_text())
    return official_npz("mixup_batch"), meta


def nhwc(x):
    return np.moveaxis(x, 1, -1)


def official_draw(ref, case_meta, case):
    """The MixDraw of the official run's recorded draws (of its first group)."""
    betas = [value for name, _, value in case_meta["np_random_calls"] if name == "beta"]
    box = ref.get(f"{case}/box")
    cutmix = box is not None
    y0, y1, x0, x1 = box[0] if cutmix else (0, 0, 0, 0)
    return MixDraw(apply=jnp.asarray(bool(betas)), use_cutmix=jnp.asarray(cutmix),
                   lam=jnp.float32(betas[0] if betas else 1.0),
                   y0=jnp.int32(y0), y1=jnp.int32(y1), x0=jnp.int32(x0), x1=jnp.int32(x1),
                   lam_corrected=jnp.float32(ref[f"{case}/lam"][0]))


@pytest.mark.parametrize("case", CASES)
def test_official_draws_give_the_official_batch_and_targets(official, case):
    ref, meta = official
    case_meta = meta["cases"][case]
    num_classes, smoothing = meta["recipe"]["num_classes"], meta["recipe"]["label_smoothing"]
    x = nhwc(ref[case_meta["input"]])
    draw = official_draw(ref, case_meta, case)
    got_x, got_t = jax.jit(mix_batch, static_argnums=(3, 4, 5))(
        x, ref["labels"], draw, num_classes, smoothing, case_meta["groups"])
    assert got_x.dtype == jnp.float32 and got_t.dtype == jnp.float32
    np.testing.assert_allclose(got_x, nhwc(ref[f"{case}/x_mixed"]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_t, ref[f"{case}/targets"], rtol=1e-6, atol=1e-7)
    if case in ("prob_miss",):
        np.testing.assert_array_equal(got_x, x)  # unmixed: bit for bit


def test_the_fixture_covers_the_lam_correction_and_clipping(official):
    ref, meta = official
    for case in ("cutmix_inside", "cutmix_corner", "cutmix_minmax"):
        beta = [v for n, _, v in meta["cases"][case]["np_random_calls"] if n == "beta"][0]
        assert abs(ref[f"{case}/lam"][0] - beta) > 0.005, case  # corrected lam != the Beta draw
    assert ref["cutmix_corner/box"][0][0] == 0 and ref["cutmix_corner/box"][0][3] == 16


HW = (12, 20)


@pytest.fixture(scope="module")
def recipe_draws():
    """512 draws of the recipe's settings for (12, 20) images (drawing compiles slowly: once)."""
    keys = jax.random.split(jax.random.key(0), 512)
    return jax.jit(jax.vmap(lambda k: draw_mixup(k, **RECIPE, image_hw=HW)))(keys)


def test_drawn_box_follows_rand_bbox_and_lam_is_corrected(recipe_draws):
    h, w = HW
    d = jax.tree.map(np.asarray, recipe_draws)
    assert d.apply.all()
    assert 0.3 < d.use_cutmix.mean() < 0.7  # switch_prob 0.5
    assert ((d.lam >= 0) & (d.lam <= 1)).all()
    assert 0.4 < d.lam[~d.use_cutmix].mean() < 0.6  # Beta(0.8, 0.8): mean 0.5
    area = (d.y1 - d.y0) * (d.x1 - d.x0)
    cut = d.use_cutmix
    np.testing.assert_allclose(d.lam_corrected[cut], 1 - area[cut] / (h * w), atol=1e-6)
    np.testing.assert_array_equal(d.lam_corrected[~cut], d.lam[~cut])
    assert (area[~cut] == 0).all()
    assert (d.lam_corrected[cut] != d.lam[cut]).mean() > 0.9  # the correction does something
    # the box: cy +- cut_h // 2 with cut_h = int(H sqrt(1 - lam)), clipped to the image
    for lo, hi, size in ((d.y0, d.y1, h), (d.x0, d.x1, w)):
        half = np.floor(size * np.sqrt(1 - d.lam.astype(np.float64))).astype(int) // 2
        assert ((0 <= lo) & (lo <= hi) & (hi <= size)).all()
        unclipped = cut & (lo > 0) & (hi < size)
        np.testing.assert_array_equal((hi - lo)[unclipped], 2 * half[unclipped])
        assert ((hi - lo)[cut] <= 2 * half[cut]).all()
    assert (cut & ((d.y0 == 0) | (d.x1 == w))).any() and (cut & (d.y0 > 0) & (d.y1 < h)).any()


def test_prob_and_single_method_settings():
    keys = jax.random.split(jax.random.key(1), 256)

    def draws(**kw):
        opts = {**RECIPE, "image_hw": (8, 8), **kw}
        return jax.tree.map(np.asarray, jax.jit(jax.vmap(lambda k: draw_mixup(k, **opts)))(keys))

    never = draws(prob=0.0)
    assert not never.apply.any() and not never.use_cutmix.any()
    assert (never.lam == 1).all() and (never.lam_corrected == 1).all()
    half = draws(prob=0.5, cutmix_alpha=0.0)  # Mixup only, half of the time
    assert 0.35 < half.apply.mean() < 0.65 and not half.use_cutmix.any()
    assert (half.lam[~half.apply] == 1).all() and (half.lam[half.apply] < 1).all()
    # CutMix only: cutmix_minmax turns it on whatever cutmix_alpha (the official forces 1.0)
    mm = draws(cutmix_alpha=0.0, mixup_alpha=0.0, cutmix_minmax=(0.25, 0.75))
    assert mm.use_cutmix.all()
    assert set(np.unique(mm.y1 - mm.y0)) == {2, 3, 4, 5} and (mm.y1 <= 8).all()
    np.testing.assert_allclose(mm.lam_corrected, 1 - (mm.y1 - mm.y0) * (mm.x1 - mm.x0) / 64)

    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 3])
    d = jax.tree.map(lambda a: a[0], never)
    out, targets = jax.jit(mix_batch, static_argnums=(3, 4))(x, labels, d, 4, 0.1)
    np.testing.assert_array_equal(out, x)
    np.testing.assert_allclose(targets, np.where(np.eye(4), 0.925, 0.025), rtol=1e-6)


def test_groups_flip_within_slices():
    x = np.random.default_rng(1).normal(size=(8, 4, 4, 3)).astype(np.float32)
    labels = np.arange(8)
    d = MixDraw(jnp.asarray(True), jnp.asarray(False), jnp.float32(0.25), *(jnp.int32(0),) * 4,
                jnp.float32(0.25))
    mix = jax.jit(mix_batch, static_argnums=(3, 4, 5))
    for groups, partner in ((1, [7, 6, 5, 4, 3, 2, 1, 0]), (2, [3, 2, 1, 0, 7, 6, 5, 4]),
                            (4, [1, 0, 3, 2, 5, 4, 7, 6])):
        out, targets = mix(x, labels, d, 8, 0.0, groups)
        np.testing.assert_allclose(out, 0.25 * x + 0.75 * x[partner], rtol=1e-6, err_msg=groups)
        np.testing.assert_allclose(targets, 0.25 * np.eye(8) + 0.75 * np.eye(8)[partner])


def test_sharded_over_8_devices_equals_one_device(recipe_draws):
    mesh = make_mesh({"data": 4, "fsdp": 2})
    assert mesh.devices.size == 8
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16,) + HW + (3,)).astype(np.float32)
    labels = rng.integers(0, 10, 16)
    cutmix = np.asarray(recipe_draws.use_cutmix)
    draws = jax.tree.map(lambda a: a[np.array([cutmix.argmax(), cutmix.argmin()])], recipe_draws)
    mix = jax.jit(jax.vmap(mix_batch, in_axes=(None, None, 0, None, None, None)),
                  static_argnums=(3, 4, 5))
    shard = batch_sharding(mesh)
    xs, ys = jax.device_put(x, shard), jax.device_put(labels, shard)
    for groups in (1, 8):
        want = mix(x, labels, draws, 10, 0.1, groups)
        got = mix(xs, ys, draws, 10, 0.1, groups)
        assert len(got[0].sharding.device_set) == 8
        for g, w_ in zip(got, want):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w_))
        assert not np.array_equal(want[0][0], x) and not np.array_equal(want[0][1], x)


def test_low_precision_batch_is_mixed_in_float32_and_keeps_its_dtype():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, 4, 3)), jnp.bfloat16)
    d = MixDraw(jnp.asarray(True), jnp.asarray(False), jnp.float32(0.3), *(jnp.int32(0),) * 4,
                jnp.float32(0.3))
    out, targets = jax.jit(mix_batch, static_argnums=(3, 4))(x, np.array([0, 1]), d, 2, 0.0)
    assert out.dtype == jnp.bfloat16 and targets.dtype == jnp.float32
    want = (0.3 * x.astype(jnp.float32) + 0.7 * x[::-1].astype(jnp.float32)).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(want, np.float32))


def test_clear_errors():
    d = MixDraw(*(jnp.asarray(v) for v in (True, False, 0.5, 0, 0, 0, 0, 0.5)))
    x = np.zeros((3, 4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="even"):
        mix_batch(x, np.zeros(3, int), d, 5, 0.1)
    with pytest.raises(ValueError, match="groups=2"):
        mix_batch(np.zeros((6, 4, 4, 3), np.float32), np.zeros(6, int), d, 5, 0.1, groups=2)
    with pytest.raises(ValueError, match="labels of shape"):
        mix_batch(np.zeros((4, 4, 4, 3), np.float32), np.zeros(2, int), d, 5, 0.1)
    for mode in ("pair", "elem"):
        with pytest.raises(ValueError, match=f"mixup.mode '{mode}'"):
            draw_mixup(jax.random.key(0), **RECIPE, image_hw=(4, 4), mode=mode)
    with pytest.raises(ValueError, match="cutmix_minmax"):
        check_options(**RECIPE, image_hw=(4, 4), cutmix_minmax=(0.3, 0.4))  # int(1.2) == int(1.6)
    with pytest.raises(ValueError, match="inactive"):
        check_options(**{**RECIPE, "mixup_alpha": 0.0, "cutmix_alpha": 0.0}, image_hw=(4, 4))
    with pytest.raises(ValueError, match="mixup.prob"):
        check_options(**{**RECIPE, "prob": 1.5}, image_hw=(4, 4))
