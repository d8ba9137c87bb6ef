"""The sharded, jitted training step of any objective (train/pretrain.py: pre-training).

State: {'step', 'params', 'buffers', 'opt_state', 'nonfinite_streak', 'skipped',
'skipped_grad_norm'} plus the objective's extra trainable entries (pre-training's 'balancer'),
created sharded by a jitted init. 'params' are the model's only, as the checkpoint loaders read
them. The step draws its randomness (masks, drop path) from fold_in(seed key, step), accumulates
the objective's gradients over micro-batches, clips them (optimizer.clip_grad), and skips (and
counts) any update whose loss, gradient, lr or weight decay is not finite ('skipped'; with a
finite old state these decide whether the new parameters and optimizer state are: see
`Trainer._update`) or whose gradient norm reaches optimizer.skip_grad ('skipped_grad_norm').
The step counter, and with it the lr and weight-decay schedules, advances either way.
"""
import contextlib
import math

import jax
import jax.numpy as jnp
import flax.linen as nn
import optax

from multimae_jax.models.layers import BATCH
from multimae_jax.train import sharding
from multimae_jax.train.optimizer import (clip_by_total_norm, mae_warmup_cosine, warmup_cosine,
                                         weight_decay_schedule)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
#: config.optimizer.schedule: the official `cosine_scheduler` (warm-up np.linspace(0, lr,
#: warmup); train/optimizer.py: warmup_cosine), or MAE's `adjust_learning_rate` (warm-up
#: lr * step / warmup; mae_warmup_cosine)
SCHEDULES = ("cosine_scheduler", "mae")


class Trainer:
    """Everything jitted to train `objective` on one mesh: `init(key)`, `step(state, batch)`,
    `predict(state, batch, n)` (for pictures), with their shardings."""

    def __init__(self, objective, config, mesh, total_steps: int, warmup_steps: int,
                 base_lr: float):
        self.objective, self.config, self.mesh = objective, config, mesh
        self.model = objective.model
        o = config.optimizer
        schedule = mae_warmup_cosine if o.get("schedule") == "mae" else warmup_cosine
        self.schedule = schedule(base_lr, total_steps, warmup_steps, o.min_lr)
        self.wd_schedule = weight_decay_schedule(o, total_steps)
        self.tx = objective.make_optimizer(self.schedule, self.wd_schedule)
        self.key = jax.random.key(config.seed)
        self.abstract_state = jax.eval_shape(self._init, self.key)
        self.trainable_keys = ("params",) + tuple(objective.init_extra())
        self.state_sharding = sharding.state_shardings(self.abstract_state, mesh,
                                                       config.train.fsdp_min_size)
        self.batch_sharding = sharding.batch_sharding(mesh)
        rep = sharding.replicated(mesh)
        self.init = jax.jit(self._init, out_shardings=self.state_sharding)
        self.step = jax.jit(self._step, in_shardings=(self.state_sharding, self.batch_sharding),
                            out_shardings=(self.state_sharding, rep), donate_argnums=0)
        self.predict = jax.jit(self._predict, static_argnums=2, out_shardings=rep)

    @property
    def num_params(self) -> int:
        """Number of trainable parameters."""
        return sum(math.prod(x.shape) for x in jax.tree.leaves(self.abstract_state["params"]))

    def _init(self, key):
        variables = self.objective.init_variables(key)
        trainable = {"params": variables["params"], **self.objective.init_extra()}
        zero = jnp.zeros((), jnp.int32)
        return {"step": zero, **trainable, "buffers": variables.get("buffers", {}),
                "opt_state": self.tx.init(trainable),
                "nonfinite_streak": zero, "skipped": zero, "skipped_grad_norm": zero}

    def on_mesh(self) -> contextlib.ExitStack:
        """The tracing context of model code: the batch axis of every activation sharded over
        the mesh's data axes."""
        stack = contextlib.ExitStack()
        stack.enter_context(jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh))
        stack.enter_context(nn.logical_axis_rules(((BATCH, sharding.AXES),)))
        return stack

    def loss(self, trainable, buffers, batch, key):
        """The objective's (value to minimise, logged metrics) of one (micro-)batch."""
        with self.on_mesh():
            return self.objective.loss(trainable, buffers, batch, key)

    def _step(self, state, batch):
        grads, logged, buffers = self._gradients(state, batch)
        return self._update(state, grads, logged, buffers)

    def _gradients(self, state, batch):
        """(gradients of the trainable entries, logged metrics, buffers) of `batch`, averaged
        over train.grad_accum_steps micro-batches. Micro-batch i draws from fold_in(step key,
        i); one micro-batch runs without a loop (a loop carry would copy the gradients)."""
        accum = self.config.train.grad_accum_steps
        key = jax.random.fold_in(self.key, state["step"])
        trainable = {k: state[k] for k in self.trainable_keys}

        # An objective with `updates_buffers` (the linear probe's BatchNorm statistics) returns
        # (loss, (logged, new buffers)); its buffers pass from micro-batch to micro-batch, as
        # torch's running statistics do, and are kept only with a finite update.
        updates_buffers = getattr(self.objective, "updates_buffers", False)

        def loss_fn(trainable, buffers, mb, k):
            loss, aux = self.loss(trainable, buffers, mb, k)
            return loss, (aux if updates_buffers else (aux, buffers))

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if accum == 1:
            (_, (logged, buffers)), grads = grad_fn(trainable, state["buffers"], batch,
                                                    jax.random.fold_in(key, 0))
            return grads, logged, buffers

        def accumulate(carry, inp):
            grads, totals, buffers = carry
            i, mb = inp
            (_, (logged, buffers)), g = grad_fn(trainable, buffers, mb, jax.random.fold_in(key, i))
            grads = jax.tree.map(lambda a, b: a + b / accum, grads, g)
            totals = jax.tree.map(lambda a, b: a + b / accum, totals, logged)
            return (grads, totals, buffers), None

        micro = jax.tree.map(lambda x: x.reshape((accum, -1) + x.shape[1:]), batch)
        zeros = jax.tree.map(jnp.zeros_like, trainable)
        _, (logged_shape, _) = jax.eval_shape(loss_fn, trainable, state["buffers"],
                                              jax.tree.map(lambda x: x[0], micro), key)
        zero_logged = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), logged_shape)
        (grads, logged, buffers), _ = jax.lax.scan(
            accumulate, (zeros, zero_logged, state["buffers"]), (jnp.arange(accum), micro))
        return grads, logged, buffers

    def _update(self, state, grads, logged, buffers):
        """(new state, metrics): the optimizer step from the gradients, clipped, or skipped
        and counted (see the module docstring)."""
        o, step = self.config.optimizer, state["step"]
        trainable = {k: state[k] for k in self.trainable_keys}
        # the official clips, skips on and logs the norm of the model's gradients only
        # (`loss_scaler(..., parameters=model.parameters())`)
        grad_norm = optax.tree.norm(grads["params"])
        others = {k: v for k, v in grads.items() if k != "params"}
        lr, wd = self.schedule(step), self.wd_schedule(step)
        # Whether to apply the update is decided before it, from scalars at hand, so that the
        # select below fuses into the optimizer's element-wise update: no pass over the new
        # parameters and optimizer state. This loses nothing: with a finite old state (the
        # initial one is, every restore checks it, and an applied update keeps it so), a finite
        # loss, gradient norms, lr and weight decay give a finite AdamW state. The finite norm
        # bounds every g^2 below float32's maximum; mu' = b1 mu + (1 - b1) g and nu' = b2 nu +
        # (1 - b2) g^2 are convex combinations of finite values, their bias-corrected values
        # weighted means of past g and g^2; the step mu^ / (sqrt(nu^) + eps) divides by at least
        # eps > 0, and lr, wd and the lr multipliers are finite. So no NaN can arise (no 0 / 0,
        # inf - inf, 0 x inf), and by Cauchy-Schwarz |mu^| / sqrt(nu^) stays of order 1 (for
        # b1^2 < b2, as every recipe): an infinity would take a parameter or lr near 3.4e38,
        # where the loss is long non-finite. (LARS, the linear probe's: finite norms, trust
        # ratio and momentum trace alike.)
        finite = (jnp.isfinite(logged["loss"]) & jnp.isfinite(grad_norm)
                  & jnp.isfinite(optax.tree.norm(others)) & jnp.isfinite(lr) & jnp.isfinite(wd))
        too_large = jnp.zeros((), bool)
        if o.clip_grad is not None:
            grads = {**grads, "params": clip_by_total_norm(grads["params"], o.clip_grad, grad_norm)}
        elif o.skip_grad is not None:  # official: skip_grad only without clip_grad
            too_large = grad_norm >= o.skip_grad
        # lr and weight decay follow the global step, which advances on every iteration;
        # a skipped update keeps the old optimizer state and so Adam's count (torch's
        # GradScaler / skip_grad never call optimizer.step())
        updates, opt_state = self.tx.update(grads, state["opt_state"], trainable, step=step)
        apply = finite & ~too_large
        keep = lambda new, old: jax.tree.map(lambda n, p: jnp.where(apply, n, p), new, old)
        new_state = {
            "step": step + 1, "buffers": keep(buffers, state["buffers"]),
            **keep(optax.apply_updates(trainable, updates), trainable),
            "opt_state": keep(opt_state, state["opt_state"]),
            "nonfinite_streak": jnp.where(finite, 0, state["nonfinite_streak"] + 1),
            "skipped": state["skipped"] + (~finite).astype(jnp.int32),
            "skipped_grad_norm": (state["skipped_grad_norm"]
                                  + (finite & too_large).astype(jnp.int32))}
        metrics = {**logged, "grad_norm": grad_norm, "lr": lr, "weight_decay": wd, "finite": finite}
        return new_state, metrics

    def _predict(self, state, batch, n: int):
        """The objective's prediction of the first n samples (for pictures)."""
        batch = jax.tree.map(lambda x: x[:n], batch)
        key = jax.random.fold_in(self.key, 2 ** 31 - 1)  # a stream no train step uses
        with self.on_mesh():
            return self.objective.predict(state["params"], state["buffers"], batch, key)
