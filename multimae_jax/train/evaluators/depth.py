"""Dense regression evaluation: NYUv2 depth (`run_finetuning_depth.py: evaluate`) and the
Taskonomy tasks (`run_finetuning_taskonomy.py: evaluate`), both with the best checkpoint by the
smallest val loss (`main`: `min_val_loss`)."""
from __future__ import annotations

import numpy as np

from multimae_jax import losses, metrics
from multimae_jax.modalities import NYU_DEPTH_MEAN, NYU_DEPTH_STD
from multimae_jax.train.evaluators.base import DenseEvaluator
from multimae_jax.viz import shared_scale

# run_finetuning_depth.py: main, --loss
DEPTH_LOSSES = {"berhu": losses.dense_berhu, "l1": losses.dense_l1}


class _RegressionEvaluator(DenseEvaluator):
    """A prediction (B, S, S, C) of `target` float (B, S, S, C), scored where 'mask_valid' bool
    (B, S, S, 1) and 'valid' (B,) are True. Pictures: prediction and ground truth on the ground
    truth's scale over its valid pixels (one channel through the colour map), invalid ground
    truth black."""
    best_key = "loss"
    higher_is_better = False
    required = ("valid", "mask_valid")

    def _elements(self, pred, batch):
        """bool (B, S, S, 1): mask_valid of the real samples (padding left out of every sum,
        berHu's batch maximum included)."""
        target, mask_valid = batch[self.target], batch["mask_valid"]
        if pred.shape != target.shape or mask_valid.shape != target.shape[:3] + (1,):
            raise ValueError(f"config.evals.{self.name}: prediction {pred.shape}, target "
                             f"'{self.target}' {target.shape} and mask_valid "
                             f"{mask_valid.shape}: expected (B, H, W, C), (B, H, W, C), "
                             f"(B, H, W, 1)")
        return mask_valid.astype(bool) & batch["valid"].astype(bool)[:, None, None, None]

    def _shown_prediction(self, pred):
        return pred

    def _panels(self, sample: dict) -> tuple[np.ndarray, np.ndarray]:
        target_img, pred_img = shared_scale(sample["target"].astype(np.float32),
                                            sample["prediction"].astype(np.float32),
                                            sample["mask_valid"])
        return pred_img, target_img


class DepthEvaluator(_RegressionEvaluator):
    """NYUv2 depth: `target` is depth standardised as (d - mean) / std (`dense_transforms.
    depth_target`), de-normalised with mean / std for the metrics.

    `run` -> {'loss' (`loss`: the training criterion, per batch, averaged over batches: the
    official val loss and best-checkpoint criterion), 'rmse', 'rel', 'srel', 'log10', 'delta_1',
    'delta_2', 'delta_3' (`masked_nyu_metrics` per batch, averaged over batches as the official
    MetricLogger), the same names + '_dataset' (from the statistics summed over the whole set:
    every valid pixel weighs the same), 'samples'}. A batch is one global batch: equal to the
    official run on one GPU with that evaluation batch size.
    """

    def __init__(self, predict_fn, mesh, batches, *, target: str, picture_input: str,
                 loss: str = "berhu", mean: float = NYU_DEPTH_MEAN, std: float = NYU_DEPTH_STD,
                 name: str = "eval"):
        if loss not in DEPTH_LOSSES:
            raise ValueError(f"config.evals.{name}.loss = {loss!r}: expected one of "
                             f"{sorted(DEPTH_LOSSES)}")
        self.loss_fn, self.mean, self.std = DEPTH_LOSSES[loss], mean, std
        super().__init__(predict_fn, mesh, batches, target=target, picture_input=picture_input,
                         name=name)

    def _batch_stats(self, pred, batch) -> dict:
        elements = self._elements(pred, batch)
        target = batch[self.target]
        return {"stats": metrics.depth_stats(pred, target, elements, batch["valid"], self.mean,
                                             self.std),
                "loss": self.loss_fn(pred, target, elements)}

    def _metrics(self, results: list[dict]) -> dict:
        summary = metrics.summarize([r["stats"] for r in results], metrics.depth_metrics)
        return {"loss": self._per_batch_mean(results, "loss"), **summary["per_batch"],
                **{f"{k}_dataset": v for k, v in summary["dataset"].items()}}


class TaskonomyEvaluator(_RegressionEvaluator):
    """A Taskonomy task: masked L1 on the prepared `target` (the official `masked_l1_loss`).

    `run` -> {'loss' (per batch, averaged over batches: the official val loss and
    best-checkpoint criterion), 'loss_dataset' (summed over the whole set), 'samples'}.
    """

    def _batch_stats(self, pred, batch) -> dict:
        return {"stats": metrics.l1_stats(pred, batch[self.target], self._elements(pred, batch),
                                          batch["valid"])}

    def _metrics(self, results: list[dict]) -> dict:
        summary = metrics.summarize([r["stats"] for r in results], metrics.l1_metrics)
        return {"loss": summary["per_batch"]["l1"], "loss_dataset": summary["dataset"]["l1"]}
