"""python -m multimae_jax.main --config=configs/pretrain.py[:variant] --workdir=DIR [--config.a.b=v]

Pre-trains MultiMAE (see configs/pretrain.py). Launched as several processes (TPU pods, SLURM,
or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set), it joins them with
jax.distributed first. Exit codes: multimae_jax/train/exit_codes.py (0 finished, 2 refused,
3 non-finite, 4 checkpoint failure, 75 preempted).
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from multimae_jax.train import distributed, exit_codes
from multimae_jax.train.loop import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "a configs/*.py file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdir", "where checkpoints, logs and pictures go")


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax and grain log every save at INFO
    distributed.maybe_initialize()
    sys.exit(exit_codes.run(lambda: train(_CONFIG.value, _WORKDIR.value)))


if __name__ == "__main__":
    app.run(main)
