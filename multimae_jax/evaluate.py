"""python -m multimae_jax.evaluate --config=configs/finetune_*.py:VARIANT --checkpoint=PATH
    [--output_dir=DIR] [--config.a.b=v]
python -m multimae_jax.evaluate --config=configs/knn.py:VARIANT --checkpoint=PATH

Evaluates fine-tuned weights stand-alone with the config's evaluators (config.evals, on
data.val_split; e.g. --config.data.val_split=test, --config.data.max_val_images=-1): prints a
metrics table per evaluator and writes DIR/metrics.json ({'checkpoint', 'step', <evaluator>:
{metric: value}}) and DIR/<evaluator>.png (input | prediction | ground truth). DIR defaults to
'evaluation'. configs/knn.py evaluates the frozen rgb features of any pre-trained or fine-tuned
encoder by k-NN (its global tokens, encoder and rgb input adapter are read; the rest is unused).

PATH is a fine-tuning workdir (its latest checkpoint; WORKDIR/best_val holds the best one), an
Orbax checkpoint folder of ours (WORKDIR/checkpoints/<step>), an exported .safetensors / .npz,
or an official .pth of a fine-tuned MultiViT. Weights must fit the config's model exactly (the
inputs, the head, its classes): anything else is refused with the missing, unexpected and
wrongly shaped tensors listed. Several processes evaluate together (every sample once);
process 0 writes. Exit codes as multimae_jax.main (2: a bad config, checkpoint or data file).
"""
import sys
from pathlib import Path

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from multimae_jax import checkpoint_format as fmt
from multimae_jax import pretrained
from multimae_jax.convert import official
from multimae_jax.models import spec
from multimae_jax.train import distributed, sharding
from multimae_jax.train.eval_hook import format_table, write_json
from multimae_jax.train.objectives import make_objective
from multimae_jax.train.step import Trainer
from multimae_jax.train.validate import ConfigError, validate
from multimae_jax.viz import save_png


class CheckpointMismatchError(ValueError):
    """The checkpoint's weights are not the config's model."""


def load_weights(model, path, select=None) -> tuple[dict, int | None]:
    """(variables of `model` as numpy, the checkpoint's step or None for a file) from `path`
    (see the module docstring). Every format goes through the official names
    (`pretrained.any_state_dict`), so that each is checked against `model` the same way;
    select(state_dict) -> the part `model` reads (default: all)."""
    state_dict = pretrained.any_state_dict(path)
    if select is not None:
        state_dict = select(state_dict)
    step = int(fmt.find(path).name) if Path(path).is_dir() else None
    try:
        return official.official_to_flax(state_dict, spec.abstract_variables(model),
                                         str(path)), step
    except ValueError as e:
        raise CheckpointMismatchError(f"{e}\n(the config's model: {type(model).__name__} with "
                                      f"the config's inputs and head)") from None


def evaluate(config, checkpoint, output_dir) -> dict:
    """{evaluator: {metric: value}} of the weights at `checkpoint`; see the module docstring."""
    validate(config, jax.device_count(), jax.process_count())
    if config.get("objective", "pretrain") == "pretrain":
        raise ConfigError("config.objective='pretrain': evaluate runs the evaluators of a "
                          "fine-tuning config (configs/finetune_*.py)")
    objective = make_objective(config)
    mesh = sharding.make_mesh(config.mesh.to_dict())
    trainer = Trainer(objective, config, mesh, 1, 0, objective.base_lr(config))
    variables, step = load_weights(objective.model, checkpoint,
                                   getattr(objective, "select_weights", None))
    state_sharding = {k: trainer.state_sharding[k] for k in variables}
    state = jax.tree.map(lambda x, s: jax.device_put(x, s), variables, state_sharding)
    evaluators, _ = objective.evaluators(trainer, 1)
    is_main, output_dir = jax.process_index() == 0, Path(output_dir)
    results = {}
    for name, ev in evaluators.items():
        results[name] = ev.run(state)
        picture = ev.pictures(state, 4)
        if is_main:
            print(format_table(name, step, results[name]), flush=True)
            save_png(picture, output_dir / f"{name}.png")
    if is_main:
        report = {"checkpoint": str(checkpoint), "step": step, **results}
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json(output_dir / "metrics.json", report)
        print(f"wrote {output_dir / 'metrics.json'}", flush=True)
    return results


def _define_flags() -> None:
    """Defined only when run as a program: importing `evaluate` (tests, notebooks) beside
    another absl program's module must not define --config twice."""
    config_flags.DEFINE_config_file("config", None, "a configs/finetune_*.py file",
                                    lock_config=True)
    flags.DEFINE_string("checkpoint", None, "workdir, checkpoint folder or weights file")
    flags.DEFINE_string("output_dir", "evaluation", "where metrics.json and pictures go")
    flags.mark_flag_as_required("checkpoint")


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    distributed.maybe_initialize()
    f = flags.FLAGS
    try:
        evaluate(f.config, f.checkpoint, f.output_dir)
    except (ValueError, FileNotFoundError) as e:  # ConfigError, CorruptFileError, a mismatch,
        # a folder that is no checkpoint, an unreadable file: each names the field or file
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
