"""Evaluation metrics against the official ones (tests/fixtures/official/finetune_metrics, NCHW):
mmseg mIoU / aAcc / mAcc, the NYU depth metrics and the Taskonomy masked L1, per batch and
averaged over batches; plus the properties a sharded evaluator relies on: statistics of parts
add up to those of the whole, and padded samples count for nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from multimae_jax import metrics
from multimae_jax.modalities import NYU_DEPTH_MEAN, NYU_DEPTH_STD

N_CLASSES = 6
DEPTH_METRICS = ("rmse", "rel", "srel", "log10", "delta_1", "delta_2", "delta_3")


def nhwc(x):
    return np.moveaxis(x, 1, -1)


def batches(ref, prefix):
    """[(pred, target, mask)] in NHWC of the fixture's depth/ or taskonomy/ batches."""
    out, i = [], 0
    while f"{prefix}/batch{i}/pred" in ref:
        out.append(tuple(nhwc(ref[f"{prefix}/batch{i}/{k}"]) for k in ("pred", "target", "mask")))
        i += 1
    return out


def assert_stats_equal(got, want, rtol=0.0):
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k], np.float64), np.asarray(want[k], np.float64),
                                   rtol=rtol, err_msg=k)


# --- Segmentation -------------------------------------------------------------------------------

def seg_batches(ref):
    return [(ref[f"semseg/logits{i}"], ref[f"semseg/labels{i}"], ref[f"semseg/pred{i}"])
            for i in range(3)]


def test_segmentation_scores_equal_the_official_exactly(official_npz):
    ref = official_npz("finetune_metrics")
    total = None
    for logits, labels, official_pred in seg_batches(ref):
        pred = metrics.segmentation_predictions(jnp.asarray(nhwc(logits)), N_CLASSES)
        np.testing.assert_array_equal(pred, official_pred)
        total = metrics.add_stats(total, metrics.segmentation_stats(np.asarray(pred), labels,
                                                                    N_CLASSES))
    for k in ("area_intersect", "area_union", "area_pred_label", "area_label"):
        np.testing.assert_array_equal(total[k], ref[f"semseg/{k}"], err_msg=k)
    scores = metrics.segmentation_metrics(total)
    for k in ("mean_iou", "pixel_accuracy", "mean_accuracy"):
        assert scores[k] == ref[f"semseg/{k}"], k  # rounded to 2 decimals in both
    np.testing.assert_array_equal(scores["iou"], ref["semseg/iou"])
    np.testing.assert_array_equal(scores["accuracy"], ref["semseg/acc"])
    # what the fixture covers: ignore and void pixels, a class predicted but never in the ground
    # truth (IoU 0, counted) and one never anywhere (NaN, skipped); the void logit often wins
    labels = np.stack([b[1] for b in seg_batches(ref)])
    assert (labels == 255).any() and (labels == N_CLASSES).any()
    assert ref["semseg/iou"][4] == 0 and np.isnan(ref["semseg/iou"][5])
    assert any((b[0].argmax(1) == N_CLASSES).any() for b in seg_batches(ref))


def seg_stats_of(ref, i, **kw):
    _, labels, pred = seg_batches(ref)[i]
    return metrics.segmentation_stats(pred, labels, N_CLASSES, **kw)


def test_segmentation_statistics_of_parts_add_up_and_padding_counts_for_nothing(official_npz):
    ref = official_npz("finetune_metrics")
    _, labels, pred = seg_batches(ref)[0]
    whole = seg_stats_of(ref, 0)
    halves = [seg_stats_of(ref, 0, valid=np.array(v)) for v in ([True, False], [False, True])]
    assert_stats_equal(metrics.add_stats(metrics.add_stats(None, halves[0]), halves[1]), whole)
    # a padded sample whose labels and predictions would all count, under jit (traced: unchecked)
    padded = jax.jit(metrics.segmentation_stats, static_argnums=2)(
        np.concatenate([pred, np.zeros_like(pred[:1])]),
        np.concatenate([labels, np.zeros_like(labels[:1])]), N_CLASSES,
        valid=np.array([True, True, False]))
    assert_stats_equal(padded, whole)


def test_labels_outside_the_classes_are_an_error_naming_them(official_npz):
    ref = official_npz("finetune_metrics")
    _, labels, pred = seg_batches(ref)[0]
    bad = labels.copy()
    bad[0, 0, :2] = [7, -1]  # N_CLASSES (void) and 255 are allowed
    with pytest.raises(ValueError, match=r"ground-truth labels contain \[-1, 7\]: expected "
                                         r"classes 0\.\.5, 6 \(void\) or 255"):
        metrics.segmentation_stats(pred, bad, N_CLASSES)
    with pytest.raises(ValueError, match=r"predicted classes span 0\.\.6: expected 0\.\.5"):
        metrics.segmentation_stats(np.where(labels == N_CLASSES, N_CLASSES, pred), labels,
                                   N_CLASSES)


# --- Depth and Taskonomy ------------------------------------------------------------------------

def test_depth_metrics_per_batch_and_their_mean_equal_the_official(official_npz):
    ref = official_npz("finetune_metrics")
    stats = [metrics.depth_stats(*b) for b in batches(ref, "depth")]
    assert len(stats) == 3
    for i, s in enumerate(stats):
        got = metrics.depth_metrics(s)
        for k in DEPTH_METRICS:
            np.testing.assert_allclose(got[k], ref[f"depth/per_batch/{k}"][i], rtol=1e-5,
                                       err_msg=f"batch {i} {k}")
    mean = metrics.summarize(stats, metrics.depth_metrics)["per_batch"]
    for k in DEPTH_METRICS:
        np.testing.assert_allclose(mean[k], ref[f"depth/mean/{k}"], rtol=1e-5, err_msg=k)


def numpy_depth_metrics(pred, target, mask):
    """Dataset-level reference: every valid pixel of the data set at once, float64."""
    p = pred[mask].astype(np.float64) * NYU_DEPTH_STD + NYU_DEPTH_MEAN
    t = target[mask].astype(np.float64) * NYU_DEPTH_STD + NYU_DEPTH_MEAN
    pc, tc = np.maximum(p, 1e-6), np.maximum(t, 1e-6)
    ratio = np.maximum(p / tc, t / pc)
    return {"rmse": np.sqrt(np.mean((p - t) ** 2)), "rel": np.mean(np.abs(p - t) / tc),
            "srel": np.mean((p - t) ** 2 / tc), "log10": np.sqrt(np.mean(np.log(pc / tc) ** 2)),
            **{f"delta_{k}": np.mean(ratio < 1.25 ** k) for k in (1, 2, 3)}}


def test_dataset_level_depth_and_l1_are_over_all_valid_pixels(official_npz):
    ref = official_npz("finetune_metrics")
    depth = batches(ref, "depth")
    assert (np.concatenate([p[m] for p, _, m in depth]) * NYU_DEPTH_STD
            + NYU_DEPTH_MEAN < 0).any()  # the 1e-6 clamp matters
    got = metrics.summarize([metrics.depth_stats(*b) for b in depth], metrics.depth_metrics)
    want = numpy_depth_metrics(*(np.concatenate(a) for a in zip(*depth)))
    for k in DEPTH_METRICS:
        np.testing.assert_allclose(got["dataset"][k], want[k], rtol=1e-5, err_msg=k)

    task = batches(ref, "taskonomy")
    got = metrics.summarize([metrics.l1_stats(*b) for b in task], metrics.l1_metrics)
    err = np.concatenate([np.abs(p - t)[np.broadcast_to(m, p.shape)] for p, t, m in task])
    np.testing.assert_allclose(got["dataset"]["l1"], err.astype(np.float64).mean(), rtol=1e-5)


def test_taskonomy_l1_per_batch_and_mean_equal_the_official(official_npz):
    ref = official_npz("finetune_metrics")
    stats = [metrics.l1_stats(*b) for b in batches(ref, "taskonomy")]
    per_batch = [metrics.l1_metrics(s)["l1"] for s in stats]
    np.testing.assert_allclose(per_batch, ref["taskonomy/per_batch"], rtol=1e-5)
    np.testing.assert_allclose(metrics.summarize(stats, metrics.l1_metrics)["per_batch"]["l1"],
                               ref["taskonomy/mean"], rtol=1e-5)


def padded_global_batch(ref, n=8):
    """The 5 depth samples of the fixture padded with NaN samples to a global batch of n."""
    pred, target, mask = (np.concatenate(a) for a in zip(*batches(ref, "depth")))
    pad = n - len(pred)
    valid = np.arange(n) < len(pred)
    return (np.concatenate([pred, np.full((pad,) + pred.shape[1:], np.nan, np.float32)]),
            np.concatenate([target, np.ones((pad,) + target.shape[1:], np.float32)]),
            np.concatenate([mask, np.ones((pad,) + mask.shape[1:], bool)]), valid)


def test_depth_statistics_add_up_and_sharding_and_padding_change_nothing(official_npz):
    ref = official_npz("finetune_metrics")
    depth = batches(ref, "depth")
    parts = metrics.add_stats(metrics.add_stats(None, metrics.depth_stats(*depth[0])),
                              metrics.depth_stats(*depth[1]))
    whole = metrics.depth_stats(*(np.concatenate(a) for a in zip(depth[0], depth[1])))
    assert_stats_equal(parts, whole, rtol=1e-6)

    pred, target, mask, valid = padded_global_batch(ref)
    all_real = metrics.depth_stats(*(np.concatenate(a) for a in zip(*depth)))
    mesh = jax.make_mesh((8,), ("data",))
    shard = NamedSharding(mesh, PartitionSpec("data"))
    sharded = jax.jit(metrics.depth_stats)(*(jax.device_put(a, shard)
                                             for a in (pred, target, mask, valid)))
    assert_stats_equal(sharded, {**all_real, "samples": 5}, rtol=1e-6)


def test_summarize_skips_all_padding_batches_and_weights_batches_equally():
    one = {"abs_err": np.float32(6.0), "count": np.int32(2), "samples": np.int32(1)}
    big = {"abs_err": np.float32(10.0), "count": np.int32(10), "samples": np.int32(4)}
    empty = {"abs_err": np.float32(0.0), "count": np.int32(0), "samples": np.int32(0)}
    got = metrics.summarize([one, big, empty], metrics.l1_metrics)
    assert got == {"per_batch": {"l1": 2.0}, "dataset": {"l1": 16.0 / 12.0}}
    with pytest.raises(ValueError, match="no batch with a real sample"):
        metrics.summarize([empty], metrics.l1_metrics)
