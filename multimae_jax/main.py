"""python -m multimae_jax.main --config=configs/pretrain.py[:variant] --workdir=DIR [--config.a.b=v]

Pre-trains MultiMAE (see configs/pretrain.py). Launched as several processes (TPU pods, SLURM,
or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set), it joins them with
jax.distributed first.
"""
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from multimae_jax.train.loop import ConfigError, NonFiniteError, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "a configs/*.py file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdir", "where checkpoints, logs and pictures go")


def _maybe_initialize_distributed() -> None:
    """Joins the other processes of a multi-process launch: an explicit coordinator
    (launch/tpu_vm.sh sets one), a SLURM step with several tasks (srun), GKE TPU pods, or
    MULTIMAE_DISTRIBUTED=1 (JAX then finds its peers itself, e.g. on TPU VM pods)."""
    env = os.environ
    if ("JAX_COORDINATOR_ADDRESS" in env or "TPU_WORKER_HOSTNAMES" in env
            or env.get("MULTIMAE_DISTRIBUTED") == "1"
            or int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1):
        jax.distributed.initialize()


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax and grain log every save at INFO
    _maybe_initialize_distributed()
    try:
        train(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, NonFiniteError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
