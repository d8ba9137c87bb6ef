"""Fine-tuning losses against the official ones (tests/fixtures/official/dense_losses, NCHW):
masked L1 / MSE / berHu of run_finetuning_depth.py and the semseg cross-entropy with ignore 255."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multimae_jax.losses import dense_berhu, dense_cross_entropy, dense_l1, dense_mse

LOSSES = {"l1": dense_l1, "mse": dense_mse, "berhu": dense_berhu}
CASES = ["1ch", "3ch", "3ch_mask3", "nomask", "tiny"]


def nhwc(x):
    return jnp.asarray(np.moveaxis(x, 1, -1))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_dense_loss_and_gradient_equal_the_official(official_npz, case, loss):
    ref = official_npz("dense_losses")
    pred, target = nhwc(ref[f"{case}/pred"]), nhwc(ref[f"{case}/target"])
    mask = nhwc(ref[f"{case}/mask"]) if f"{case}/mask" in ref else None
    value, grad = jax.value_and_grad(LOSSES[loss])(pred, target, mask)
    np.testing.assert_allclose(value, ref[f"{case}/{loss}"], rtol=1e-5)
    # gradients of invalid elements are exactly 0 in both
    np.testing.assert_allclose(np.moveaxis(np.asarray(grad), -1, 1), ref[f"{case}/{loss}_grad"],
                               rtol=1e-5, atol=1e-7)


def test_the_fixture_reaches_berhus_floor_and_both_branches(official_npz):
    ref = official_npz("dense_losses")
    for case, clamped in (("1ch", False), ("tiny", True)):
        d = np.abs(ref[f"{case}/pred"] - ref[f"{case}/target"])[ref[f"{case}/mask"]]
        c = max(0.2 * d.max(), 1e-5)
        assert (0.2 * d.max() < 1e-5) == clamped
        assert (d < c).any() and (d >= c).any(), case


def test_cross_entropy_and_gradient_equal_torch_with_ignore_index(official_npz):
    ref = official_npz("dense_losses")
    logits, labels = nhwc(ref["ce/logits"]), jnp.asarray(ref["ce/labels"])
    assert (ref["ce/labels"] == 255).any()
    value, grad = jax.value_and_grad(dense_cross_entropy)(logits, labels)
    np.testing.assert_allclose(value, ref["ce/loss"], rtol=1e-5)
    np.testing.assert_allclose(np.moveaxis(np.asarray(grad), -1, 1), ref["ce/grad"],
                               rtol=1e-5, atol=1e-8)
    assert np.isnan(ref["ce/loss_all_ignored"])
    assert np.isnan(dense_cross_entropy(logits, jnp.full_like(labels, 255)))


def test_a_mask_that_does_not_fit_the_prediction_is_an_error():
    pred = jnp.zeros((2, 4, 4, 3))
    with pytest.raises(ValueError, match=r"mask_valid of shape \(2, 4, 4, 2\) does not fit"):
        dense_l1(pred, pred, jnp.ones((2, 4, 4, 2), bool))
    with pytest.raises(ValueError, match=r"mask_valid of shape \(2, 4, 1\) does not fit"):
        dense_berhu(pred, pred, jnp.ones((2, 4, 1), bool))
