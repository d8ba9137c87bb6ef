"""Training-loop fixtures: schedules (utils/native_scaler.py: cosine_scheduler), uncertainty task
weighting (utils/task_balancing.py: UncertaintyWeightingStrategy) and gradient clipping
(torch.nn.utils.clip_grad_norm_, as utils/native_scaler.py: NativeScalerWithGradNormCount uses it)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch

from common import Fixture

SCHEDULES = {
    "lr_warmup_epochs": dict(base_value=8e-4, final_value=0.0, epochs=6, niter_per_ep=7,
                             warmup_epochs=2, warmup_steps=-1),
    "lr_warmup_steps": dict(base_value=8e-4, final_value=0.0, epochs=6, niter_per_ep=7,
                            warmup_epochs=2, warmup_steps=5),
    "lr_min": dict(base_value=1e-3, final_value=1e-5, epochs=5, niter_per_ep=4,
                   warmup_epochs=1, warmup_steps=-1),
    # run_pretraining_multimae.py builds the weight-decay schedule without warmup arguments.
    "wd_end": dict(base_value=0.05, final_value=0.2, epochs=5, niter_per_ep=6,
                   warmup_epochs=0, warmup_steps=-1),
}
BALANCED_TASKS = ["rgb", "depth", "semseg", "norm_rgb"]
LOG_VARS = [0.3, -0.2, 0.1, 0.0]
TASK_LOSSES = [0.75, 1.25, 0.0, 2.5]  # semseg exactly 0: a dropped task


def schedules(off) -> Fixture:
    arrays = {}
    for name, case in SCHEDULES.items():
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the warmup length
            arrays[name] = np.asarray(off.native_scaler.cosine_scheduler(**case))
    what = ("official utils/native_scaler.py: cosine_scheduler(**cases[name]) per name (float64, one "
            "value per iteration). start_warmup_value is left at its default 0.")
    return Fixture("schedules", arrays, {"what": what, "cases": SCHEDULES})


def task_balancing(off) -> Fixture:
    balancer = off.task_balancing.UncertaintyWeightingStrategy(tasks=BALANCED_TASKS)
    with torch.no_grad():
        balancer.log_vars.copy_(torch.tensor(LOG_VARS))
    losses = torch.tensor(TASK_LOSSES, requires_grad=True)
    weighted = balancer(dict(zip(BALANCED_TASKS, losses.unbind())))
    total = sum(weighted.values())
    total.backward()
    arrays = {
        "log_vars": balancer.log_vars.detach().numpy(),
        "losses": losses.detach().numpy(),
        "weighted": torch.stack(list(weighted.values())).detach().numpy(),
        "grad_log_vars": balancer.log_vars.grad.numpy(),
        "grad_losses": losses.grad.numpy(),
    }
    what = ("official utils/task_balancing.py: UncertaintyWeightingStrategy(tasks) with log_vars set "
            "to the stored values; weighted = its forward on the task losses (in 'tasks' order); "
            "grad_* = gradients of sum(weighted). A loss of exactly 0 (a dropped task) is weighted 0. "
            "Note: run_pretraining_multimae.py builds it with tasks=out_domains, which lacks norm_rgb.")
    return Fixture("task_balancing", arrays, {"what": what, "tasks": BALANCED_TASKS})


def _clipped(prefix: str, grads: list[np.ndarray], max_norm: float) -> dict[str, np.ndarray]:
    params = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = torch.from_numpy(g.copy())
    total = torch.nn.utils.clip_grad_norm_(params, max_norm)
    out = {f"{prefix}max_norm": np.float32(max_norm), f"{prefix}total_norm": total.numpy()}
    out.update({f"{prefix}grad/{i}": g for i, g in enumerate(grads)})
    out.update({f"{prefix}clipped/{i}": p.grad.numpy() for i, p in enumerate(params)})
    return out


def clip_grad(seed=5) -> Fixture:
    rng = np.random.default_rng(seed)
    grads = [rng.standard_normal(shape).astype(np.float32) for shape in [(3, 4), (5,), (2, 3, 2)]]
    norm = float(np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads)))
    arrays = {**_clipped("", grads, round(norm / 3, 2)), **_clipped("big/", grads, round(norm * 2, 2))}
    what = ("torch.nn.utils.clip_grad_norm_(params, max_norm), as utils/native_scaler.py: "
            "NativeScalerWithGradNormCount calls it with clip_grad: total_norm = the global L2 norm it "
            "returns, clipped/<i> = the gradients after it. Top-level keys: max_norm below the norm; "
            "big/...: max_norm above the norm (nothing clipped).")
    return Fixture("clip_grad", arrays, {"what": what})
