"""Semantic segmentation evaluation (`run_finetuning_semseg.py: evaluate`): mmseg mIoU, aAcc and
mAcc from dataset-level histograms, the validation loss, and the best checkpoint by val mIoU."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from multimae_jax import metrics
from multimae_jax.losses import dense_cross_entropy
from multimae_jax.train.evaluators.base import DenseEvaluator
from multimae_jax.viz import paint_labels

_INT32 = np.iinfo(np.int32)


class SemsegEvaluator(DenseEvaluator):
    """Segmentation of `target` labels int (B, S, S) (255 = ignore, num_classes = void: left out
    of the metrics as `compute_metrics_distributed` does) from logits (B, S, S, C), C >= num_classes
    (channels beyond num_classes, e.g. void, are never predicted, as evaluate()'s argmax over
    `seg_pred[:, :num_classes]`).

    `run` -> {'mean_iou', 'pixel_accuracy', 'mean_accuracy' (percent, 2 decimals, from the
    summed histograms), 'loss' (cross-entropy with ignore index 255 over all C channels, averaged
    over batches as the official MetricLogger), 'samples'}. Best checkpoint: the largest val
    mean_iou (`run_finetuning_semseg.py: main`, `max_miou`).

    Labels outside {0..num_classes, 255} in real samples are an error naming the values (checked
    on the global batch, so every process raises together). Pictures: prediction and ground
    truth through `viz.palette`, ignored ground-truth pixels black in both (as the
    official `log_semseg_wandb`).
    """
    best_key = "mean_iou"
    higher_is_better = True

    def __init__(self, predict_fn, mesh, batches, *, num_classes: int, target: str,
                 picture_input: str, name: str = "eval"):
        self.num_classes = num_classes
        super().__init__(predict_fn, mesh, batches, target=target, picture_input=picture_input,
                         name=name)

    def _batch_stats(self, logits, batch) -> dict:
        labels = batch[self.target].astype(jnp.int32)
        valid = batch["valid"].astype(bool)
        if logits.shape[:3] != labels.shape or logits.shape[-1] < self.num_classes:
            raise ValueError(f"config.evals.{self.name}: predictions of shape {logits.shape} do "
                             f"not fit '{self.target}' labels of shape {labels.shape} with "
                             f"num_classes={self.num_classes}: expected (B, H, W, >= num_classes)")
        ignore = metrics.IGNORE_INDEX
        allowed = ((labels >= 0) & (labels <= self.num_classes)) | (labels == ignore)
        bad = ~allowed & valid[:, None, None]
        pred = metrics.segmentation_predictions(logits, self.num_classes)
        return {"stats": metrics.segmentation_stats(pred, labels, self.num_classes, ignore, valid),
                "loss": dense_cross_entropy(logits, jnp.where(valid[:, None, None], labels,
                                                              ignore), ignore),
                "bad_labels": bad.sum(), "bad_min": jnp.where(bad, labels, _INT32.max).min(),
                "bad_max": jnp.where(bad, labels, _INT32.min).max()}

    def _check_stats(self, out: dict) -> None:
        if int(out["bad_labels"]):
            metrics.check_labels(np.array([out["bad_min"], out["bad_max"]]), self.num_classes,
                                 what=f"config.evals.{self.name}: ground-truth '{self.target}' "
                                      f"labels ({int(out['bad_labels'])} pixels)")

    def _metrics(self, results: list[dict]) -> dict:
        total = None
        for r in results:
            total = metrics.add_stats(total, r["stats"])
        scores = metrics.segmentation_metrics(total)
        return {k: scores[k] for k in ("mean_iou", "pixel_accuracy", "mean_accuracy")} | {
            "loss": self._per_batch_mean(results, "loss")}

    def _shown_prediction(self, logits):
        return metrics.segmentation_predictions(logits, self.num_classes)

    def _panels(self, sample: dict) -> tuple[np.ndarray, np.ndarray]:
        labels = sample["target"].astype(np.int64)
        pred = np.where(labels == metrics.IGNORE_INDEX, metrics.IGNORE_INDEX, sample["prediction"])
        return paint_labels(pred, self.num_classes), paint_labels(labels, self.num_classes)
