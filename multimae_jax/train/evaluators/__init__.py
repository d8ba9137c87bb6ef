"""Evaluators in the style of big_vision: `config.evals.<name> = dict(type=..., every=...,
data=..., <the evaluator's fields>)`, each built into an object with `run(state) -> {metric:
float}`, `pictures(state, n) -> uint8 (H, W, 3)` and the official
best-checkpoint criterion (`best_key`, `higher_is_better`, `improves`). They run during training
and stand-alone.

    type            class                    fields
    semseg          SemsegEvaluator          num_classes, target, picture_input
    depth           DepthEvaluator           target, picture_input, loss ('berhu' | 'l1'),
                                             mean, std
    taskonomy       TaskonomyEvaluator       target, picture_input
    classification  ClassificationEvaluator  num_classes, target, picture_input
    knn             KnnEvaluator             num_classes, target, picture_input, k,
                                             temperature, pool (frozen features; the data side
                                             gives the reference set as reference_batches)

The training loop reads the schedule (`every`, `every_epochs`) and the data side `data`; an
evaluator knows neither.
"""
from __future__ import annotations

import inspect
from typing import Callable, Iterator, Mapping

from multimae_jax.train.evaluators.base import DenseEvaluator, PredictFn
from multimae_jax.train.evaluators.classification import ClassificationEvaluator
from multimae_jax.train.evaluators.depth import DepthEvaluator, TaskonomyEvaluator
from multimae_jax.train.evaluators.knn import KnnEvaluator
from multimae_jax.train.evaluators.semseg import SemsegEvaluator

EVALUATORS = {"semseg": SemsegEvaluator, "depth": DepthEvaluator,
              "taskonomy": TaskonomyEvaluator, "classification": ClassificationEvaluator,
              "knn": KnnEvaluator}
OTHER_FIELDS = ("data", "every", "every_epochs")  # read by the data side and the loop
# passed by make_evaluators, not configured
_GIVEN = ("predict_fn", "mesh", "batches", "reference_batches", "name")


def make_evaluators(config_evals: Mapping, predict_fn: PredictFn, mesh,
                    make_batches: Callable[[str, dict], Callable[[], Iterator[dict]]],
                    **defaults) -> dict[str, DenseEvaluator]:
    """{name: evaluator} for every entry of `config_evals` (config.evals: a ConfigDict or dict
    of dicts).

    predict_fn, mesh: as `DenseEvaluator`, shared by all; make_batches(name, section) -> the
    zero-argument callable giving a fresh iterator over that evaluator's process-local batches,
    or {argument: such a callable} for an evaluator that reads several streams (k-NN: batches,
    reference_batches).
    defaults: fields the run's config fixes elsewhere (e.g. target=config.target.name,
    num_classes=..., picture_input=the first input), given to each evaluator that has such a
    field unless its section sets it. A wrong type, an unknown or a missing field is a
    ValueError naming config.evals.<name>.
    """
    out = {}
    for name, section in config_evals.items():
        section = section.to_dict() if hasattr(section, "to_dict") else dict(section)
        kind = section.get("type")
        if kind not in EVALUATORS:
            raise ValueError(f"config.evals.{name}.type = {kind!r}: expected one of "
                             f"{sorted(EVALUATORS)}")
        params = {k: p for k, p in inspect.signature(EVALUATORS[kind]).parameters.items()
                  if k not in _GIVEN}
        fields = {k: v for k, v in section.items() if k != "type" and k not in OTHER_FIELDS}
        unknown = sorted(set(fields) - set(params))
        fields = {k: v for k, v in defaults.items() if k in params} | fields
        missing = sorted(k for k, p in params.items()
                         if p.default is inspect.Parameter.empty and k not in fields)
        if unknown or missing:
            raise ValueError(f"config.evals.{name} (type '{kind}'): "
                             + (f"unknown field(s) {unknown} " if unknown else "")
                             + (f"missing field(s) {missing} " if missing else "")
                             + f"- its fields are {sorted(params)}, besides {list(OTHER_FIELDS)}")
        streams = make_batches(name, section)
        streams = dict(streams) if isinstance(streams, Mapping) else {"batches": streams}
        out[name] = EVALUATORS[kind](predict_fn, mesh, name=name, **streams, **fields)
    return out


def eval_every(config_evals: Mapping, steps_per_epoch: int) -> dict[str, int]:
    """{name: run every N steps}: a section's `every`, else round(every_epochs x steps per
    epoch), at least 1."""
    return {name: int(section.get("every", 0))
            or max(1, round(section.every_epochs * steps_per_epoch))
            for name, section in config_evals.items()}


__all__ = ["ClassificationEvaluator", "DenseEvaluator", "DepthEvaluator", "KnnEvaluator",
           "SemsegEvaluator", "TaskonomyEvaluator",
           "EVALUATORS", "eval_every", "make_evaluators"]
