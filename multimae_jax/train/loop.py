"""The training loop of an objective (train/pretrain.py): data -> sharded jitted steps -> metrics,
pictures, checkpoints.

Resumes from the newest checkpoint in the workdir that restores and verifies (train state and
data iterator, so a resumed run ends exactly where an uninterrupted one does), falling back to
older ones past a damaged one (`checkpoint.restore_latest`). SIGTERM / SIGINT save a checkpoint
and stop cleanly: after the current step in one process, at the next log or checkpoint step in
several (see `_stop_agreed`). Too many non-finite steps in a row stop the run without saving, so
the last good checkpoint stays the latest; a failed save stops the run at once.
"""
import platform
import signal
import time
from importlib import metadata
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from multimae_jax import checkpoint_format as fmt
from multimae_jax.data.pipeline import global_batch
from multimae_jax.train import checkpoint, distributed, sharding
from multimae_jax.train.eval_hook import EvalHook
from multimae_jax.train import workdir as workdir_lib
from multimae_jax.train.objectives import make_objective
from multimae_jax.train.optimizer import warmup_steps
from multimae_jax.train.step import Trainer
from multimae_jax.train.validate import ConfigError, validate
from multimae_jax.viz import save_png

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "multimae-jax")


class NonFiniteError(RuntimeError):
    """The run stopped on non-finite steps; nothing non-finite was saved."""


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _run_info() -> dict:
    """Devices, processes and package versions of this run (WORKDIR/run_info.json)."""
    return {"devices": [str(d) for d in jax.devices()], "process_count": jax.process_count(),
            "versions": _versions()}


def _schedule_figures(config, num_samples: int, base_lr) -> dict:
    gb = config.data.global_batch_size
    steps_per_epoch = max(1, num_samples // gb)
    total = config.train.num_steps if config.train.num_steps > 0 else config.train.epochs * steps_per_epoch
    return {"steps_per_epoch": steps_per_epoch, "total_steps": total,
            "warmup_steps": warmup_steps(config.optimizer, steps_per_epoch),
            "lr": base_lr(config)}


class _StopRequest:
    """Turns SIGTERM / SIGINT into a flag checked between steps, until `restore()` puts the
    previous handlers back (so Ctrl-C works again in a notebook after `train` returns)."""

    def __init__(self):
        self.signal = None
        self._previous = {sig: signal.signal(sig, self._handle)
                          for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _stop_agreed(requested: int, sync_step: bool) -> int:
    """Whether (and why: the largest code any process requests, e.g. 1 a signal, 2 a failed
    save) to stop after this step; 0 goes on. One process stops at once. Several must stop
    after the same step (checkpoint saves are collective), so they need a cross-process gather;
    one on every step would block asynchronous dispatch, so they agree only at `sync_step`s
    (log and checkpoint steps): a signal stops a multi-process run up to `train.log_every`
    steps late."""
    if jax.process_count() == 1:
        return int(requested)
    return int(multihost_utils.process_allgather(np.int32(requested)).max()) if sync_step else 0


def _format(metrics: dict) -> str:
    tasks = " ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in metrics.items() if k.startswith("loss/"))
    return (f"loss {metrics['loss']:.4f}{f' ({tasks})' if tasks else ''} | lr {metrics['lr']:.2e} | "
            f"grad norm {metrics['grad_norm']:.3f}")


def _save_error(mngr, step: int):
    """Waits for the save of `step`; CheckpointSaveError if it failed, else None. (Orbax's
    `check_for_errors` misses failed saves: the failure is held by its finalize thread, which
    `wait_until_finished` joins and re-raises.)"""
    try:
        mngr.wait_until_finished()
    except Exception as e:  # whatever the writer raised: OSError, TensorStore's ValueError...
        return checkpoint.CheckpointSaveError(
            f"saving checkpoint step {step} failed: {checkpoint.first_line(e)}; the last good "
            f"checkpoint is step {mngr.latest_step()}")
    return None


def _restart_notes(config, changes: dict, num_samples: int, start: int, base_lr) -> list[str]:
    """What a restart with accepted config changes does, for the log."""
    notes = ["config changed since the last run: " + ", ".join(
        f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())] if changes else []
    if workdir_lib.BATCH in changes:
        before = config.copy_and_resolve_references()
        before.data.global_batch_size = changes[workdir_lib.BATCH][0]
        a, b = (_schedule_figures(c, num_samples, base_lr) for c in (before, config))
        notes.append(
            f"global batch {before.data.global_batch_size} -> {config.data.global_batch_size} "
            f"(train.allow_batch_size_change): lr {a['lr']:.3e} -> {b['lr']:.3e}, steps/epoch "
            f"{a['steps_per_epoch']} -> {b['steps_per_epoch']}, total steps {a['total_steps']} "
            f"-> {b['total_steps']}, warm-up {a['warmup_steps']} -> {b['warmup_steps']} steps; "
            f"the schedules continue from step {start} on the new figures")
    return notes


def train(config, workdir, stop_at_step: int | None = None) -> dict:
    """Runs (or resumes) pre-training; returns the last logged metrics, with 'stopped' set to
    the signal's name (or 'stop_at_step') when the run stopped before its last step.

    `stop_at_step` ends the run after that step with a checkpoint, as a preemption would (for
    time-sliced jobs); the next call resumes from it. Nothing in `workdir` changes before the
    restore has succeeded; a second run on the same workdir is refused (WorkdirError).
    """
    workdir = Path(workdir)
    validate(config, jax.device_count(), jax.process_count())
    changes = {}
    if fmt.latest_step(workdir.absolute() / fmt.CHECKPOINTS) is not None:
        changes = workdir_lib.check_restart(workdir, config, jax.process_count())
    with workdir_lib.WorkdirLock(workdir), checkpoint.quiet_failed_writes():
        return _train(config, workdir, changes, stop_at_step)


def _train(config, workdir: Path, changes: dict, stop_at_step: int | None) -> dict:
    mesh = sharding.make_mesh(config.mesh.to_dict())
    objective = make_objective(config)
    source, dataset = objective.train_data(jax.process_index(), jax.process_count())
    fig = _schedule_figures(config, len(source), objective.base_lr)
    gb, is_main = config.data.global_batch_size, jax.process_index() == 0
    runner = Trainer(objective, config, mesh, fig["total_steps"], fig["warmup_steps"], fig["lr"])
    distributed.barrier("run set up")  # Orbax's first collectives follow
    mngr = checkpoint.manager(workdir, config.train.keep_checkpoints)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            runner.abstract_state, runner.state_sharding)
    try:
        restored = checkpoint.restore_latest(mngr, abstract, lambda: iter(dataset),
                                             fallback=config.train.checkpoint_fallback)
    except BaseException:
        mngr.close()
        raise
    if restored is None:
        start, state, data_iter = 0, runner.init(runner.key), iter(dataset)
        state = objective.start_from(state, runner.state_sharding, is_main)
    else:
        start, state, data_iter = restored

    if is_main:  # the restore succeeded: now the workdir may describe this run
        workdir_lib.record_run(workdir, config, _run_info(), start)
        print(f"data: {source!r}\nmodel: {runner.num_params:,} trainable parameters, mesh "
              f"{dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} "
              f"device(s) in {jax.process_count()} process(es)\n"
              f"global batch {gb}, {fig['steps_per_epoch']} steps/epoch, {fig['total_steps']} "
              f"steps, warm-up {fig['warmup_steps']} steps, lr {fig['lr']:.3e}"
              f"{objective.lr_note()}", flush=True)
        for note in _restart_notes(config, changes, len(source), start, objective.base_lr):
            print(note, flush=True)
        if restored is not None:
            print(f"resumed from step {start} ({mngr.directory})", flush=True)

    writer = None
    if is_main:
        from tensorboardX import SummaryWriter
        writer = SummaryWriter(str(workdir / "tensorboard"))
    evaluators, eval_every = objective.evaluators(runner, fig["steps_per_epoch"])
    hook = EvalHook(evaluators, eval_every, workdir, runner.model, writer, is_main)
    stop = _StopRequest()
    total, last = fig["total_steps"], {}
    every = config.train.checkpoint_every
    bar = tqdm(total=total, initial=start, unit="step", disable=not is_main, dynamic_ncols=True)
    tick, images_since = time.perf_counter(), 0
    # `saving`: the step of a save started and not yet joined; `failure`: its error
    step, saving, failure = start, None, None
    train_step = None
    try:
        while step < total:
            local = next(data_iter)
            batch = global_batch({t: local[t] for t in objective.batch_keys},
                                 runner.batch_sharding)
            if train_step is None:  # compiled ahead, so that processes start it together
                train_step = runner.step.lower(state, batch).compile()
                distributed.barrier("train step compiled")
            state, metrics = train_step(state, batch)
            step += 1
            images_since += gb
            bar.update()
            streak = None
            if step % config.train.log_every == 0 or step == total:
                fetched, counters = jax.device_get(  # one transfer for everything logged
                    (metrics, {k: state[k] for k in ("nonfinite_streak", "skipped",
                                                     "skipped_grad_norm")}))
                last = {k: float(v) for k, v in fetched.items()}
                now = time.perf_counter()
                last["images_per_sec"] = images_since / (now - tick)
                tick, images_since = now, 0
                streak, skipped = int(counters["nonfinite_streak"]), int(counters["skipped"])
                big = int(counters["skipped_grad_norm"])
                last.update(skipped=skipped, skipped_grad_norm=big)  # totals so far
                bar.set_postfix(epoch=f"{step / fig['steps_per_epoch']:.2f}",
                                img_s=f"{last['images_per_sec']:.0f}", loss=f"{last['loss']:.3f}")
                if is_main:
                    tqdm.write(f"step {step}: {_format(last)} | {last['images_per_sec']:.0f} img/s"
                               + (f" | skipped {skipped}" if skipped else "")
                               + (f" | skipped (grad norm) {big}" if big else ""))
                    for k, v in last.items():
                        writer.add_scalar(k, v, step)
                if streak >= config.train.max_nonfinite_steps:
                    raise NonFiniteError(
                        f"{streak} steps in a row with a non-finite loss, gradient or update "
                        f"(limit config.train.max_nonfinite_steps="
                        f"{config.train.max_nonfinite_steps}); stopping without saving, the "
                        f"last good checkpoint is step {mngr.latest_step()}")
            if objective.training_pictures and step % config.train.picture_every == 0:
                pictures = jax.device_get(runner.predict(state, batch, min(4, gb)))
                if is_main:
                    grid = objective.picture(pictures)
                    save_png(grid, workdir / "pictures" / f"step_{step:07d}.png")
                    writer.add_image("reconstructions", grid, step, dataformats="HWC")
            hook.maybe_run(step, total, state)
            due = step % every == 0 or step == total
            sync = due or step % config.train.log_every == 0
            # join the last save once it is done, or before the next one (Orbax would wait
            # for it anyway); a failure is kept until every process has agreed to stop on it
            if saving is not None and (due or stop.signal or step == stop_at_step
                                       or not mngr.is_saving_in_progress()):
                failure, saving = failure or _save_error(mngr, saving), None
            code = _stop_agreed(2 if failure else int(bool(stop.signal)), sync)
            if code == 2:
                raise failure or checkpoint.CheckpointSaveError(
                    f"a checkpoint save failed in another process (see its log); "
                    f"the last good checkpoint is step {mngr.latest_step()}")
            stopping = bool(code) or step == stop_at_step
            if due or stopping:
                streak = int(state["nonfinite_streak"]) if streak is None else streak
                if streak == 0:  # a state inside a run of non-finite steps is never saved
                    checkpoint.save(mngr, step, runner.model, state, data_iter)
                    saving = step
                elif step == total:
                    raise NonFiniteError(
                        f"the run ended in {streak} non-finite step(s); not saving, the last "
                        f"good checkpoint is step {mngr.latest_step()}")
            if stopping:
                last["stopped"] = stop.signal or "stop_at_step"
                if is_main:
                    tqdm.write(f"{last['stopped']}: saved step {step}, stopping")
                break
        failure = _save_error(mngr, saving) if saving is not None else None
        if failure:
            raise failure
    finally:
        stop.restore()
        bar.close()
        hook.close()
        _close_quietly(mngr)
        if writer is not None:
            writer.close()
    return last


def _close_quietly(mngr) -> None:
    """Closes the manager; a save error it re-raises was reported already (or is being)."""
    try:
        mngr.wait_until_finished()
    except Exception:
        pass
    try:
        mngr.close()
    except Exception:
        pass


__all__ = ["train", "ConfigError", "NonFiniteError"]
