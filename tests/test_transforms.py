"""Pre-training augmentation: host PretrainAugment against PIL and the official semantics, and
the device-side normalisation / depth standardisation against numpy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from multimae_jax import modalities
from multimae_jax.data.transforms import (PretrainAugment, nearest_index, normalize,
                                          prepare_batch, standardize_depth)
from multimae_jax.modalities import IMAGENET_MEAN, IMAGENET_STD
from pil_helpers import pass_order_matters_in_pillow13

TASKS = ("rgb", "depth", "semseg")
AUG = PretrainAugment(TASKS)
H, W = 256, 340


def _random_sample(rng, height=H, width=W):
    return {"rgb": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
            "depth": rng.integers(0, 2 ** 16, (height, width), dtype=np.uint16),
            "semseg": rng.integers(0, 133, (height, width), dtype=np.uint8)}


def _official(sample, i, j, h, w, flip, size=224):
    """The official pipeline with PIL images: crop, resize with PIL's default filter (BICUBIC;
    NEAREST for mode P), flip; semseg resized again."""
    def crop_resize_flip(img, resample):
        img = img.crop((j, i, j + w, i + h)).resize((size, size), resample)
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else img
    rgb = crop_resize_flip(Image.fromarray(sample["rgb"]), Image.BICUBIC)
    # Pillow <= 10.2, which the official code ran with, opens a 16-bit PNG as a 32-bit 'I' image
    depth = crop_resize_flip(Image.fromarray(sample["depth"].astype(np.int32), "I"), Image.BICUBIC)
    semseg = crop_resize_flip(Image.fromarray(sample["semseg"]).convert("P"), Image.NEAREST)
    assert depth.mode == "I" and semseg.mode == "P"
    return {"rgb": np.asarray(rgb), "depth": np.asarray(depth)[..., None],
            "semseg": np.asarray(semseg.resize((size // 4, size // 4), Image.NEAREST))}


def test_equals_official_pil_pipeline():
    """Against the installed PIL, on the draws where every Pillow computes the official pixels
    (Pillow 13 changed the bicubic pass order for some crop shapes; pil_resample's own tests
    cover those against the official-era Pillow's output)."""
    data_rng = np.random.default_rng(0)
    flips, compared = 0, 0
    for seed in range(40):
        sample = _random_sample(data_rng)
        *box, flip = AUG.draw(H, W, np.random.default_rng(seed))
        flips += flip
        out = AUG(sample, np.random.default_rng(seed))
        ref = _official(sample, *box, flip)
        assert {k: (v.dtype, v.shape) for k, v in out.items()} == {
            "rgb": (np.uint8, (224, 224, 3)), "depth": (np.int32, (224, 224, 1)),
            "semseg": (np.uint8, (56, 56))}
        bicubic_agrees = not pass_order_matters_in_pillow13(tuple(box[2:]), (224, 224))
        compared += bicubic_agrees
        for k in TASKS if bicubic_agrees else ("semseg",):
            np.testing.assert_array_equal(out[k], ref[k], err_msg=f"{k} seed {seed}")
    assert 5 < flips < 35 and compared > 20


def test_modalities_stay_aligned():
    """semseg = blocky class map, rgb = palette[semseg], depth = 1000 * semseg: after any crop and
    flip the three outputs must still describe the same map."""
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (60, 3), dtype=np.uint8)
    blocks = rng.integers(0, 60, (H // 32 + 1, W // 32 + 1))
    semseg = np.kron(blocks, np.ones((32, 32), np.int64))[:H, :W].astype(np.uint8)
    sample = {"rgb": palette[semseg], "depth": semseg.astype(np.uint16) * 1000, "semseg": semseg}
    for seed in range(30):
        out = AUG(sample, np.random.default_rng(seed))
        i, j, h, w, flip = AUG.draw(H, W, np.random.default_rng(seed))
        labels = Image.fromarray(semseg).crop((j, i, j + w, i + h)).resize((224, 224),
                                                                            Image.NEAREST)
        labels224 = np.asarray(labels, np.int64)[:, ::-1 if flip else 1]
        # The 1/4 labels are PIL NEAREST of the 224 map; on this map that is every 4th pixel.
        ref56 = np.asarray(Image.fromarray(labels224.astype(np.uint8)).resize((56, 56),
                                                                              Image.NEAREST))
        np.testing.assert_array_equal(out["semseg"], ref56)
        np.testing.assert_array_equal(out["semseg"], labels224[2::4, 2::4])
        # Bicubic rgb and depth are exact wherever the 7x7 neighbourhood has a single label.
        pad = np.pad(labels224, 3, mode="edge")
        interior = np.ones_like(labels224, bool)
        for di in range(7):
            for dj in range(7):
                interior &= pad[di:di + 224, dj:dj + 224] == labels224
        assert interior.mean() > 0.5
        np.testing.assert_array_equal(out["rgb"][interior], palette[labels224][interior])
        np.testing.assert_array_equal(out["depth"][..., 0][interior], 1000 * labels224[interior])


def test_crop_statistics_and_flip_rate():
    rng = np.random.default_rng(2)
    draws = np.array([AUG.draw(H, W, rng) for _ in range(4000)])
    i, j, h, w, flip = draws.T
    assert (i >= 0).all() and (j >= 0).all() and (i + h <= H).all() and (j + w <= W).all()
    frac, aspect = h * w / (H * W), w / h
    assert 0.19 < frac.min() < 0.21 and 0.95 < frac.max() <= 1.0
    assert 0.74 < aspect.min() < 0.76 and 1.32 < aspect.max() < 1.345
    slack = H - h > 0
    assert (i[slack] / (H - h[slack])).mean() == pytest.approx(0.5, abs=0.03)
    assert flip.mean() == pytest.approx(0.5, abs=0.03)
    # Nothing fits a 10 x 1000 strip: central crop with the aspect clamped to 4/3.
    assert AUG.draw(10, 1000, rng)[:4] == (0, (1000 - 13) // 2, 10, 13)


def test_deterministic_given_rng():
    sample = _random_sample(np.random.default_rng(3))
    a, b, c = (AUG(sample, np.random.default_rng(s)) for s in (7, 7, 8))
    for k in TASKS:
        np.testing.assert_array_equal(a[k], b[k])
    assert not all(np.array_equal(a[k], c[k]) for k in TASKS)


@pytest.mark.parametrize("n_in,n_out", [(64, 224), (128, 224), (256, 224), (300, 224),
                                        (1000, 224), (16, 56), (224, 56), (97, 37), (5, 512)])
def testnearest_index_equals_pil(n_in, n_out):
    rng = np.random.default_rng(n_in)
    depth = rng.integers(0, 2 ** 16, (n_in, n_in + 3), dtype=np.uint16)  # PIL mode I;16
    labels = rng.integers(0, 256, (n_in, n_in + 3), dtype=np.uint8)       # PIL mode L / P
    for x, per_pixel in ((depth, True), (labels, False)):
        rows = nearest_index(n_in, n_out, per_pixel)
        cols = nearest_index(n_in + 3, n_out, per_pixel)
        ref = np.asarray(Image.fromarray(x).resize((n_out, n_out), Image.NEAREST))
        np.testing.assert_array_equal(x[rows[:, None], cols[None, :]], ref)


def test_pil_quirks_documented_in_module():
    x = np.random.default_rng(4).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    boxed = Image.fromarray(x).resize((224, 224), Image.BICUBIC, box=(10, 20, 90, 80))
    cropped = Image.fromarray(x).crop((10, 20, 90, 80)).resize((224, 224), Image.BICUBIC)
    assert not np.array_equal(np.asarray(boxed), np.asarray(cropped))
    assert not np.array_equal(nearest_index(64, 224, True), nearest_index(64, 224, False))


def test_input_errors():
    sample = _random_sample(np.random.default_rng(5), 40, 50)
    with pytest.raises(ValueError, match="depth"):
        AUG({"rgb": sample["rgb"], "semseg": sample["semseg"]}, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"semseg.*\(40, 49\)"):
        AUG({**sample, "semseg": sample["semseg"][:, :49]}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="norm_rgb"):
        PretrainAugment(("rgb", "norm_rgb"))


def _standardize_reference(d):
    out = np.empty_like(d)
    for b in range(d.shape[0]):
        flat = np.sort(d[b].ravel())
        n = flat.size
        kept = flat[int(0.1 * n):int(0.9 * n)].astype(np.float64)
        out[b] = (d[b] - kept.mean()) / np.sqrt(kept.var(ddof=1) + 1e-6)
    return out


def test_device_transforms_match_numpy_and_jit():
    rng = np.random.default_rng(6)
    batch = {"rgb": rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8),
             "depth": rng.integers(0, 2 ** 16, (3, 16, 16, 1), dtype=np.uint16),
             "semseg": rng.integers(0, 133, (3, 4, 4)).astype(np.uint8)}
    depth = batch["depth"].astype(np.float32) / 2 ** 16  # the official float(depth) / 2**16
    rgb_ref = (batch["rgb"] / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(normalize(batch["rgb"], modalities.get("rgb")), rgb_ref, atol=1e-5)
    np.testing.assert_allclose(standardize_depth(jnp.asarray(depth)),
                               _standardize_reference(depth), atol=1e-4)
    out = jax.jit(prepare_batch, static_argnums=1)(batch, TASKS)
    assert out["rgb"].dtype == out["depth"].dtype == jnp.float32
    np.testing.assert_allclose(out["rgb"], rgb_ref, atol=1e-5)
    np.testing.assert_allclose(out["depth"], _standardize_reference(depth), atol=1e-4)
    assert out["semseg"].dtype == jnp.int32
    np.testing.assert_array_equal(out["semseg"], batch["semseg"])
    unstandardized = (modalities.get("depth").replace(standardize=False),)
    raw = jax.jit(prepare_batch, static_argnums=1)(batch, unstandardized)
    np.testing.assert_array_equal(raw["depth"], depth)
