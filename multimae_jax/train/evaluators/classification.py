"""Classification evaluation (`run_finetuning_cls.py: evaluate`): top-1 / top-5 accuracy over
samples (utils/metrics.py: accuracy, weighted by the batch size), the cross-entropy averaged over
batches (the official MetricLogger), and the best checkpoint by val top-1."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from multimae_jax import metrics
from multimae_jax.train.evaluators.base import DenseEvaluator


class ClassificationEvaluator(DenseEvaluator):
    """Classification of int `target` labels (B,) from logits (B, C).

    `run` -> {'acc1', 'acc5' (percent of the real samples whose label is among the top 1 / top
    min(5, C) logits; integer counts, so exact on any device count), 'loss' (cross-entropy over
    the batch's real samples, averaged over batches), 'samples'}. Best checkpoint: the largest
    val acc1 (`max_accuracy < test_stats["acc1"]`). A label outside 0..num_classes-1 is an error.
    Pictures: the input of each shown sample, its row labelled 'predicted / true' class.
    """
    best_key = "acc1"
    higher_is_better = True
    columns = ("input (predicted / true class)",)

    def __init__(self, predict_fn, mesh, batches, *, num_classes: int, target: str,
                 picture_input: str, name: str = "eval"):
        self.num_classes = num_classes
        super().__init__(predict_fn, mesh, batches, target=target, picture_input=picture_input,
                         name=name)

    def _batch_stats(self, logits, batch) -> dict:
        labels = batch[self.target].astype(jnp.int32)
        valid = batch["valid"].astype(bool)
        if logits.ndim != 2 or logits.shape[0] != labels.shape[0] or labels.ndim != 1:
            raise ValueError(f"config.evals.{self.name}: predictions of shape {logits.shape} do "
                             f"not fit '{self.target}' labels of shape {labels.shape}: expected "
                             "logits (B, num_classes) and labels (B,)")
        logits = logits.astype(jnp.float32)
        bad = valid & ((labels < 0) | (labels >= self.num_classes))
        safe = jnp.clip(labels, 0, logits.shape[-1] - 1)
        nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, safe[:, None], -1)[:, 0]
        count = valid.sum()
        correct = metrics.topk_correct(logits, labels, (1, 5), valid)
        return {"correct1": correct["top1"], "correct5": correct["top5"],
                "loss": jnp.where(valid, nll, 0).sum() / jnp.maximum(count, 1),
                "bad_labels": bad.sum(), "bad_min": jnp.where(bad, labels, 2**31 - 1).min(),
                "bad_max": jnp.where(bad, labels, -2**31).max()}

    def _check_stats(self, out: dict) -> None:
        if int(out["bad_labels"]):
            raise ValueError(f"config.evals.{self.name}: {int(out['bad_labels'])} '{self.target}' "
                             f"labels in {int(out['bad_min'])}..{int(out['bad_max'])}, outside "
                             f"0..{self.num_classes - 1} (num_classes={self.num_classes})")

    def _metrics(self, results: list[dict]) -> dict:
        samples = sum(int(r["samples"]) for r in results)
        return {"acc1": 100.0 * sum(int(r["correct1"]) for r in results) / samples,
                "acc5": 100.0 * sum(int(r["correct5"]) for r in results) / samples,
                "loss": self._per_batch_mean(results, "loss")}

    def _shown_prediction(self, logits):
        return jnp.argmax(logits, -1)

    def _row_label(self, index: int, sample: dict) -> str:
        return f"{int(sample['prediction'])} / {int(sample['target'])}"

    def _panels(self, sample: dict) -> tuple:
        return ()
