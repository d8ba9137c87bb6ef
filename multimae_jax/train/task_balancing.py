"""Task loss weighting of the official pre-training (`utils/task_balancing.py`).

"none" sums the task losses as they are (`NoWeightingStrategy`); "uncertainty"
(`UncertaintyWeightingStrategy`) learns one log-variance s_i per output task and weights
L_i -> exp(-s_i) L_i + s_i. The official code builds one s_i per `out_domains` entry and so
fails when the extra norm_rgb loss is on; here there is one per config.model.output_tasks
entry, in that order.
"""
import jax.numpy as jnp

BALANCERS = ("none", "uncertainty")


def init_balancer(kind: str, num_tasks: int) -> dict:
    """The balancer's parameters: {} for "none", {'log_vars': zeros (T,)} for "uncertainty"."""
    return {"log_vars": jnp.zeros((num_tasks,), jnp.float32)} if kind == "uncertainty" else {}


def uncertainty_weighting(log_vars, losses):
    """log_vars, losses: (T,) -> (T,) weighted losses exp(-s) L + s, and 0 where L == 0 (a
    task with no loss, e.g. dropped, gains no information: the official multiplies by the
    mask, so neither s nor L gets a gradient there)."""
    return (jnp.exp(-log_vars) * losses + log_vars) * (losses != 0)


def weigh(balancer: dict, task_losses: dict, tasks) -> dict:
    """{task: loss} -> {task: weighted loss}; `tasks` orders the log_vars. With no balancer
    parameters, the losses unchanged."""
    if not balancer:
        return task_losses
    weighted = uncertainty_weighting(balancer["log_vars"],
                                     jnp.stack([task_losses[t] for t in tasks]))
    return dict(zip(tasks, weighted))
