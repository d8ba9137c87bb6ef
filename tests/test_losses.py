"""Loss reductions: the official per-sample masked mean, nanmean over samples, 0 if nothing masked."""
import numpy as np
import jax.numpy as jnp

from multimae_jax import losses


def reference_reduction(pixel_loss, mask, s):
    """Straightforward pixel-level version of the official reduction (numpy, NaN semantics)."""
    b, h, w = pixel_loss.shape
    if mask.sum() == 0:
        return 0.0
    m = np.repeat(np.repeat(mask.reshape(b, h // s, w // s), s, 1), s, 2).astype(np.float64)
    with np.errstate(invalid="ignore"):
        per_sample = (pixel_loss * m).sum((1, 2)) / m.sum((1, 2))
    return np.nanmean(per_sample)


def test_masked_mse_matches_pixel_level_reference():
    r = np.random.default_rng(0)
    pred, target = r.normal(size=(2, 3, 32, 32, 3)).astype(np.float32)
    mask = (r.random((3, 16)) < 0.5).astype(np.int32)
    mask[1] = 0  # a sample with nothing masked is left out of the batch mean
    got = losses.masked_mse(pred, target, mask, patch_size=8)
    want = reference_reduction(((pred - target) ** 2).mean(-1), mask, 8)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_nothing_masked_gives_zero_and_no_mask_gives_plain_mean():
    r = np.random.default_rng(1)
    pred, target = r.normal(size=(2, 2, 16, 16, 1)).astype(np.float32)
    assert float(losses.masked_l1(pred, target, np.zeros((2, 1)), patch_size=16)) == 0.0
    np.testing.assert_allclose(float(losses.masked_l1(pred, target, None)),
                               np.abs(pred - target).mean(), rtol=1e-6)


def test_norm_pix_uses_unbiased_patch_statistics():
    r = np.random.default_rng(2)
    target = r.normal(size=(1, 8, 8, 3)).astype(np.float32)
    out = np.asarray(losses.normalize_patches(jnp.asarray(target), 4))
    patch = target[0, :4, 4:8]
    want = (patch - patch.mean()) / np.sqrt(patch.var(ddof=1) + 1e-6)
    np.testing.assert_allclose(out[0, :4, 4:8], want, rtol=1e-5, atol=1e-6)


def test_cross_entropy_at_stride_4_with_label_smoothing_and_ignore():
    r = np.random.default_rng(3)
    logits = r.normal(size=(2, 8, 8, 5)).astype(np.float32)
    labels = r.integers(0, 5, (2, 8, 8))
    labels[0, 0, 0] = -100
    mask = np.array([[1, 0, 0, 1], [0, 1, 1, 1]])  # 4 patches of 4x4 label pixels (32 / 4 / 2)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, np.maximum(labels, 0)[..., None], -1)[..., 0]
    smooth = 0.9 * nll - 0.1 * logp.mean(-1)
    smooth[labels == -100] = 0
    got = losses.masked_cross_entropy(logits, labels, mask, patch_size=16, stride=4,
                                      label_smoothing=0.1)
    np.testing.assert_allclose(float(got), reference_reduction(smooth, mask, 4), rtol=1e-5)
