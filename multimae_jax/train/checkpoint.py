"""Orbax checkpoints of the train state together with the grain iterator state.

Saves are asynchronous; Orbax writes each step into a temporary directory and renames it when
complete, so a crash mid-save never damages the previous checkpoint. Every process calls save.
"""
from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINTS = "checkpoints"
RUN_INFO = "run_info.json"  # model spec, devices and versions of a training run


def manager(workdir, keep: int, every: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                           enable_async_checkpointing=True, create=True)
    return ocp.CheckpointManager(Path(workdir).absolute() / CHECKPOINTS, options=options,
                                 item_names=("state", "data"))


def save(mngr: ocp.CheckpointManager, step: int, state, data_iterator, force: bool = False) -> bool:
    return mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)),
        force=force)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, data_iterator):
    """Restores the state into arrays with the shardings of `abstract_state` (ShapeDtypeStructs
    carrying .sharding) and the iterator in place; returns the state."""
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return restored["state"]


def restore_state_only(workdir, step: int | None = None):
    """(step, state as numpy arrays) of the latest (or given) checkpoint in a workdir, for
    evaluation on any machine (whatever topology wrote it); None if there is none."""
    root = Path(workdir).absolute() / CHECKPOINTS
    with ocp.CheckpointManager(root, item_names=("state",)) as mngr:
        step = mngr.latest_step() if step is None else step
    if step is None:
        return None
    path = root / str(step) / "state"
    ckptr = ocp.PyTreeCheckpointer()
    tree = ckptr.metadata(path).item_metadata.tree
    # Restoring as numpy ignores the saved shardings, which name devices of the writing job.
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return step, ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
