"""AdamW and the learning-rate schedule of the official pre-training (reference §4.3)."""
import jax.numpy as jnp
import optax
from flax import traverse_util


def scaled_lr(config) -> float:
    """The official linear scaling: lr = blr * global batch / 256."""
    return config.optimizer.blr * config.data.global_batch_size / 256


def warmup_cosine(base_lr: float, total_steps: int, warmup_steps: int, min_lr: float = 0.0):
    """The official per-step `cosine_scheduler`: warm-up = np.linspace(0, base_lr, warmup_steps)
    (from 0, both ends included), then a half cosine from base_lr to min_lr over the rest."""
    decay_steps = max(1, total_steps - warmup_steps)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = base_lr * step / max(1, warmup_steps - 1) if warmup_steps > 1 else 0.0 * step
        t = (step - warmup_steps) / decay_steps
        cos = min_lr + 0.5 * (base_lr - min_lr) * (1 + jnp.cos(jnp.pi * jnp.clip(t, 0.0, 1.0)))
        return jnp.where(step < warmup_steps, warm, cos)
    return schedule


#: Parameter names the usual (fine-tuning) convention exempts from weight decay.
NO_DECAY_NAMES = ("global_tokens", "mask_token", "task_embeddings", "pos_emb")


def decay_mask(params, decay_all: bool):
    """True where weight decay applies. The official pre-training decays every parameter
    (`decay_all`); otherwise 1-D parameters (biases, norms) and NO_DECAY_NAMES are exempt."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({
        path: decay_all or not (leaf.ndim <= 1 or any(n in path for n in NO_DECAY_NAMES))
        for path, leaf in flat.items()})


def make_optimizer(config, schedule) -> optax.GradientTransformation:
    """AdamW (decoupled decay scaled by the lr, as torch.optim.AdamW) with config.optimizer."""
    o = config.optimizer
    return optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                       mask=lambda params: decay_mask(params, o.decay_all_params))
