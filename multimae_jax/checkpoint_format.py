"""The one on-disk checkpoint format. Training, `save_checkpoint` and `python -m
multimae_jax.convert` write it; `load_pretrained` and `finetune_init` read it.

    CKPT/                         a checkpoint: an Orbax composite checkpoint with the items
      model/model.json              the model spec (`multimae_jax.models.spec`)
      state/                        a PyTree: 'params', 'buffers' (+ 'opt_state', 'step', ... from training)
      data/                         training only: the grain iterator state
      checksums/                    training only: a checksum per state array (integrity.py),
                                    verified by every reader
    WORKDIR/checkpoints/<step>/   a training run's series of CKPTs (an Orbax CheckpointManager root)

Orbax writes a checkpoint under a temporary name and renames it when every item is complete, so
the model spec commits atomically with the weights, and an interrupted save leaves no folder that
looks complete. Orbax wants absolute paths: every path goes through `Path.absolute()` here.
"""
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from multimae_jax import integrity
from multimae_jax.models import spec

MODEL, STATE, CHECKSUMS = "model", "state", "checksums"
MODEL_FILE = "model.json"
CHECKPOINTS = "checkpoints"  # a training workdir's CheckpointManager root


def handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    """Names the JSON file of the `model` item model.json; other items get Orbax's handlers by
    their args. A fresh registry per Checkpointer / CheckpointManager: Orbax binds an item to
    the first handler it is used with."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    handler = ocp.handlers.JsonCheckpointHandler(filename=MODEL_FILE)
    registry.add(MODEL, ocp.args.JsonSave, handler)
    registry.add(MODEL, ocp.args.JsonRestore, handler)
    return registry


def save_args(model, state) -> dict:
    """The `model` and `state` items of a checkpoint (Composite args), for any writer."""
    return {MODEL: ocp.args.JsonSave(spec.to_spec(model)), STATE: ocp.args.StandardSave(state)}


def _checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(handler_registry=handler_registry()))


def save_checkpoint(model, variables: dict, path) -> Path:
    """Writes `variables` ({'params', 'buffers'}) and the model spec as the checkpoint `path`
    (created; an existing empty folder is replaced, a non-empty one refused)."""
    path = Path(path).absolute()
    if path.exists():
        if not path.is_dir() or any(path.iterdir()):
            raise FileExistsError(f"{path} exists; choose a new output directory")
        path.rmdir()
    with _checkpointer() as ckptr:
        ckptr.save(path, args=ocp.args.Composite(**save_args(model, variables)))
    return path


def latest_step(root) -> int | None:
    """The newest complete step of a CheckpointManager root (None if there is none yet)."""
    steps = ocp.utils.checkpoint_steps(Path(root).absolute())
    return max(steps) if steps else None


def find(path, step: int | None = None) -> Path:
    """The checkpoint folder that `path` names: a checkpoint itself, or the latest (or given)
    step of a training workdir or of a CheckpointManager root."""
    path = Path(path).absolute()
    if (path / MODEL).is_dir() and step is None:
        return path
    root = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
    step = latest_step(root) if step is None else step
    if step is None or not (root / str(step) / MODEL).is_dir():
        raise ValueError(
            f"{path}: not a multimae_jax checkpoint ({MODEL}/{MODEL_FILE} + {STATE}/), nor a "
            f"training workdir or checkpoint root with one"
            + ("" if step is None else f" at step {step}"))
    return root / str(step)


def state_metadata(state_dir) -> dict:
    """The saved state's tree of array metadata (shape, dtype), read from its _METADATA file
    (with the item's handler: a Checkpointer would also look for, and warn about, a
    checkpoint-level metadata file)."""
    return ocp.handlers.StandardCheckpointHandler().metadata(Path(state_dir)).tree


def read_state(path, abstract: dict | None = None) -> dict:
    """The `state` item of checkpoint `path` as numpy arrays: the whole tree, or only the
    subtrees of `abstract` (ShapeDtypeStructs; shapes checked). Restoring as numpy ignores the
    saved shardings, which name devices of the writing job, so any machine reads any checkpoint."""
    path = Path(path).absolute()
    tree = abstract
    if tree is None:
        tree = state_metadata(path / STATE)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    args = ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args,
                                  partial_restore=abstract is not None)
    with _checkpointer() as ckptr:
        state = ckptr.restore(path, args=ocp.args.Composite(**{STATE: args}))[STATE]
        if (path / CHECKSUMS).is_dir():
            saved = ckptr.restore(path, args=ocp.args.Composite(
                **{CHECKSUMS: ocp.args.JsonRestore()}))[CHECKSUMS]
            bad = integrity.mismatches(state, saved)
            if bad:
                raise ValueError(f"{path / STATE}: the checksum of {len(bad)} array(s) differs "
                                 f"from the one saved, e.g. {bad[0]}: the checkpoint is corrupt")
    return state


def load_checkpoint(path):
    """(model, variables as numpy) of the checkpoint that `path` names (see `find`)."""
    path = find(path)
    with _checkpointer() as ckptr:
        model = spec.from_spec(ckptr.restore(path, args=ocp.args.Composite(
            **{MODEL: ocp.args.JsonRestore()}))[MODEL])
    return model, read_state(path, spec.abstract_variables(model))
