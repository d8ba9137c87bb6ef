"""The pre-training loop: data -> sharded jitted steps -> metrics, pictures, checkpoints.

Resumes from the latest checkpoint in the workdir (train state and data iterator, so a resumed
run ends exactly where an uninterrupted one does). SIGTERM / SIGINT save a checkpoint and stop
cleanly: after the current step in one process, at the next log or checkpoint step in several
(see `_stop_agreed`). Too many non-finite steps in a row stop the run without saving, so the last good
checkpoint stays the latest.
"""
import json
import platform
import signal
import time
from importlib import metadata
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from multimae_jax.data.pipeline import global_batch, make_dataset, make_source
from multimae_jax.train import checkpoint, sharding
from multimae_jax.train.optimizer import scaled_lr, warmup_steps
from multimae_jax.train.step import PretrainStep, config_modalities
from multimae_jax.train.validate import ConfigError, validate
from multimae_jax.train.visualize import reconstruction_grid, save_png

RUN_INFO = "run_info.json"  # devices and package versions of a training run
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "multimae-jax")


class NonFiniteError(RuntimeError):
    pass


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _write_run_info(workdir: Path, config) -> None:
    info = {"devices": [str(d) for d in jax.devices()], "process_count": jax.process_count(),
            "versions": _versions()}
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=1))
    (workdir / RUN_INFO).write_text(json.dumps(info, indent=1, default=str))


def _schedule_figures(config, num_samples: int) -> dict:
    gb = config.data.global_batch_size
    steps_per_epoch = max(1, num_samples // gb)
    total = config.train.num_steps if config.train.num_steps > 0 else config.train.epochs * steps_per_epoch
    return {"steps_per_epoch": steps_per_epoch, "total_steps": total,
            "warmup_steps": warmup_steps(config.optimizer, steps_per_epoch),
            "lr": scaled_lr(config)}


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


def _stop_agreed(requested: bool, sync_step: bool) -> bool:
    """Whether to stop after this step. One process stops at once. Several must stop after the
    same step (checkpoint saves are collective), so they need a cross-process gather; one on
    every step would block asynchronous dispatch, so they agree only at `sync_step`s (log and
    checkpoint steps): a signal stops a multi-process run up to `train.log_every` steps late."""
    if jax.process_count() == 1:
        return requested
    return sync_step and bool(multihost_utils.process_allgather(np.int32(requested)).max())


def _format(metrics: dict) -> str:
    tasks = " ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in metrics.items() if k.startswith("loss/"))
    return (f"loss {metrics['loss']:.4f} ({tasks}) | lr {metrics['lr']:.2e} | "
            f"grad norm {metrics['grad_norm']:.3f}")


def train(config, workdir, stop_at_step: int | None = None) -> dict:
    """Runs (or resumes) pre-training; returns the last logged metrics.

    `stop_at_step` ends the run after that step with a checkpoint, as a preemption would (for
    time-sliced jobs); the next call resumes from it.
    """
    workdir = Path(workdir)
    validate(config, jax.device_count(), jax.process_count())
    mesh = sharding.make_mesh(config.mesh.to_dict())
    _, outputs, data_mods = config_modalities(config)
    tasks = tuple(data_mods)
    source = make_source(config.data.path, tuple(data_mods.values()),
                         synthetic_samples=config.data.synthetic_samples,
                         synthetic_size=config.model.image_size, seed=config.seed,
                         allow_incomplete=config.data.allow_incomplete,
                         tfds_fields=config.data.tfds_fields.to_dict())
    fig = _schedule_figures(config, len(source))
    gb, is_main = config.data.global_batch_size, jax.process_index() == 0
    runner = PretrainStep(config, mesh, fig["total_steps"], fig["warmup_steps"], fig["lr"])
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        _write_run_info(workdir, config)
        print(f"data: {source!r}\nmodel: {runner.num_params:,} trainable parameters, mesh "
              f"{dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} "
              f"device(s) in {jax.process_count()} process(es)\n"
              f"global batch {gb}, {fig['steps_per_epoch']} steps/epoch, {fig['total_steps']} "
              f"steps, warm-up {fig['warmup_steps']} steps, lr {fig['lr']:.3e} "
              f"(blr {config.optimizer.blr} x {gb} / 256)", flush=True)

    dataset = make_dataset(source, tuple(data_mods.values()), image_size=config.model.image_size,
                           local_batch_size=gb // jax.process_count(), seed=config.seed,
                           process_index=jax.process_index(), process_count=jax.process_count(),
                           num_workers=config.data.num_workers,
                           skip_corrupt=config.data.skip_corrupt, hflip=config.data.hflip)
    data_iter = iter(dataset)
    mngr = checkpoint.manager(workdir, config.train.keep_checkpoints, config.train.checkpoint_every)
    start = mngr.latest_step()
    if start is not None:
        abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                runner.abstract_state, runner.state_sharding)
        state = checkpoint.restore(mngr, start, abstract, data_iter)
        if is_main:
            print(f"resumed from step {start} ({mngr.directory})", flush=True)
    else:
        start, state = 0, runner.init(runner.key)

    writer = None
    if is_main:
        from tensorboardX import SummaryWriter
        writer = SummaryWriter(str(workdir / "tensorboard"))
    stop = _StopRequest()
    total, last = fig["total_steps"], {}
    bar = tqdm(total=total, initial=start, unit="step", disable=not is_main, dynamic_ncols=True)
    tick, images_since = time.perf_counter(), 0
    step = start
    try:
        while step < total:
            local = next(data_iter)
            batch = global_batch({t: local[t] for t in tasks}, runner.batch_sharding)
            state, metrics = runner.step(state, batch)
            step += 1
            images_since += gb
            bar.update()
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
                        f"{streak} steps in a row with a non-finite loss or gradient (limit "
                        f"config.train.max_nonfinite_steps={config.train.max_nonfinite_steps}); "
                        f"stopping without saving, the last good checkpoint is step "
                        f"{mngr.latest_step()}")
            if step % config.train.picture_every == 0:
                pictures = jax.device_get(runner.predict(state, batch, min(4, gb)))
                if is_main:
                    grid = reconstruction_grid(*pictures, outputs,
                                               patch_size=config.model.patch_size)
                    save_png(grid, workdir / "pictures" / f"step_{step:07d}.png")
                    writer.add_image("reconstructions", grid, step, dataformats="HWC")
            due = mngr.should_save(step) or step == total
            stopping = (_stop_agreed(bool(stop.signal), due or step % config.train.log_every == 0)
                        or step == stop_at_step)
            if due or stopping:
                # never checkpoint a state that is in a run of non-finite steps
                if int(state["nonfinite_streak"]) == 0:
                    checkpoint.save(mngr, step, runner.model, state, data_iter, force=True)
            if stopping:
                if is_main:
                    tqdm.write(f"{stop.signal or 'stop_at_step'}: saved step {step}, stopping")
                break
    finally:
        stop.restore()
        bar.close()
        mngr.wait_until_finished()
        mngr.close()
        if writer is not None:
            writer.close()
    return last


__all__ = ["train", "ConfigError", "NonFiniteError"]
