"""What `python -m multimae_jax.main` exits with, so that a scheduler can act on it.

  0   finished: the last step is checkpointed
  2   refused before training: a config field, the workdir (another run holds it, or its
      checkpoints belong to another model / batch size), or a data file (named)
  3   stopped on non-finite steps; nothing non-finite was saved
  4   a checkpoint could not be saved (disk full, ...) or none in the workdir restores
  75  preempted: SIGTERM / SIGINT saved a checkpoint; run the same command again to resume
      (launch/slurm.sbatch requeues the job on it)
Every failure prints one line, 'error: ...'.
"""
import sys

from multimae_jax.data.codecs import CorruptFileError
from multimae_jax.train.checkpoint import (CheckpointSaveError, CorruptCheckpointError,
                                           IncompatibleCheckpointError)
from multimae_jax.train.loop import NonFiniteError
from multimae_jax.train.validate import ConfigError
from multimae_jax.train.workdir import WorkdirError

PREEMPTED = 75  # EX_TEMPFAIL: "try again later"
CODES = ((ConfigError, 2), (WorkdirError, 2), (IncompatibleCheckpointError, 2),
         (CorruptFileError, 2), (NonFiniteError, 3), (CheckpointSaveError, 4),
         (CorruptCheckpointError, 4))


def run(train) -> int:
    """Calls `train()` (returning the loop's metrics) and returns the exit code of its outcome,
    printing the one-line reason of a failure or a preemption to stderr."""
    try:
        result = train()
    except tuple(cls for cls, _ in CODES) as e:
        print(f"error: {e}", file=sys.stderr)
        return next(code for cls, code in CODES if isinstance(e, cls))
    if result.get("stopped") in ("SIGTERM", "SIGINT"):
        print(f"{result['stopped']}: checkpoint saved; exit {PREEMPTED} (run the same command "
              f"to resume)", file=sys.stderr)
        return PREEMPTED
    return 0
