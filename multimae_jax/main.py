"""python -m multimae_jax.main --config=configs/pretrain.py[:variant] --workdir=DIR [--config.a.b=v]

Pre-trains MultiMAE (see configs/pretrain.py). Launched as several processes (TPU pods, SLURM,
or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set), it joins them with
jax.distributed first.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from multimae_jax.train import distributed
from multimae_jax.train.loop import ConfigError, NonFiniteError, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "a configs/*.py file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdir", "where checkpoints, logs and pictures go")


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax and grain log every save at INFO
    distributed.maybe_initialize()
    try:
        train(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, NonFiniteError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
