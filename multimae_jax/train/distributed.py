"""Joining a multi-process launch (used by every entry point)."""
import os

import jax


def maybe_initialize() -> None:
    """Calls jax.distributed.initialize() for a multi-process launch: an explicit coordinator
    (launch/tpu_vm.sh sets one), a SLURM step with several tasks (srun), GKE TPU pods, or
    MULTIMAE_DISTRIBUTED=1 (JAX then finds its peers itself, e.g. on TPU VM pods)."""
    env = os.environ
    if ("JAX_COORDINATOR_ADDRESS" in env or "TPU_WORKER_HOSTNAMES" in env
            or env.get("MULTIMAE_DISTRIBUTED") == "1"
            or int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1):
        jax.distributed.initialize()
