"""A training run's checkpoints: WORKDIR/checkpoints/<step>/, each a checkpoint in the format of
`multimae_jax.checkpoint_format` (model spec + train state) plus the grain iterator state.

Saves are asynchronous; Orbax writes each step into a temporary directory and renames it when
every item is complete, so a crash mid-save never damages the previous checkpoint and never
leaves a step without its model spec. Every process calls save.
"""
from pathlib import Path

import grain
import orbax.checkpoint as ocp

from multimae_jax import checkpoint_format as fmt

DATA = "data"


def manager(workdir, keep: int, every: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                           enable_async_checkpointing=True, create=True)
    return ocp.CheckpointManager(Path(workdir).absolute() / fmt.CHECKPOINTS, options=options,
                                 handler_registry=fmt.handler_registry())


def save(mngr: ocp.CheckpointManager, step: int, model, state, data_iterator,
         force: bool = False) -> bool:
    return mngr.save(step, args=ocp.args.Composite(
        **fmt.save_args(model, state), **{DATA: grain.checkpoint.CheckpointSave(data_iterator)}),
        force=force)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, data_iterator):
    """Restores the state into arrays with the shardings of `abstract_state` (ShapeDtypeStructs
    carrying .sharding) and the iterator in place; returns the state."""
    restored = mngr.restore(step, args=ocp.args.Composite(**{
        fmt.STATE: ocp.args.StandardRestore(abstract_state),
        DATA: grain.checkpoint.CheckpointRestore(data_iterator)}))
    return restored[fmt.STATE]


def restore_state_only(workdir, step: int | None = None):
    """(step, state as numpy arrays) of the latest (or given) checkpoint in a workdir, for
    evaluation on any machine (whatever topology wrote it); None if there is none."""
    step = fmt.latest_step(Path(workdir).absolute() / fmt.CHECKPOINTS) if step is None else step
    if step is None:
        return None
    return step, fmt.read_state(fmt.find(workdir, step))
