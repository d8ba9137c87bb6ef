"""Chaos trials for the pre-training entry point: kill -9 at random moments (some during an
asynchronous checkpoint save), a corrupted newest checkpoint, a NaN injected into a step.

    python tests/chaos.py [--trials 3] [--kills 3] [--seed 0] [--workdir DIR]

Each trial (figures in docs/reliability.md):
1. a straight run of `python -m multimae_jax.main` (train_helpers.SMALL: the tiny recipe at
   32 px, a checkpoint every 2 steps, `--steps` steps) gives the reference final state;
2. the same run is started again and again, each time killed with SIGKILL: every other kill
   the instant a checkpoint save is under way (Orbax's temporary folder appears), the others
   at a random moment after the run's first step; then it runs to the end. Its final
   parameters and optimizer state must equal the straight run's bit for bit;
3. the newest checkpoint is corrupted (half of its largest data file cut off) and the run
   restarted: it must fall back to the previous checkpoint, retrain the last steps and again
   equal the straight run;
4. a NaN lr from step NAN_FROM on (in this process): the run must stop with NonFiniteError and
   every checkpoint it left must be finite.
Prints one line per event and a summary table; exits 1 if any check failed. Subprocesses
inherit this environment (XLA_FLAGS, JAX_COMPILATION_CACHE_DIR); tests/test_chaos.py runs
part 2 in CI.
"""
import argparse
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from train_helpers import SMALL  # noqa: E402

NAN_FROM = 5


def command(workdir: Path, flags: dict) -> list[str]:
    return [sys.executable, "-m", "multimae_jax.main", "--config=configs/pretrain.py:tiny",
            f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in flags.items()]


def run(workdir: Path, flags: dict, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(command(workdir, flags), cwd=REPO, capture_output=True, text=True,
                          env=env)


def run_to_end(workdir: Path, flags: dict, env=None) -> None:
    out = run(workdir, flags, env)
    if out.returncode != 0:
        raise RuntimeError(f"run in {workdir} exited {out.returncode}: {out.stderr[-2000:]}")


def saving(workdir: Path) -> bool:
    root = workdir / "checkpoints"
    return root.is_dir() and any(p.name.endswith("orbax-checkpoint-tmp") for p in root.iterdir())


def run_and_kill(workdir: Path, flags: dict, during_save: bool, delay: float, env=None,
                 timeout: float = 300) -> str:
    """Starts the run and SIGKILLs it during its first save, or `delay` seconds after its first
    step; returns what the kill interrupted ('' if the run ended first)."""
    log_path = workdir.parent / f"{workdir.name}.log"
    seen = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "a") as log:
        proc = subprocess.Popen(command(workdir, flags), cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        start, stepped = time.time(), None
        try:
            while proc.poll() is None and time.time() - start < timeout:
                if during_save and saving(workdir):
                    proc.kill()
                    return "during a save"
                if stepped is None and re.search(r"step \d+: loss", log_path.read_text()[seen:]):
                    stepped = time.time()
                if not during_save and stepped is not None and time.time() - stepped > delay:
                    proc.kill()
                    return f"{delay:.2f} s after its first step"
                time.sleep(0.002)
            return ""
        finally:
            proc.kill()
            proc.wait()


def kill_and_resume(workdir: Path, flags: dict, kills: int, rng: random.Random, env=None,
                    report=print, max_delay: float = 2.0) -> dict:
    """Part 2: `kills` SIGKILLs (every other one during a save), then a run to the end.
    Returns {'kills': landed, 'during_save': landed during a save}."""
    out = {"kills": 0, "during_save": 0}
    for k in range(kills):
        what = run_and_kill(workdir, flags, k % 2 == 0, rng.uniform(0.0, max_delay), env)
        report(f"  kill {k + 1}: {what or 'the run ended before it'}")
        out["kills"] += bool(what)
        out["during_save"] += what == "during a save"
    run_to_end(workdir, flags, env)
    return out


def final_state(workdir: Path):
    from multimae_jax.train.checkpoint import restore_state_only
    step, state = restore_state_only(workdir)
    return step, {k: state[k] for k in ("params", "opt_state", "step")}


def equal(a, b) -> bool:
    """Bitwise equality of two `final_state`s."""
    import jax
    import numpy as np
    return a[0] == b[0] and all(jax.tree.leaves(jax.tree.map(np.array_equal, a[1], b[1])))


def corrupt_newest(workdir: Path) -> int:
    from multimae_jax.checkpoint_format import latest_step
    step = latest_step(workdir / "checkpoints")
    files = [p for p in (workdir / "checkpoints" / str(step) / "state").rglob("*") if p.is_file()]
    biggest = max(files, key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
    return step


def nan_trial(workdir: Path, flags: dict) -> tuple[bool, str]:
    """Part 4: a NaN lr from step NAN_FROM on stops the run; every checkpoint left is finite."""
    import jax.numpy as jnp
    from configs.pretrain import get_config
    from multimae_jax import integrity
    from multimae_jax.train import step as step_module
    from multimae_jax.train.checkpoint import restore_state_only
    from multimae_jax.train.loop import NonFiniteError, train
    config = get_config("tiny")
    config.update_from_flattened_dict({**flags, "train.max_nonfinite_steps": 3})
    real = step_module.warmup_cosine
    step_module.warmup_cosine = lambda *a: (
        lambda s: jnp.where(s >= NAN_FROM - 1, jnp.nan, real(*a)(s)))
    try:
        train(config, workdir)
        return False, "the run did not stop"
    except NonFiniteError as e:
        message = str(e)
    finally:
        step_module.warmup_cosine = real
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    bad = [s for s in steps if integrity.non_finite(restore_state_only(workdir, s)[1])]
    return bool(steps) and not bad and max(steps) < NAN_FROM, f"{message}; checkpoints {steps}"


def trial(root: Path, flags: dict, kills: int, rng: random.Random, report) -> dict:
    straight, chaos = root / "straight", root / "chaos"
    run_to_end(straight, flags)
    want = final_state(straight)
    row = kill_and_resume(chaos, flags, kills, rng, report=report)
    row["equal"] = equal(final_state(chaos), want)
    report(f"  resumed to the end: final state {'==' if row['equal'] else '!='} straight run")
    step = corrupt_newest(chaos)
    out = run(chaos, flags)
    fell_back = out.returncode == 0 and f"warning: checkpoint step {step}" in out.stdout
    row["fallback_equal"] = fell_back and equal(final_state(chaos), want)
    report(f"  corrupted step {step}: fell back {fell_back}, final state "
           f"{'==' if row['fallback_equal'] else '!='} straight run")
    row["nan"], what = nan_trial(root / "nan", flags)
    report(f"  NaN lr from step {NAN_FROM}: {'ok' if row['nan'] else 'FAILED'} ({what})")
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path)
    args = p.parse_args(argv)
    flags = {**SMALL, "train.num_steps": args.steps, "train.keep_checkpoints": 3}
    rng = random.Random(args.seed)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="chaos_"))
    rows = []
    for t in range(args.trials):
        folder = root / f"trial_{t}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        print(f"trial {t + 1}/{args.trials} in {folder}", flush=True)
        rows.append(trial(folder, flags, args.kills, rng, lambda line: print(line, flush=True)))
    print("\n| trial | kills | during a save | resumed == straight | corrupted newest: "
          "fallback == straight | NaN: stopped, nothing non-finite saved |")
    print("|---|---|---|---|---|---|")
    for t, r in enumerate(rows):
        print(f"| {t + 1} | {r['kills']} | {r['during_save']} | {r['equal']} | "
              f"{r['fallback_equal']} | {r['nan']} |")
    ok = all(r["equal"] and r["fallback_equal"] and r["nan"] and r["during_save"] > 0
             for r in rows)
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
