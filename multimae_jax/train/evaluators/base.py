"""The loop shared by the dense evaluators: one pass over a one-pass evaluation set, the
statistics of each global batch from one jitted function, summed on the host.

Why the result does not depend on the device or process count: the jitted function takes the
global batch (`data.pipeline.global_batch`, the batch axis split over the mesh) and returns its
statistics replicated (`out_shardings`), so its reductions are global and every process receives
the same numbers; nothing is reduced on one host's share. Integer statistics are then exact on
1 or 8 devices and 1 or 2 processes, float sums equal up to summation order. Every jitted call is
a collective: every process calls `run` and `pictures` together.
"""
from __future__ import annotations

from typing import Callable, Iterator, Mapping

import jax
import numpy as np

from multimae_jax.data.pipeline import global_batch
from multimae_jax.train.sharding import batch_sharding, replicated
from multimae_jax.viz import panel_grid, shared_scale

PredictFn = Callable[[dict, dict, dict], "jax.Array | Mapping[str, jax.Array]"]


class DenseEvaluator:
    """One evaluation of a dense prediction on the data of `batches`.

    predict_fn(params, buffers, batch) -> the prediction of `target`, NHWC at the labels'
      resolution (or a dict of predictions holding it under `target`). It is traced inside this
      evaluator's jit on the global batch, with every key of the host batch; model code that
      needs the trainer's mesh context enters it itself.
    mesh: the training mesh ('data', 'fsdp'); global batches must divide over its devices.
    batches: () -> a fresh iterator over process-local numpy batches {key: (B, ...)} holding
      the inputs, `target`, 'valid' bool (B,) (False: padding of the last batch) and whatever
      `required` adds.
    target: the batch key of the ground truth; picture_input: the batch key drawn in the
      pictures' input column (uint8 shown as an image, float through the colour map).
    name: the config.evals entry, named in errors.

    Subclasses set `best_key` and `higher_is_better` (the official best-checkpoint criterion,
    see `improves`) and define `_batch_stats`, `_metrics`, `_shown_prediction`, `_panels`.
    """
    best_key: str
    higher_is_better: bool
    required: tuple[str, ...] = ("valid",)  # batch keys besides target and picture_input
    columns = ("input", "prediction", "ground truth")

    def __init__(self, predict_fn: PredictFn, mesh, batches: Callable[[], Iterator[dict]], *,
                 target: str, picture_input: str, name: str = "eval"):
        self.predict_fn, self.batches = predict_fn, batches
        self.target, self.picture_input, self.name = target, picture_input, name
        self.sharding = batch_sharding(mesh)
        rep = replicated(mesh)
        # No in_shardings: the batch arrives laid out by `self.sharding`, the parameters by the
        # trainer's state sharding (replicated or FSDP); jit keeps both.
        self._stats = jax.jit(self._global_stats, out_shardings=rep)
        self._shown = jax.jit(self._shown_samples, static_argnums=3, out_shardings=rep)

    # --- the official best-checkpoint criterion ----------------------------------------------

    @property
    def initial_best(self) -> float:
        """The official scripts' starting value: `max_miou = 0.0`, `min_val_loss = np.inf`."""
        return 0.0 if self.higher_is_better else np.inf

    def improves(self, value: float, best: float | None = None) -> bool:
        """Whether `value` of `best_key` makes a new best checkpoint over `best` (None: the
        initial value). Strict, as the official `max_miou < val_stats['mean_iou']` and
        `val_stats['loss'] < min_val_loss`; NaN never improves."""
        best = self.initial_best if best is None else best
        return bool(value > best if self.higher_is_better else value < best)

    # --- one pass ---------------------------------------------------------------------------

    def run(self, state: Mapping) -> dict[str, float]:
        """One pass over the evaluation set with state['params'] and state['buffers']; the
        evaluator's metrics plus 'samples' (the real samples seen, over all processes)."""
        results = []
        for local in self.batches():
            batch = self._global(local)
            out = jax.device_get(self._stats(state["params"], state.get("buffers", {}), batch))
            self._check_stats(out)
            results.append(out)
        samples = sum(int(r["samples"]) for r in results)
        if not samples:
            raise ValueError(f"config.evals.{self.name}: the evaluation data has no real sample "
                             f"({len(results)} batches, every 'valid' False)")
        return {**self._metrics(results), "samples": float(samples)}

    def _global(self, local: dict) -> dict:
        """Process-local numpy batch -> global jax.Arrays, after checking its keys."""
        missing = [k for k in (self.target, self.picture_input, *self.required) if k not in local]
        if missing:
            raise ValueError(f"config.evals.{self.name}: the evaluation batch has no {missing} "
                             f"(it holds {sorted(local)})")
        return global_batch(local, self.sharding)

    def _prediction(self, params, buffers, batch) -> jax.Array:
        out = self.predict_fn(params, buffers, batch)
        if isinstance(out, Mapping):
            if self.target not in out:
                raise ValueError(f"config.evals.{self.name}: the predictions hold {sorted(out)}, "
                                 f"not the target '{self.target}'")
            out = out[self.target]
        return out

    def _global_stats(self, params, buffers, batch) -> dict:
        """(traced) {'samples': int32 real samples, ...} of one global batch."""
        stats = self._batch_stats(self._prediction(params, buffers, batch), batch)
        return {**stats, "samples": batch["valid"].astype(bool).sum()}

    def _check_stats(self, out: dict) -> None:
        """Host check of one batch's fetched (replicated) statistics; raises on bad data."""

    @staticmethod
    def _per_batch_mean(results: list[dict], key: str) -> float:
        """The unweighted mean of `key` over the batches with a real sample, as the official
        MetricLogger's global_avg of per-batch values."""
        return float(np.mean([float(r[key]) for r in results if int(r["samples"]) > 0]))

    # --- pictures ---------------------------------------------------------------------------

    def pictures(self, state: Mapping, n: int) -> np.ndarray:
        """input | prediction | ground truth of the first n real samples of the first batch:
        uint8 (HEADER_HEIGHT + n * (S + PAD), LABEL_WIDTH + 3 * (S + PAD), 3) (fewer rows when
        the batch has fewer real samples; viz.panel_grid's layout)."""
        batch = self._global(next(iter(self.batches())))
        shown = jax.device_get(self._shown(state["params"], state.get("buffers", {}), batch, n))
        rows = []
        for i in np.flatnonzero(shown["valid"]):
            sample = {k: v[i] for k, v in shown.items()}
            panels = (_input_panel(sample["input"]),) + self._panels(sample)
            rows.append((self._row_label(i, sample),
                         tuple(np.round(p * 255).astype(np.uint8) for p in panels)))
        if not rows:
            raise ValueError(f"config.evals.{self.name}: no real sample among the first {n} of "
                             f"the first evaluation batch to draw")
        return panel_grid(rows, self.columns)

    def _row_label(self, index: int, sample: dict) -> str:
        """The row label of shown sample `index` (its position in the batch)."""
        return str(index)

    def _shown_samples(self, params, buffers, batch, n: int) -> dict:
        """(traced) The first n samples' 'input', 'target', 'prediction' (`_shown_prediction`),
        'valid' and the `required` keys, replicated."""
        pred = self._shown_prediction(self._prediction(params, buffers, batch))
        out = {k: batch[k][:n] for k in self.required}
        return {**out, "input": batch[self.picture_input][:n], "target": batch[self.target][:n],
                "prediction": pred[:n]}


def _input_panel(x: np.ndarray) -> np.ndarray:
    """(S, S, C) input -> (S, S, 3) float in [0, 1]: uint8 as an image (one channel grey),
    float through `shared_scale` (its own min..max)."""
    if x.dtype == np.uint8:
        return np.broadcast_to(x[..., :3] / 255.0, x.shape[:2] + (3,))
    x = x.astype(np.float32)
    return shared_scale(x, x)[0]

