"""The sharded, jitted pre-training step.

State: {'step', 'params', 'buffers', 'opt_state', 'nonfinite_streak', 'skipped'}, created
sharded by a jitted init. The step draws the masks inside from fold_in(seed key, step), so
token counts stay static; it computes the official losses in float32 whatever the compute
dtype, accumulates gradients over micro-batches, and skips (and counts) any update whose loss
or gradient is not finite.
"""
import math

import jax
import jax.numpy as jnp
import flax.linen as nn
import optax

from multimae_jax import losses
from multimae_jax.data.transforms import prepare_batch
from multimae_jax.models.layers import BATCH
from multimae_jax.models.presets import pretrain_multimae
from multimae_jax.models.spec import example_inputs
from multimae_jax.train import sharding
from multimae_jax.train.optimizer import make_optimizer, warmup_cosine

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(config):
    """The MultiMAE of config.model, in config.train.compute_dtype."""
    mc = config.model
    return pretrain_multimae(
        mc.size, tuple(mc.input_tasks), tuple(mc.output_tasks), mc.image_size, mc.patch_size,
        mc.decoder_dim, mc.decoder_depth, mc.decoder_num_heads, mc.semseg_num_classes,
        num_global_tokens=mc.num_global_tokens,
        fp32_output_adapters=tuple(config.train.fp32_output_adapters),
        dtype=DTYPES[config.train.compute_dtype], remat=config.train.remat,
        drop_path_rate=mc.drop_path_rate, **mc.overrides.to_dict())


class PretrainStep:
    """Everything jitted for pre-training on one mesh: `init(key)`, `step(state, batch)`,
    `predict(state, batch, n)` (for pictures), with their shardings."""

    def __init__(self, config, mesh, total_steps: int, warmup_steps: int, base_lr: float):
        self.config, self.mesh = config, mesh
        self.model = build_model(config)
        self.schedule = warmup_cosine(base_lr, total_steps, warmup_steps, config.optimizer.min_lr)
        self.tx = make_optimizer(config, self.schedule)
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
        params = variables["params"]
        return {"step": jnp.zeros((), jnp.int32), "params": params,
                "buffers": variables.get("buffers", {}), "opt_state": self.tx.init(params),
                "nonfinite_streak": jnp.zeros((), jnp.int32), "skipped": jnp.zeros((), jnp.int32)}

    def _forward(self, params, buffers, batch, key, train: bool):
        """Model inputs, predictions, masks and per-task losses of one (micro-)batch."""
        mc, data = self.config.masking, self.config.data
        inputs = prepare_batch({t: batch[t] for t in self.config.model.input_tasks},
                               data.standardize_depth)
        mask_key, drop_key = jax.random.split(key)
        with (jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh),
              nn.logical_axis_rules(((BATCH, sharding.AXES),))):
            preds, masks = self.model.apply(
                {"params": params, "buffers": buffers}, inputs,
                rngs={"masking": mask_key, "dropout": drop_key},
                num_encoded_tokens=mc.num_encoded_tokens, alphas=tuple(mc.alphas)
                if isinstance(mc.alphas, (tuple, list)) else mc.alphas,
                sample_tasks_uniformly=mc.sample_tasks_uniformly, train=train)
        task_losses = losses.pretraining_losses(preds, inputs, masks, self.config.model.patch_size)
        return inputs, preds, masks, task_losses

    def _step(self, state, batch):
        accum = self.config.train.grad_accum_steps
        key = jax.random.fold_in(self.key, state["step"])
        micro = jax.tree.map(lambda x: x.reshape((accum, -1) + x.shape[1:]), batch)

        def loss_fn(params, mb, k):
            *_, task_losses = self._forward(params, state["buffers"], mb, k, train=True)
            return sum(task_losses.values()), task_losses

        def accumulate(carry, inp):
            grads, totals = carry
            i, mb = inp
            (_, task_losses), g = jax.value_and_grad(loss_fn, has_aux=True)(
                state["params"], mb, jax.random.fold_in(key, i))
            grads = jax.tree.map(lambda a, b: a + b / accum, grads, g)
            totals = jax.tree.map(lambda a, b: a + b / accum, totals, task_losses)
            return (grads, totals), None

        zeros = jax.tree.map(jnp.zeros_like, state["params"])
        zero_losses = {t: jnp.zeros((), jnp.float32) for t in self.model.output_adapters}
        (grads, task_losses), _ = jax.lax.scan(accumulate, (zeros, zero_losses),
                                               (jnp.arange(accum), micro))
        loss = sum(task_losses.values())
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = {
            "step": state["step"] + 1, "buffers": state["buffers"],
            "params": keep(params, state["params"]),
            "opt_state": keep(opt_state, state["opt_state"]),
            "nonfinite_streak": jnp.where(finite, 0, state["nonfinite_streak"] + 1),
            "skipped": state["skipped"] + (~finite).astype(jnp.int32)}
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": self.schedule(state["step"]),
                   "finite": finite, **{f"loss/{t}": v for t, v in task_losses.items()}}
        return new_state, metrics

    def _predict(self, state, batch, n: int):
        """Inputs, predictions and masks of the first n samples (for pictures)."""
        batch = jax.tree.map(lambda x: x[:n], batch)
        inputs, preds, masks, _ = self._forward(state["params"], state["buffers"], batch,
                                                jax.random.fold_in(self.key, 2 ** 31 - 1),
                                                train=False)  # a stream no train step uses
        return inputs, preds, masks
