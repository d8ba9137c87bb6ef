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


def barrier(name: str, timeout_s: int = 3600) -> None:
    """Waits until every process reaches `name`, through the coordination service: unlike
    multihost_utils.sync_global_devices it runs no collective, so nothing has to be compiled or
    connected first. Used before a program's first collective when the processes may arrive far
    apart (each compiles it on its own): gloo gives up connecting CPU peers after 30 s.
    No-op in one process. `name` must be unique within the run."""
    if jax.process_count() == 1:
        return
    # jax has no public handle on the coordination client; Orbax uses the same one
    from jax._src import distributed as jax_distributed
    jax_distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)
