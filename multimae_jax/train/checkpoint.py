"""A training run's checkpoints: WORKDIR/checkpoints/<step>/, each a checkpoint in the format of
`multimae_jax.checkpoint_format` (model spec + train state) plus the grain iterator state and a
checksum per state array (`integrity`).

Saves are asynchronous; Orbax writes each step into a temporary directory and renames it when
every item is complete, so a crash mid-save never damages the previous checkpoint and never
leaves a step without its model spec. Every process calls save. A restore verifies every
array's checksum and finiteness; a checkpoint that fails is reported in one line
(`CorruptCheckpointError`) and can be set aside (`quarantine`) so that training falls back to
the previous one.
"""
import contextlib
import logging
import os
import sys
from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from multimae_jax import checkpoint_format as fmt
from multimae_jax import integrity

DATA, CHECKSUMS = "data", fmt.CHECKSUMS
CORRUPT_SUFFIX = ".corrupt"  # quarantined steps: ignored by Orbax, kept for inspection


class CorruptCheckpointError(RuntimeError):
    """A checkpoint that cannot be restored as it was saved; the message is one line naming the
    step and the file or array."""


class IncompatibleCheckpointError(RuntimeError):
    """A readable checkpoint of another model or optimizer: never a reason to fall back."""


class CheckpointSaveError(RuntimeError):
    """An asynchronous save that failed (disk full, permissions); one line with the cause."""


def _closed_loop(kind, value) -> bool:
    return kind is RuntimeError and str(value) == "Event loop is closed"


def _write_failure_echo(record: logging.LogRecord) -> bool:
    """False for the log records a failed asynchronous save repeats in every thread it ran in:
    Orbax's errors and asyncio's "exception was never retrieved"."""
    return not (record.levelno >= logging.ERROR and (
        f"{os.sep}orbax{os.sep}" in record.pathname or "never retrieved" in record.getMessage()))


@contextlib.contextmanager
def quiet_failed_writes():
    """Keeps a failed asynchronous save to the one line its caller reports: TensorStore
    reports hundreds of "Event loop is closed" errors (unraisable exceptions) when Orbax closes
    its event loop under pending writes, and Orbax and asyncio log the same cause with a
    traceback from each thread, some only when the interpreter exits. So after a failed save,
    the filters stay."""
    hooks = sys.excepthook, sys.unraisablehook
    sys.excepthook = lambda kind, value, tb: (
        None if _closed_loop(kind, value) else hooks[0](kind, value, tb))
    sys.unraisablehook = lambda u: (
        None if _closed_loop(u.exc_type, u.exc_value) else hooks[1](u))
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    for logger in loggers:
        logger.addFilter(_write_failure_echo)
    try:
        yield
    except CheckpointSaveError:
        raise  # its echoes may come until the interpreter exits: the filters stay
    except BaseException:
        _restore(hooks, loggers)
        raise
    _restore(hooks, loggers)


def _restore(hooks, loggers) -> None:
    sys.excepthook, sys.unraisablehook = hooks
    for logger in loggers:
        logger.removeFilter(_write_failure_echo)


def manager(workdir, keep: int) -> ocp.CheckpointManager:
    """The run's CheckpointManager; the loop decides when to save (every `checkpoint_every`
    steps, not Orbax's extra first step)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                           create=True)
    return ocp.CheckpointManager(Path(workdir).absolute() / fmt.CHECKPOINTS, options=options,
                                 handler_registry=fmt.handler_registry())


def save(mngr: ocp.CheckpointManager, step: int, model, state, data_iterator) -> None:
    """Starts an asynchronous save of step `step` (its errors surface in `check_for_errors`)."""
    mngr.save(step, force=True, args=ocp.args.Composite(
        **fmt.save_args(model, state),
        **{CHECKSUMS: ocp.args.JsonSave(integrity.host_checksums(state)),
           DATA: grain.checkpoint.CheckpointSave(data_iterator)}))


def _missing_file(step_dir: Path) -> str | None:
    """The first file every complete checkpoint has that this one lacks (cheap, before Orbax)."""
    needed = [f"{fmt.MODEL}/{fmt.MODEL_FILE}", f"{fmt.STATE}/_METADATA",
              f"{fmt.STATE}/manifest.ocdbt",
              f"{DATA}/process_{jax.process_index()}-of-{jax.process_count()}.json"]
    return next((n for n in needed if not (step_dir / n).is_file()), None)


def first_line(e: BaseException) -> str:
    """The gist of a (possibly 100-line) Orbax / TensorStore error, in one line: its start and
    its end, where the operating system's reason usually is."""
    text = " ".join(str(e).split())
    if len(text) > 400:
        text = f"{text[:200]} ... {text[-200:]}"
    return f"{type(e).__name__}: {text}"


def _paths(tree) -> dict:
    return {integrity.path_name(p): tuple(x.shape)
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_compatible(step: int, step_dir: Path, abstract_state) -> None:
    """IncompatibleCheckpointError if the saved arrays are not the ones `abstract_state` needs
    (a changed model, tasks or optimizer), so that such a checkpoint is never taken for a
    corrupt one."""
    try:
        saved = _paths(fmt.state_metadata(step_dir / fmt.STATE))
    except Exception as e:
        raise CorruptCheckpointError(f"checkpoint step {step}: "
                                     f"{step_dir / fmt.STATE / '_METADATA'} is unreadable: "
                                     f"{first_line(e)}") from e
    wanted = _paths(abstract_state)
    if saved != wanted:
        diff = sorted(set(saved.items()) ^ set(wanted.items()))
        raise IncompatibleCheckpointError(
            f"checkpoint step {step} ({step_dir}) holds other arrays than this config's train "
            f"state ({len(diff)} differ, e.g. {diff[0][0]} {diff[0][1]}); use a new workdir")


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, data_iterator):
    """Restores the state into arrays with the shardings of `abstract_state` (ShapeDtypeStructs
    carrying .sharding) and the iterator in place, verifies it, and returns the state. Raises
    IncompatibleCheckpointError when it holds other arrays than `abstract_state`, and
    CorruptCheckpointError when a file is missing or unreadable, a checksum differs or an
    array is not finite."""
    step_dir = Path(mngr.directory) / str(step)
    missing = _missing_file(step_dir)
    if missing:
        raise CorruptCheckpointError(f"checkpoint step {step}: {step_dir / missing} is missing")
    _check_compatible(step, step_dir, abstract_state)
    items = {fmt.STATE: ocp.args.StandardRestore(abstract_state),
             DATA: grain.checkpoint.CheckpointRestore(data_iterator)}
    has_checksums = (step_dir / CHECKSUMS).is_dir()  # checkpoints written before they existed
    if has_checksums:
        items[CHECKSUMS] = ocp.args.JsonRestore()
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # Orbax / TensorStore raise many types for damaged files
        raise CorruptCheckpointError(f"checkpoint step {step} ({step_dir}) is unreadable: "
                                     f"{first_line(e)}") from e
    state = restored[fmt.STATE]
    if has_checksums:
        bad = integrity.mismatches(state, restored[CHECKSUMS])
        if bad:
            raise CorruptCheckpointError(
                f"checkpoint step {step} ({step_dir / fmt.STATE}): the checksum of "
                f"{len(bad)} array(s) differs from the one saved, e.g. {bad[0]}")
    bad = integrity.non_finite(state)
    if bad:
        raise CorruptCheckpointError(f"checkpoint step {step} ({step_dir / fmt.STATE}): "
                                     f"{len(bad)} array(s) hold NaN or inf, e.g. {bad[0]}")
    return state


def quarantine(mngr: ocp.CheckpointManager, step: int) -> Path:
    """Renames step `step` to '<step>.corrupt' (kept, ignored by Orbax) so that the run goes on
    from an older one and can save this step again; collective over processes."""
    src = Path(mngr.directory) / str(step)
    dst, n = src.with_name(f"{step}{CORRUPT_SUFFIX}"), 1
    while dst.exists():
        n += 1
        dst = src.with_name(f"{step}{CORRUPT_SUFFIX}{n}")
    if jax.process_index() == 0:
        os.replace(src, dst)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
    mngr.reload()
    return dst


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, make_iterator,
                   fallback: bool = True):
    """(step, state, data iterator) of the newest checkpoint that restores and verifies, or None
    for a workdir without checkpoints. A failing one is reported in one line; with `fallback`
    the next older one is tried, and once one restores, the failed newer ones are quarantined
    (so the run saves those steps anew). When none restores, nothing is moved and
    CorruptCheckpointError says so. Collective: every process restores the same step."""
    failed = []
    for step in sorted(mngr.all_steps(), reverse=True):
        iterator, state, error = make_iterator(), None, None
        try:
            state = restore(mngr, step, abstract_state, iterator)
        except CorruptCheckpointError as e:
            error = e
        ok = error is None
        if jax.process_count() > 1:  # a file damaged for one process fails them all
            ok = bool(multihost_utils.process_allgather(np.int32(ok)).min())
        if ok:
            for bad in failed:
                moved = quarantine(mngr, bad)
                if jax.process_index() == 0:
                    print(f"warning: moved the unreadable checkpoint to {moved}", flush=True)
            return step, state, iterator
        error = error or CorruptCheckpointError(
            f"checkpoint step {step}: unreadable in another process (see its log)")
        if not fallback:
            raise error
        print(f"warning: {error}; trying the previous checkpoint", flush=True)
        failed.append(step)
    if failed:
        raise CorruptCheckpointError(
            f"no checkpoint in {mngr.directory} restores (steps {failed}, reasons above); move "
            f"them away to start afresh")
    return None


def restore_state_only(workdir, step: int | None = None):
    """(step, state as numpy arrays) of the latest (or given) checkpoint in a workdir, for
    evaluation on any machine (whatever topology wrote it); None if there is none."""
    step = fmt.latest_step(Path(workdir).absolute() / fmt.CHECKPOINTS) if step is None else step
    if step is None:
        return None
    return step, fmt.read_state(fmt.find(workdir, step))
