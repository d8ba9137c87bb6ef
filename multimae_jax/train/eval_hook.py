"""Evaluation during training: each evaluator of config.evals runs every `every` steps (or
`every_epochs` epochs) and at the last step; its metrics go to the console (a table), to
TensorBoard as '<name>/<metric>' and to WORKDIR/metrics.json; its pictures to
WORKDIR/pictures/<name>_step_<step>.png; and the state that improves its official criterion
(`best_key`: val mIoU for segmentation, val loss for depth) is kept in
WORKDIR/best_<name>/checkpoints/<step>/ (one checkpoint, the format of
`multimae_jax.checkpoint_format`: best_<name> reads like a workdir). A resumed run reads the
best values so far back from metrics.json.
"""
import json
from pathlib import Path

import orbax.checkpoint as ocp
from tqdm import tqdm

from multimae_jax import atomic
from multimae_jax import checkpoint_format as fmt
from multimae_jax import integrity
from multimae_jax.train.checkpoint import CHECKSUMS
from multimae_jax.viz import save_png

METRICS = "metrics.json"


def format_table(name: str, step: int | None, results: dict) -> str:
    """One evaluation as a two-column table a person reads at a glance."""
    width = max(len(k) for k in results)
    lines = [f"eval '{name}'" + (f" at step {step}" if step is not None else "")]
    lines += [f"  {k:<{width}}  {v:.4f}" if isinstance(v, float) else f"  {k:<{width}}  {v}"
              for k, v in results.items()]
    return "\n".join(lines)


def write_json(path: Path, data) -> None:
    """Atomic: a crash leaves the previous file."""
    atomic.write_text(path, json.dumps(data, indent=1))


class EvalHook:
    """Runs `evaluators` ({name: evaluator}) on the schedule `every` ({name: steps}). Every
    process calls `maybe_run` at every step (evaluation is collective); only `is_main` writes."""

    def __init__(self, evaluators: dict, every: dict, workdir, model, writer, is_main: bool):
        self.evaluators, self.every = evaluators, every
        self.workdir, self.model, self.writer, self.is_main = Path(workdir), model, writer, is_main
        self.history = self._read_history()
        self.best = {name: None for name in evaluators}
        for entry in self.history:
            for name, ev in evaluators.items():
                value = entry.get(name, {}).get(ev.best_key)
                if value is not None and ev.improves(value, self.best[name]):
                    self.best[name] = value
        self._best_managers = {}

    def _read_history(self) -> list:
        path = self.workdir / METRICS
        return json.loads(path.read_text()) if path.exists() else []

    def due(self, step: int, total: int) -> list:
        return [n for n in self.evaluators if step % self.every[n] == 0 or step == total]

    def maybe_run(self, step: int, total: int, state) -> dict:
        """{name: results} of the evaluators due at `step`."""
        done = {}
        for name in self.due(step, total):
            ev = self.evaluators[name]
            results = ev.run(state)
            picture = ev.pictures(state, 4)
            improved = ev.improves(results[ev.best_key], self.best[name])
            if improved:
                self.best[name] = results[ev.best_key]
                self._save_best(name, step, state)
            done[name] = results
            if self.is_main:
                tqdm.write(format_table(name, step, results)
                           + (f"\n  new best {ev.best_key}: saved to best_{name}/"
                              if improved else ""))
                for k, v in results.items():
                    self.writer.add_scalar(f"{name}/{k}", v, step)
                self.writer.add_image(f"{name}/predictions", picture, step, dataformats="HWC")
                save_png(picture, self.workdir / "pictures" / f"{name}_step_{step:07d}.png")
        if done and self.is_main:
            self.history = [e for e in self.history if e["step"] != step] + [{"step": step, **done}]
            write_json(self.workdir / METRICS, self.history)
        return done

    def _save_best(self, name: str, step: int, state) -> None:
        """Replaces best_<name>/ with `state`'s model (collective: every process saves)."""
        if name not in self._best_managers:
            options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
            self._best_managers[name] = ocp.CheckpointManager(
                self.workdir.absolute() / f"best_{name}" / fmt.CHECKPOINTS, options=options,
                handler_registry=fmt.handler_registry())
        mngr = self._best_managers[name]
        mngr.save(step, force=True, args=ocp.args.Composite(
            **fmt.save_args(self.model, state),
            **{CHECKSUMS: ocp.args.JsonSave(integrity.host_checksums(state))}))
        mngr.wait_until_finished()

    def close(self) -> None:
        for mngr in self._best_managers.values():
            mngr.close()
