"""Evaluation metrics of the official fine-tuning scripts, from sufficient statistics.

Each metric is computed in two steps:

1. `*_stats(...)` (jnp, jittable): sums and counts over one batch, a dict of scalars or (K,)
   arrays, int32 counts and float32 sums. Statistics add up: those of two parts of a batch or of
   a data set sum to those of the whole. A sharded evaluator gets a global batch's statistics by
   calling the function on the global arrays under jit (its reductions are global) or by psum-ing
   per-device statistics; padded samples are left out by `valid` (B,) (True = a real sample).
   int32 suffices within one global batch (below 2**31 pixels).
2. `*_metrics(stats)` (host numpy, float64): the values from one batch's or the summed statistics.
   `add_stats` sums statistics across batches on the host in int64 / float64 (ADE20K's 2000 images
   at 512 x 512 already have 5e8 pixels: int32 would be near overflow, float32 inexact).

Segmentation follows `run_finetuning_semseg.py: evaluate, compute_metrics_distributed` and
`utils/semseg_metrics.py` (mmseg): dataset-level histograms. Depth (`run_finetuning_depth.py:
masked_nyu_metrics`) and the Taskonomy validation loss (`run_finetuning_taskonomy.py: evaluate`,
masked L1) are computed per batch and averaged over batches by the official scripts; `summarize`
gives that average and the dataset-level value (pixel-weighted) from the same statistics.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from multimae_jax.losses import dense_sums, valid_elements
from multimae_jax.modalities import NYU_DEPTH_MEAN, NYU_DEPTH_STD

IGNORE_INDEX = 255
DELTA_THRESHOLDS = {"delta_1": 1.25, "delta_2": 1.25 ** 2, "delta_3": 1.25 ** 3}


def add_stats(total: dict | None, stats: dict) -> dict:
    """total + stats on the host, in int64 / float64; total None starts a sum."""
    wide = {k: np.asarray(v).astype(np.int64 if np.issubdtype(np.asarray(v).dtype, np.integer)
                                    else np.float64) for k, v in stats.items()}
    return wide if total is None else {k: total[k] + wide[k] for k in total}


def _sample_valid(valid: jax.Array | None, batch: int) -> jax.Array:
    return jnp.ones((batch,), bool) if valid is None else jnp.asarray(valid, bool).reshape(batch)


# --- Segmentation -------------------------------------------------------------------------------

def segmentation_predictions(logits: jax.Array, num_classes: int) -> jax.Array:
    """(B, H, W, C) logits -> (B, H, W) int32 classes: the argmax over the first `num_classes`
    channels, so a void channel (C = num_classes + 1) is never predicted, as evaluate() does.
    Ties go to the lowest class, as torch.argmax."""
    return jnp.argmax(logits[..., :num_classes], axis=-1).astype(jnp.int32)


def check_labels(labels, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 what: str = "ground-truth labels") -> None:
    """Host check (numpy): every value is a class in [0, num_classes), the void label
    num_classes or ignore_index; ValueError naming the offending values otherwise.
    Under jit `segmentation_stats` cannot check: call this on the host batch."""
    values = np.unique(np.asarray(labels))
    bad = values[((values < 0) | (values > num_classes)) & (values != ignore_index)]
    if bad.size:
        raise ValueError(f"{what} contain {bad[:8].tolist()}: expected classes "
                         f"0..{num_classes - 1}, {num_classes} (void) or {ignore_index} (ignore)")


def segmentation_stats(pred: jax.Array, labels: jax.Array, num_classes: int,
                       ignore_index: int = IGNORE_INDEX, valid: jax.Array | None = None) -> dict:
    """mmseg histograms of one batch (`utils/semseg_metrics.py: intersect_and_union`).

    pred: (B, H, W) int predicted classes in [0, num_classes); labels: (B, H, W) int ground
    truth, where ignore_index and the void label num_classes are left out (void -> ignore as
    compute_metrics_distributed does); valid: (B,) bool or None. Returns (num_classes,) int32
    pixel counts: area_intersect, area_union, area_pred_label, area_label. numpy inputs are
    checked (`check_labels`); traced ones cannot be, out-of-range values are then dropped.
    """
    if isinstance(labels, np.ndarray):
        check_labels(labels, num_classes, ignore_index)
    if (isinstance(pred, np.ndarray) and pred.size
            and not 0 <= pred.min() <= pred.max() < num_classes):
        raise ValueError(f"predicted classes span {pred.min()}..{pred.max()}: expected "
                         f"0..{num_classes - 1} (segmentation_predictions drops a void channel)")
    pred, labels = jnp.asarray(pred, jnp.int32), jnp.asarray(labels, jnp.int32)
    keep = ((labels != ignore_index) & (labels >= 0) & (labels < num_classes) & (pred >= 0)
            & (pred < num_classes) & _sample_valid(valid, labels.shape[0])[:, None, None])

    def histogram(classes, where):
        # Left-out pixels go to index num_classes, which mode='drop' discards (a negative
        # index would wrap around instead).
        index = jnp.where(where, classes, num_classes).reshape(-1)
        return jnp.zeros((num_classes,), jnp.int32).at[index].add(1, mode="drop")

    intersect = histogram(labels, keep & (pred == labels))
    area_pred = histogram(pred, keep)
    area_label = histogram(labels, keep)
    return {"area_intersect": intersect, "area_union": area_pred + area_label - intersect,
            "area_pred_label": area_pred, "area_label": area_label}


def segmentation_metrics(stats: dict) -> dict:
    """Official scores from summed `segmentation_stats` (utils/semseg_metrics.py: eval_metrics,
    then compute_metrics_distributed): mean_iou, pixel_accuracy (aAcc), mean_accuracy (mAcc) in
    percent, each np.round(nanmean(.) * 100, 2), so a class with no union (IoU) or no ground-truth
    pixel (accuracy) is NaN and skipped, while a class predicted but absent from the ground truth
    counts with IoU 0. Also iou and accuracy per class, fractions with NaN, unrounded."""
    s = {k: np.asarray(v, np.float64) for k, v in stats.items()}
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = s["area_intersect"] / s["area_union"]
        accuracy = s["area_intersect"] / s["area_label"]
        pixel_accuracy = s["area_intersect"].sum() / s["area_label"].sum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN: NaN, as the official
        percent = {name: float(np.round(np.nanmean(v) * 100, 2)) for name, v in (
            ("mean_iou", iou), ("pixel_accuracy", pixel_accuracy), ("mean_accuracy", accuracy))}
    return {**percent, "iou": iou, "accuracy": accuracy}


# --- Depth and masked L1 ------------------------------------------------------------------------

def _element_valid(mask_valid, valid, shape):
    return valid_elements(mask_valid, shape) & _sample_valid(valid, shape[0])[:, None, None, None]


def depth_stats(pred: jax.Array, target: jax.Array, mask_valid: jax.Array | None = None,
                valid: jax.Array | None = None, mean: float = NYU_DEPTH_MEAN,
                std: float = NYU_DEPTH_STD) -> dict:
    """Sums behind `run_finetuning_depth.py: masked_nyu_metrics` for one batch.

    pred, target: (B, H, W, 1) normalised depth, mapped back to x * std + mean (millimetres for
    NYU); mask_valid: bool (B, H, W, 1) or None; valid: (B,) bool or None. Denominators are
    clamped to 1e-6 as the official code, so a negative predicted depth counts. Returns float32
    sums sq_err, rel, srel, sq_log, int32 counts count (valid pixels), delta_1..3 and samples.
    """
    pred = pred.astype(jnp.float32) * std + mean
    target = target.astype(jnp.float32) * std + mean
    m = _element_valid(mask_valid, valid, pred.shape)
    diff = jnp.abs(pred - target)
    pred_c, target_c = jnp.maximum(pred, 1e-6), jnp.maximum(target, 1e-6)
    max_rel = jnp.maximum(pred / target_c, target / pred_c)
    log_diff = jnp.log(pred_c) - jnp.log(target_c)  # natural log: the official 'log10' is ln

    def total(x):
        return dense_sums(x, m)[0]

    stats = {"count": m.sum(), "samples": _sample_valid(valid, pred.shape[0]).sum(),
             "sq_err": total(jnp.square(diff)), "rel": total(diff / target_c),
             "srel": total(jnp.square(diff) / target_c), "sq_log": total(jnp.square(log_diff))}
    stats.update({k: (m & (max_rel < t)).sum() for k, t in DELTA_THRESHOLDS.items()})
    return stats


def depth_metrics(stats: dict) -> dict:
    """rmse, rel, srel, log10 (the official RMSE of natural logs), delta_1..3 from
    `depth_stats`: one batch's (the official per-batch values) or summed (dataset level)."""
    s = {k: np.asarray(v, np.float64) for k, v in stats.items()}
    n = s["count"]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"rmse": np.sqrt(s["sq_err"] / n), "rel": s["rel"] / n, "srel": s["srel"] / n,
               "log10": np.sqrt(s["sq_log"] / n)}
        out.update({k: s[k] / n for k in DELTA_THRESHOLDS})
    return {k: float(v) for k, v in out.items()}


def l1_stats(pred: jax.Array, target: jax.Array, mask_valid: jax.Array | None = None,
             valid: jax.Array | None = None) -> dict:
    """Sums behind `losses.dense_l1` (the Taskonomy validation loss) for one batch: abs_err
    (float32), count of valid elements and samples (int32). pred, target: (B, H, W, C)."""
    err = jnp.abs(pred.astype(jnp.float32) - target)
    abs_err, count = dense_sums(err, _element_valid(mask_valid, valid, err.shape))
    return {"abs_err": abs_err, "count": count,
            "samples": _sample_valid(valid, err.shape[0]).sum()}


def l1_metrics(stats: dict) -> dict:
    """{'l1': abs_err / count} from one batch's or summed `l1_stats`."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"l1": float(np.float64(stats["abs_err"]) / np.float64(stats["count"]))}


def summarize(batch_stats: Sequence[dict], metrics_fn: Callable[[dict], dict]) -> dict:
    """{'per_batch': the unweighted mean over batches of metrics_fn(batch), as the official
    MetricLogger averages; 'dataset': metrics_fn of the summed statistics}. Batches without a
    real sample (all padding) are skipped. The official scripts average per-GPU batches: this
    equals them for a run on one GPU whose evaluation batch is the global batch here."""
    real = [s for s in batch_stats if int(s["samples"]) > 0]
    if not real:
        raise ValueError("no batch with a real sample to summarize")
    values = [metrics_fn(s) for s in real]
    total = None
    for s in real:
        total = add_stats(total, s)
    return {"per_batch": {k: float(np.mean([v[k] for v in values])) for k in values[0]},
            "dataset": metrics_fn(total)}


# --- Classification -----------------------------------------------------------------------------

def topk_correct(logits: jax.Array, labels: jax.Array, ks: Sequence[int] = (1, 5),
                 valid: jax.Array | None = None) -> dict:
    """Counts behind `utils/metrics.py: accuracy(output, target, topk=ks)` for one batch.

    logits: (B, C); labels: (B,) int; valid: (B,) bool or None. Returns int32 counts
    {'top<k>': samples whose label is among the min(k, C) highest logits (the official clamps k
    to the number of classes, so top5 of 3 classes is top3), 'samples': valid samples}; the
    official accuracy in percent is 100 * top<k> / samples. Equal logits rank the lower class
    first (torch.topk leaves ties unspecified); a label outside [0, C) is never correct.
    """
    b, c = logits.shape
    logits = logits.astype(jnp.float32)
    labels = jnp.asarray(labels, jnp.int32).reshape(b)
    in_range = (labels >= 0) & (labels < c)
    classes = jnp.arange(c, dtype=jnp.int32)[None, :]
    own = jnp.take_along_axis(logits, jnp.clip(labels, 0, c - 1)[:, None], axis=-1)
    # the label's rank: classes with a higher logit, or an equal one and a lower index
    rank = ((logits > own) | ((logits == own) & (classes < labels[:, None]))).sum(axis=-1)
    keep = _sample_valid(valid, b) & in_range
    out = {f"top{k}": (keep & (rank < min(k, c))).sum().astype(jnp.int32) for k in ks}
    out["samples"] = _sample_valid(valid, b).sum().astype(jnp.int32)
    return out
