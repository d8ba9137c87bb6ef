"""The sharded, jitted pre-training step.

State: {'step', 'params', 'buffers', 'opt_state', 'nonfinite_streak', 'skipped',
'skipped_grad_norm'} (+ 'balancer' with a task balancer), created sharded by a jitted init.
'params' are the model's only, as the checkpoint loaders read them. The step draws the masks
inside from fold_in(seed key, step), so token counts stay static; it computes the official
losses in float32 whatever the compute dtype, accumulates gradients over micro-batches, clips
them (optimizer.clip_grad), and skips (and counts) any update whose loss, gradient, new
parameters or new optimizer state are not finite ('skipped'; a NaN lr shows only in the last
two) or whose gradient norm reaches optimizer.skip_grad ('skipped_grad_norm').
The step counter, and with it the lr and weight-decay schedules, advances either way.
"""
import math

import jax
import jax.numpy as jnp
import flax.linen as nn
import optax

from multimae_jax import integrity, losses, modalities
from multimae_jax.data.transforms import prepare_batch
from multimae_jax.models.layers import BATCH
from multimae_jax.models.presets import pretrain_multimae
from multimae_jax.models.spec import example_inputs
from multimae_jax.train import sharding, task_balancing
from multimae_jax.train.optimizer import (clip_by_total_norm, make_optimizer, warmup_cosine,
                                          weight_decay_schedule)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
#: The state entries the optimizer updates ('balancer' only with a task balancer).
TRAINABLE = ("params", "balancer")


def config_modalities(config) -> tuple[dict, dict, dict]:
    """({name: Modality} of the encoder inputs, of the decoder outputs, of the data read from
    disk (inputs, then output-only modalities)), with config.modalities applied."""
    registry = modalities.with_overrides(config.modalities.to_dict())
    ins = modalities.resolve(config.model.input_tasks, registry)
    outs = modalities.resolve(config.model.output_tasks, registry)
    return ins, outs, modalities.data_modalities(outs.values(), ins.values())


def build_model(config):
    """The MultiMAE of config.model, in config.train.compute_dtype."""
    mc = config.model
    ins, outs, _ = config_modalities(config)
    return pretrain_multimae(
        mc.size, tuple(ins.values()), tuple(outs.values()), mc.image_size, mc.patch_size,
        mc.decoder_dim, mc.decoder_depth, mc.decoder_num_heads,
        num_global_tokens=mc.num_global_tokens,
        fp32_output_adapters=tuple(config.train.fp32_output_adapters),
        dtype=DTYPES[config.train.compute_dtype], remat=config.train.remat,
        residual_dtype=DTYPES[config.train.residual_dtype],
        drop_path_rate=mc.drop_path_rate, **mc.overrides.to_dict())


class PretrainStep:
    """Everything jitted for pre-training on one mesh: `init(key)`, `step(state, batch)`,
    `predict(state, batch, n)` (for pictures), with their shardings."""

    def __init__(self, config, mesh, total_steps: int, warmup_steps: int, base_lr: float):
        self.config, self.mesh = config, mesh
        self.model = build_model(config)
        _, self.output_modalities, self.data_modalities = config_modalities(config)
        o = config.optimizer
        self.schedule = warmup_cosine(base_lr, total_steps, warmup_steps, o.min_lr)
        self.wd_schedule = weight_decay_schedule(o, total_steps)
        self.tx = make_optimizer(o, self.schedule, self.wd_schedule)
        self.tasks = tuple(config.model.output_tasks)  # the order of the balancer's log_vars
        self.key = jax.random.key(config.seed)
        self.abstract_state = jax.eval_shape(self._init, self.key)
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
        variables = self.model.init(key, example_inputs(self.model), mask_inputs=False)
        balancer = task_balancing.init_balancer(self.config.train.task_balancer, len(self.tasks))
        trainable = {"params": variables["params"], **({"balancer": balancer} if balancer else {})}
        zero = jnp.zeros((), jnp.int32)
        return {"step": zero, **trainable, "buffers": variables.get("buffers", {}),
                "opt_state": self.tx.init(trainable),
                "nonfinite_streak": zero, "skipped": zero, "skipped_grad_norm": zero}

    def _forward(self, params, buffers, batch, key, train: bool):
        """Model inputs, predictions, masks and per-task losses of one (micro-)batch."""
        mc = self.config.masking
        inputs = prepare_batch({t: batch[t] for t in self.data_modalities}, self.data_modalities)
        mask_key, drop_key = jax.random.split(key)
        with (jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh),
              nn.logical_axis_rules(((BATCH, sharding.AXES),))):
            preds, masks = self.model.apply(
                {"params": params, "buffers": buffers}, inputs,
                rngs={"masking": mask_key, "dropout": drop_key},
                num_encoded_tokens=mc.num_encoded_tokens, alphas=tuple(mc.alphas)
                if isinstance(mc.alphas, (tuple, list)) else mc.alphas,
                sample_tasks_uniformly=mc.sample_tasks_uniformly, train=train)
        task_losses = losses.pretraining_losses(preds, inputs, masks, self.output_modalities,
                                                self.config.model.patch_size,
                                                self.config.train.loss_on_unmasked)
        return inputs, preds, masks, task_losses

    def _step(self, state, batch):
        o, accum = self.config.optimizer, self.config.train.grad_accum_steps
        key = jax.random.fold_in(self.key, state["step"])
        micro = jax.tree.map(lambda x: x.reshape((accum, -1) + x.shape[1:]), batch)
        trainable = {k: state[k] for k in TRAINABLE if k in state}

        def loss_fn(trainable, mb, k):
            *_, task_losses = self._forward(trainable["params"], state["buffers"], mb, k,
                                            train=True)
            weighted = task_balancing.weigh(trainable.get("balancer"), task_losses, self.tasks)
            return sum(weighted.values()), (task_losses, weighted)

        def accumulate(carry, inp):
            grads, totals = carry
            i, mb = inp
            (_, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(
                trainable, mb, jax.random.fold_in(key, i))
            grads = jax.tree.map(lambda a, b: a + b / accum, grads, g)
            totals = jax.tree.map(lambda a, b: a + b / accum, totals, aux)
            return (grads, totals), None

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        zero_losses = {t: jnp.zeros((), jnp.float32) for t in self.tasks}
        (grads, (task_losses, weighted)), _ = jax.lax.scan(
            accumulate, (zeros, (zero_losses, zero_losses)), (jnp.arange(accum), micro))
        loss = sum(task_losses.values())  # unweighted, as the official loss_value
        # the official clips, skips on and logs the norm of the model's gradients only
        # (`loss_scaler(..., parameters=model.parameters())`)
        grad_norm = optax.tree.norm(grads["params"])
        others = {k: v for k, v in grads.items() if k != "params"}
        finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
                  & jnp.isfinite(optax.tree.norm(others)))  # and the new state, below
        too_large = jnp.zeros((), bool)
        if o.clip_grad is not None:
            grads = {**grads, "params": clip_by_total_norm(grads["params"], o.clip_grad, grad_norm)}
        elif o.skip_grad is not None:  # official: skip_grad only without clip_grad
            too_large = grad_norm >= o.skip_grad
        # lr and weight decay follow the global step, which advances on every iteration;
        # a skipped update keeps the old optimizer state and so Adam's count (torch's
        # GradScaler / skip_grad never call optimizer.step())
        updates, opt_state = self.tx.update(grads, state["opt_state"], trainable,
                                            step=state["step"])
        new = optax.apply_updates(trainable, updates)
        finite = finite & integrity.all_finite((new, opt_state))
        apply = finite & ~too_large
        keep = lambda new, old: jax.tree.map(lambda n, p: jnp.where(apply, n, p), new, old)
        new_state = {
            "step": state["step"] + 1, "buffers": state["buffers"], **keep(new, trainable),
            "opt_state": keep(opt_state, state["opt_state"]),
            "nonfinite_streak": jnp.where(finite, 0, state["nonfinite_streak"] + 1),
            "skipped": state["skipped"] + (~finite).astype(jnp.int32),
            "skipped_grad_norm": (state["skipped_grad_norm"]
                                  + (finite & too_large).astype(jnp.int32))}
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": self.schedule(state["step"]),
                   "weight_decay": self.wd_schedule(state["step"]), "finite": finite,
                   **{f"loss/{t}": v for t, v in task_losses.items()}}
        if "balancer" in trainable:
            metrics.update({f"loss_weighted/{t}": v for t, v in weighted.items()})
        return new_state, metrics

    def _predict(self, state, batch, n: int):
        """Inputs, predictions and masks of the first n samples (for pictures)."""
        batch = jax.tree.map(lambda x: x[:n], batch)
        inputs, preds, masks, _ = self._forward(state["params"], state["buffers"], batch,
                                                jax.random.fold_in(self.key, 2 ** 31 - 1),
                                                train=False)  # a stream no train step uses
        return inputs, preds, masks
