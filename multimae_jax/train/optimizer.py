"""The official pre-training optimizer: AdamW with per-step lr and weight-decay schedules,
per-parameter lr multipliers, and torch's gradient clipping.

Official: `run_pretraining_multimae.py: main / train_one_epoch` (schedules set per iteration),
`utils/optim_factory.py: create_optimizer` (param groups with an `lr_scale`) and
`utils/native_scaler.py` (`cosine_scheduler`, clipping).

The optimizer runs over the trainable part of the train state, {'params': model parameters,
'balancer': task-balancing parameters (when used)}; its paths ('params/encoder/0/attn/qkv/
kernel', 'balancer/log_vars') are those of the train state.
"""
import re

import jax
import jax.numpy as jnp
import optax


def scaled_lr(config) -> float:
    """The official linear scaling: lr = blr * global batch / 256."""
    return config.optimizer.blr * config.data.global_batch_size / 256


def warmup_steps(optimizer_config, steps_per_epoch: int) -> int:
    """Warm-up length in steps, as `cosine_scheduler` computes it: `warmup_steps` when > 0,
    else warmup_epochs x steps per epoch."""
    o = optimizer_config
    return int(o.warmup_steps) if o.warmup_steps > 0 else int(o.warmup_epochs * steps_per_epoch)


def warmup_cosine(base_value: float, total_steps: int, warmup_steps: int,
                  final_value: float = 0.0):
    """`utils/native_scaler.py: cosine_scheduler` as a function of the step: warm-up =
    np.linspace(0, base_value, warmup_steps) (from 0, both ends included), then a half cosine
    from base_value towards final_value over the remaining steps; final_value after the end."""
    decay_steps = max(1, total_steps - warmup_steps)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = (base_value * step / max(1, warmup_steps - 1) if warmup_steps > 1
                else 0.0 * step)
        t = (step - warmup_steps) / decay_steps
        cos = final_value + 0.5 * (base_value - final_value) * (
            1 + jnp.cos(jnp.pi * jnp.clip(t, 0.0, 1.0)))
        return jnp.where(step < warmup_steps, warm, cos)
    return schedule


def weight_decay_schedule(optimizer_config, total_steps: int):
    """The official wd schedule: cosine_scheduler(weight_decay, weight_decay_end, ...) with no
    warm-up; constant when weight_decay_end is None."""
    o = optimizer_config
    end = o.weight_decay if o.weight_decay_end is None else o.weight_decay_end
    return warmup_cosine(o.weight_decay, total_steps, 0, end)


#: Parameter names that pre-training's decay_all_params=False exempts from weight decay, at any
#: depth of the path (the official fine-tuning rule matches exact names: train/param_groups.py).
NO_DECAY_NAMES = ("global_tokens", "mask_token", "task_embeddings", "pos_emb")


def path_names(tree):
    """The tree with every leaf replaced by its '/'-joined path ('params/encoder/0/...')."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: jax.tree_util.keystr(path, simple=True, separator="/"), tree)


def decay_mask(params, decay_all: bool):
    """True where weight decay applies. The official pre-training decays every parameter
    (`decay_all`); otherwise 1-D parameters (biases, norms) and NO_DECAY_NAMES are exempt."""
    return jax.tree.map(
        lambda name, leaf: decay_all or not (
            leaf.ndim <= 1 or any(n in name.split("/") for n in NO_DECAY_NAMES)),
        path_names(params), params)


def lr_multipliers(tree, rules, field: str = "config.optimizer.lr_mults"):
    """A float per leaf: the multiplier of the first (regex, multiplier) rule whose regex
    fully matches the leaf's path (big_vision style), else 1. A rule that matches no path is
    an error (a typo would otherwise silently train at the base lr); one shadowed by earlier
    rules is not (a user rule may override a whole block's layer decay)."""
    rules = [(re.compile(p), float(m)) for p, m in rules]
    names = path_names(tree)
    used = set()

    def mult(name):
        hits = [i for i, (pattern, _) in enumerate(rules) if pattern.fullmatch(name)]
        used.update(hits)
        return rules[hits[0]][1] if hits else 1.0
    mults = jax.tree.map(mult, names)
    unused = [rules[i][0].pattern for i in range(len(rules)) if i not in used]
    if unused:
        raise ValueError(f"{field}: {unused} match no parameter path (paths look like "
                         f"{jax.tree.leaves(names)[:2]})")
    return mults


def _scale_by_schedules(lr_schedule, wd_schedule, decay, mults) -> optax.GradientTransformation:
    """-lr(step) x mult x (update + wd(step) x param x decay): torch.optim.AdamW's decoupled
    decay and step for a param group with lr = lr(step) x lr_scale. `step` is the global
    iteration passed to `update`, so the schedules never depend on how many updates were
    applied (torch keeps the iteration index outside the optimizer too)."""
    def init(params):
        decay(params), mults(params)  # a bad rule fails here, before a step is compiled
        return optax.EmptyState()

    def update(updates, state, params, *, step, **extra):
        del extra
        lr, wd = lr_schedule(step), wd_schedule(step)
        updates = jax.tree.map(
            lambda u, p, d, m: -lr * m * (u + wd * p) if d else -lr * m * u,
            updates, params, decay(params), mults(params))
        return updates, state
    return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(optimizer_config, lr_schedule, wd_schedule, *, lr_rules=None,
                   decay=None) -> optax.GradientTransformation:
    """AdamW over {'params': ..., 'balancer': ...}; call `update(grads, opt_state, trainable,
    step=global_step)`. Adam's own count (bias correction) lives in the optimizer state and
    advances only when an update is applied, as torch's `optimizer.step()`; lr and weight
    decay follow the global step. Every parameter is decayed by default (the official
    pre-training: both param groups get weight_decay). Multipliers of lr (and so of the
    decoupled decay, as torch): balancer_lr_scale for 'balancer/...', else the first matching
    `lr_rules` rule (default: `lr_mults`). `decay` (trainable tree -> bool tree) replaces the
    default decay_mask(params, decay_all_params); fine-tuning passes its param groups through
    both (train/param_groups.py)."""
    o = optimizer_config
    lr_rules = o.lr_mults if lr_rules is None else lr_rules
    decay = decay or (lambda params: decay_mask(params, o.decay_all_params))

    def mults(params):
        rules = tuple(tuple(r) for r in lr_rules)
        if "balancer" in params:
            rules = (("balancer/.*", o.balancer_lr_scale),) + rules
        return lr_multipliers(params, rules)
    return optax.chain(
        optax.scale_by_adam(o.b1, o.b2, o.eps),
        _scale_by_schedules(lr_schedule, wd_schedule, decay, mults))


def clip_by_total_norm(grads, max_norm: float, total_norm):
    """`torch.nn.utils.clip_grad_norm_`: scale by min(1, max_norm / (total_norm + 1e-6)), with
    total_norm the (pre-clip) global L2 norm of `grads`."""
    coef = jnp.minimum(1.0, max_norm / (total_norm + 1e-6))
    return jax.tree.map(lambda g: g * coef.astype(g.dtype), grads)


def mae_warmup_cosine(base_value: float, total_steps: float, warmup_steps: float,
                      final_value: float = 0.0):
    """facebookresearch/mae `util/lr_sched.py: adjust_learning_rate` (the linear-probing and
    fine-tuning lr) as a function of the step. MAE calls it every iteration with the fractional
    epoch e = step / steps_per_epoch; with total_steps = epochs x steps_per_epoch and
    warmup_steps = warmup_epochs x steps_per_epoch it is, in steps:

        step < warmup_steps: base_value x step / warmup_steps   (from 0, reaching base_value
                                                                 only at the end of warm-up)
        else: final_value + (base_value - final_value) x 0.5 x
              (1 + cos(pi (step - warmup_steps) / (total_steps - warmup_steps)))

    Unlike `warmup_cosine` (native_scaler.cosine_scheduler: a linspace warm-up that reaches
    base_value at warmup_steps - 1). After total_steps (never reached by MAE) it stays at
    final_value."""
    decay_steps = total_steps - warmup_steps

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = base_value * step / warmup_steps if warmup_steps > 0 else 0.0 * step
        t = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0) if decay_steps > 0 else 1.0
        cos = final_value + (base_value - final_value) * 0.5 * (1 + jnp.cos(jnp.pi * t))
        return jnp.where(step < warmup_steps, warm, cos)
    return schedule
