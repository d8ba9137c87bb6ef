"""k-nearest-neighbour classification on frozen features (DINO's eval_knn.py: knn_classifier,
the common protocol): L2-normalised features, cosine similarity to every reference sample, the
k = 20 most similar vote for their class with weight exp(similarity / T), T = 0.07; top-1 / top-5
of the summed votes.

The reference bank stays on the devices, its rows split over the mesh like a batch; each query
batch is compared with every device's rows at once (`shard_map`): each device keeps its own k
best (all its rows if it has fewer), and the k best of those candidates vote. Nothing is gathered
on one host, and the counts are the same on any number of devices and processes (up to ties in
similarity).

The picture (`pictures`, after `run`) shows the first queries of the first query batch beside
their NEIGHBOURS most similar reference images, found during the bank's pass: each reference
batch's best candidates are merged on the devices, so no second pass over the reference data is
needed.
"""
from __future__ import annotations

import itertools
from typing import Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from multimae_jax import metrics
from multimae_jax.train.evaluators.base import DenseEvaluator, _input_panel
from multimae_jax.train.sharding import AXES, replicated
from multimae_jax.viz import panel_grid

POOLS = ("mean", "global")
SHOWN_QUERIES = 4  # rows of the picture
NEIGHBOURS = 5  # neighbours drawn per query


class KnnEvaluator(DenseEvaluator):
    """k-NN accuracy of the features of `predict_fn`.

    predict_fn(params, buffers, batch) -> encoder tokens (B, N, D), pooled as `pool` says: 'mean'
      (all tokens, the global ones included, as LinearOutputAdapter's mean pooling) or 'global'
      (the last token: MultiViT's global token).
    batches / reference_batches: () -> fresh iterators over the process-local query / reference
      batches, each with the image `picture_input`, `target` int labels (B,) and 'valid' (B,).
    `run` -> {'acc1', 'acc5' (percent; top-5 of min(5, k) classes as DINO), 'samples' (the
    queries)}; best checkpoint: the largest acc1. `pictures` draws what the last `run` found.
    """
    best_key = "acc1"
    higher_is_better = True

    def __init__(self, predict_fn, mesh, batches: Callable[[], Iterator[dict]], *,
                 reference_batches: Callable[[], Iterator[dict]], num_classes: int,
                 target: str, picture_input: str, k: int = 20, temperature: float = 0.07,
                 pool: str = "mean", name: str = "knn"):
        if pool not in POOLS:
            raise ValueError(f"config.evals.{name}.pool={pool!r}: expected one of {POOLS}")
        if k < 1 or not temperature > 0:
            raise ValueError(f"config.evals.{name}: k={k} must be >= 1 and temperature="
                             f"{temperature} > 0")
        super().__init__(predict_fn, mesh, batches, target=target, picture_input=picture_input,
                         name=name)
        self.reference_batches, self.mesh = reference_batches, mesh
        self.num_classes, self.k, self.temperature, self.pool = num_classes, k, temperature, pool
        self._bank_rows = jax.jit(self._features_and_labels, out_shardings=self.sharding)
        self._concat = jax.jit(lambda *parts: jnp.concatenate(parts), out_shardings=self.sharding)
        self._query = jax.jit(self._query_stats, out_shardings=replicated(mesh))
        self._shown_queries = jax.jit(self._shown_query_rows, out_shardings=replicated(mesh))
        self._merge = jax.jit(self._merge_neighbours, out_shardings=replicated(mesh))
        self._picture = None  # (params of the last run, its neighbours)

    def _features(self, params, buffers, batch) -> jax.Array:
        """(traced) L2-normalised pooled features float32 (B, D)."""
        tokens = self._prediction(params, buffers, batch).astype(jnp.float32)
        x = tokens.mean(axis=1) if self.pool == "mean" else tokens[:, -1]
        return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    def _features_and_labels(self, params, buffers, batch):
        """(traced) The bank rows of one reference batch: features (B, D), and labels (B,)
        with -1 for padding."""
        labels = jnp.where(batch["valid"].astype(bool), batch[self.target].astype(jnp.int32), -1)
        return self._features(params, buffers, batch), labels

    def run(self, state: Mapping) -> dict[str, float]:
        params, buffers = state["params"], state.get("buffers", {})
        # one pass over the queries: the first batch, read before the bank for the picture's
        # queries, is kept for the vote
        queries = map(self._global, self.batches())
        first = next(queries)
        shown = self._shown_queries(params, buffers, first)
        bank, neighbours = self._bank(params, buffers, shown)
        self._picture = (params, jax.device_get({**shown, **neighbours}))
        results = [jax.device_get(self._query(params, buffers, bank, batch))
                   for batch in itertools.chain([first], queries)]
        samples = sum(int(r["samples"]) for r in results)
        if not samples:
            raise ValueError(f"config.evals.{self.name}: the query data has no real sample")
        return {"acc1": 100.0 * sum(int(r["correct1"]) for r in results) / samples,
                "acc5": 100.0 * sum(int(r["correct5"]) for r in results) / samples,
                "samples": float(samples)}

    def _bank(self, params, buffers, shown: dict) -> tuple[tuple[jax.Array, jax.Array], dict]:
        """((the reference features (R, D) and labels (R,) (-1: padding), rows split over the
        mesh; R = the reference batches' rows), the shown queries' neighbours
        (`_merge_neighbours`))."""
        features, labels = [], []
        n, (size, channels) = shown["features"].shape[0], shown["input"].shape[2:4]
        neighbours = {"similarity": jnp.full((n, NEIGHBOURS), -jnp.inf),
                      "label": jnp.full((n, NEIGHBOURS), -1, jnp.int32),
                      "image": jnp.zeros((n, NEIGHBOURS, size, size, channels),
                                         shown["input"].dtype)}
        for local in self.reference_batches():
            batch = self._global(local)
            f, lab = self._bank_rows(params, buffers, batch)
            neighbours = self._merge(neighbours, shown["features"], f, lab,
                                     batch[self.picture_input])
            features.append(f)
            labels.append(lab)
        if not features:
            raise ValueError(f"config.evals.{self.name}: the reference data has no batch")
        rows = sum(lab.shape[0] for lab in labels)
        if rows < self.k:
            raise ValueError(f"config.evals.{self.name}: k={self.k} exceeds the {rows} "
                             "reference rows; use more reference samples or a smaller k")
        return (self._concat(*features), self._concat(*labels)), neighbours

    def _shown_query_rows(self, params, buffers, batch) -> dict:
        """(traced) The picture's queries, the first SHOWN_QUERIES of a global batch:
        'features' (n, D), 'input', 'target', 'valid'."""
        n = SHOWN_QUERIES
        return {"features": self._features(params, buffers, batch)[:n],
                "input": batch[self.picture_input][:n], "target": batch[self.target][:n],
                "valid": batch["valid"][:n].astype(bool)}

    @staticmethod
    def _merge_neighbours(best: dict, queries, features, labels, images) -> dict:
        """(traced) The NEIGHBOURS most similar rows of the shown queries (n, D) among `best`
        ({'similarity' (n, K), 'label' (n, K), 'image' (n, K, S, S, C)}) and one reference
        batch (features (B, D), labels (B,) with -1 for padding, images (B, S, S, C))."""
        sims = jnp.where(labels[None, :] >= 0, queries @ features.T, -jnp.inf)
        values, index = jax.lax.top_k(sims, min(NEIGHBOURS, labels.shape[0]))
        similarity = jnp.concatenate([best["similarity"], values], axis=1)
        label = jnp.concatenate([best["label"], labels[index]], axis=1)
        image = jnp.concatenate([best["image"], images[index]], axis=1)
        similarity, keep = jax.lax.top_k(similarity, NEIGHBOURS)
        return {"similarity": similarity, "label": jnp.take_along_axis(label, keep, axis=1),
                "image": jnp.take_along_axis(image, keep[..., None, None, None], axis=1)}

    def _query_stats(self, params, buffers, bank, batch) -> dict:
        """(traced) One query batch against the bank: int32 counts {'correct1', 'correct5',
        'samples'}."""
        queries = jax.lax.with_sharding_constraint(self._features(params, buffers, batch),
                                                   replicated(self.mesh))
        k = self.k
        local_k = min(k, bank[1].shape[0] // self.mesh.size)  # >= k candidates in all

        def local_best(q, feats, labels):  # per device: its rows' local_k best (B, local_k)
            sims = jnp.where(labels[None, :] >= 0, q @ feats.T, -jnp.inf)
            values, index = jax.lax.top_k(sims, local_k)
            return values, labels[index]

        values, labels = jax.shard_map(
            local_best, mesh=self.mesh, in_specs=(P(), P(AXES), P(AXES)),
            out_specs=(P(None, AXES), P(None, AXES)))(queries, *bank)
        values, index = jax.lax.top_k(values, k)  # the k best of every device's candidates
        labels = jnp.take_along_axis(labels, index, axis=1)
        weights = jnp.exp(values / self.temperature)  # padding: exp(-inf) = 0
        votes = (jax.nn.one_hot(labels, self.num_classes) * weights[..., None]).sum(axis=1)
        valid = batch["valid"].astype(bool)
        top5 = min(5, k)
        correct = metrics.topk_correct(votes, batch[self.target], (1, top5), valid)
        return {"correct1": correct["top1"], "correct5": correct[f"top{top5}"],
                "samples": valid.sum()}

    def pictures(self, state: Mapping, n: int) -> np.ndarray:
        """Each of the first min(n, SHOWN_QUERIES) real queries of the first query batch, then
        its NEIGHBOURS nearest reference images, most similar first; the row label: the
        query's class and how many neighbours share it. uint8 (H, W, 3)
        (viz.panel_grid); from the last `run` of these params (one more run otherwise),
        whose neighbours are then released."""
        if self._picture is None or self._picture[0] is not state["params"]:
            self.run(state)
        shown, self._picture = self._picture[1], None
        rows = []
        for i in np.flatnonzero(shown["valid"][:n]):
            panels = [_input_panel(shown["input"][i])]
            panels += [_input_panel(image) for image, label in
                       zip(shown["image"][i], shown["label"][i]) if label >= 0]
            target, found = int(shown["target"][i]), shown["label"][i]
            rows.append((f"{target} {int((found == target).sum())}/{int((found >= 0).sum())}",
                         tuple(np.round(p * 255).astype(np.uint8) for p in panels)))
        if not rows:
            raise ValueError(f"config.evals.{self.name}: no real query among the first {n} of "
                             "the first query batch to draw")
        return panel_grid(rows, ("query",) + tuple(f"#{j + 1}" for j in range(NEIGHBOURS)))
