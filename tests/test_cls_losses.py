"""Classification criteria and top-k accuracy of the ImageNet fine-tuning against the official
ones (tests/fixtures/official/cls_losses): SoftTargetCrossEntropy, LabelSmoothingCrossEntropy,
torch.nn.CrossEntropyLoss (values and gradients) and utils/metrics.py: accuracy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multimae_jax import losses, metrics

topk_correct = jax.jit(metrics.topk_correct, static_argnames="ks")


@pytest.fixture(scope="module")
def ref(official_npz):
    return official_npz("cls_losses")


@pytest.mark.parametrize("name", ["soft_ce", "ls_ce", "ce"])
def test_losses_and_gradients_equal_the_official(ref, name):
    fn = {"soft_ce": lambda z: losses.soft_target_cross_entropy(z, ref["soft_targets"]),
          "ls_ce": lambda z: losses.label_smoothing_cross_entropy(z, ref["labels"], 0.1),
          "ce": lambda z: losses.label_smoothing_cross_entropy(z, ref["labels"], 0.0)}[name]
    loss, grad = jax.jit(jax.value_and_grad(fn))(jnp.asarray(ref["logits"]))
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, ref[name], rtol=1e-6)
    np.testing.assert_allclose(grad, ref[f"{name}_grad"], rtol=1e-5, atol=1e-7)


def test_losses_compute_in_float32_from_bfloat16_logits(ref):
    z = jnp.asarray(ref["logits"], jnp.bfloat16)
    got = losses.soft_target_cross_entropy(z, ref["soft_targets"])
    want = losses.soft_target_cross_entropy(z.astype(jnp.float32), ref["soft_targets"])
    assert got.dtype == jnp.float32 and got == want
    with pytest.raises(ValueError, match="smoothing"):
        losses.label_smoothing_cross_entropy(z, ref["labels"], 1.0)


@pytest.mark.parametrize("classes", [10, 3])
def test_topk_correct_equals_the_official_accuracy(ref, classes):
    logits, labels = ref[f"acc{classes}/logits"], ref[f"acc{classes}/labels"]
    b = len(labels)
    got = topk_correct(logits, labels)
    assert set(got) == {"top1", "top5", "samples"}
    assert all(v.dtype == jnp.int32 for v in got.values())
    assert int(got["samples"]) == b
    for k in (1, 5):
        assert int(got[f"top{k}"]) * 100.0 / b == pytest.approx(float(ref[f"acc{classes}/acc{k}"]))
    if classes == 3:  # the official clamps k to the number of classes
        assert int(got["top5"]) == b


def test_topk_correct_counts_only_valid_rows(ref):
    logits, labels = ref["acc10/logits"], ref["acc10/labels"]
    valid = np.array([True, False, True, True, False, True, True, False])
    got = topk_correct(logits, labels, ks=(1, 2, 5), valid=valid)
    whole = {k: 0 for k in ("top1", "top2", "top5")}
    for i in np.flatnonzero(valid):
        rank = (logits[i] > logits[i, labels[i]]).sum()
        for k in (1, 2, 5):
            whole[f"top{k}"] += int(rank < k)
    assert {k: int(v) for k, v in got.items()} == {**whole, "samples": int(valid.sum())}
    # padded rows with a garbage label count for nothing; out-of-range labels are never correct
    padded = topk_correct(np.concatenate([logits, logits[:2]]),
                                  np.concatenate([labels, [-1, 99]]),
                                  valid=np.concatenate([np.ones(8, bool), [False, False]]))
    assert {k: int(v) for k, v in padded.items()} == {
        k: int(v) for k, v in topk_correct(logits, labels).items()}
    assert int(topk_correct(logits[:1], np.array([10]))["top5"]) == 0


def test_topk_ties_rank_the_lower_class_first():
    logits = np.zeros((2, 4), np.float32)
    got = topk_correct(logits, np.array([0, 3]), ks=(1, 3, 4))
    assert {k: int(v) for k, v in got.items()} == {"top1": 1, "top3": 1, "top4": 2, "samples": 2}
