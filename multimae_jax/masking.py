"""Token masking as pure functions of a PRNG key (official `multimae/multimae.py:
MultiMAE.generate_random_masks`). Mask values: 1 = masked, 0 = visible.

Shapes stay static under `jit`: the encoder always receives exactly `num_encoded_tokens` tokens per
sample; only their split between modalities varies, through index gathers.
"""
import itertools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _alpha_vector(alphas, num_tasks: int) -> jax.Array:
    a = jnp.asarray(alphas, jnp.float32)
    if a.ndim == 0:
        return jnp.full((num_tasks,), a)
    if a.shape != (num_tasks,):
        raise ValueError(f"alphas: expected a scalar or {num_tasks} values (one per input task), "
                         f"got shape {a.shape}")
    return a


def sample_task_proportions(key: jax.Array, batch: int, num_tasks: int, alphas=1.0,
                            sample_tasks_uniformly: bool = False, eps: float = 1e-5) -> jax.Array:
    """Per-sample shares of the visible budget, (B, T), rows ~ Dirichlet(alpha).

    With `sample_tasks_uniformly`, a non-empty subset of tasks is first drawn uniformly per sample
    and the Dirichlet uses alpha * subset + eps, so unchosen tasks get (almost) no tokens.
    """
    alpha = _alpha_vector(alphas, num_tasks)
    subset_key, key = jax.random.split(key)
    if sample_tasks_uniformly:
        subsets = np.array(list(itertools.product([0, 1], repeat=num_tasks))[1:], np.float32)
        pick = jax.random.randint(subset_key, (batch,), 0, len(subsets))
        alpha = jnp.asarray(subsets)[pick] * alpha + eps
    else:
        alpha = jnp.broadcast_to(alpha, (batch, num_tasks))
    return jax.random.dirichlet(key, alpha)


def tokens_per_task(shares: jax.Array, num_encoded_tokens: int) -> jax.Array:
    """Visible tokens per task before the tie-break fill: shares (B, T) x K rounded half to even,
    as `torch.round` in the official `multimae/multimae.py: MultiMAE.generate_random_masks`
    (float32 products, so 0.5 -> 0, 1.5 -> 2, 2.5 -> 2). (B, T) int32; rows may sum to K +- 1."""
    return jnp.round(shares.astype(jnp.float32) * num_encoded_tokens).astype(jnp.int32)


def random_masks(key: jax.Array, num_tokens: Sequence[int], batch: int, num_encoded_tokens: int,
                 alphas=1.0, sample_tasks_uniformly: bool = False):
    """The official `generate_random_masks`.

    Args:
      num_tokens: tokens per task, in task order (N_t).
    Returns:
      mask_all (B, N) int32 with exactly `num_encoded_tokens` zeros per row, ids_keep (B, K) (the
      visible tokens, in random order), ids_restore (B, N) (inverse of the shuffle).
    """
    total = sum(num_tokens)
    if not 0 < num_encoded_tokens <= total:
        raise ValueError(f"num_encoded_tokens must be in [1, {total}], got {num_encoded_tokens}")
    share_key, tie_key, *task_keys = jax.random.split(key, 2 + len(num_tokens))
    shares = sample_task_proportions(share_key, batch, len(num_tokens), alphas,
                                     sample_tasks_uniformly)
    per_task = tokens_per_task(shares, num_encoded_tokens)
    masks = []
    for t, (n, k) in enumerate(zip(num_tokens, task_keys)):
        perm = jnp.argsort(jax.random.uniform(k, (batch, n)), axis=1)
        masks.append((perm >= per_task[:, t:t + 1]).astype(jnp.int32))
    mask_all = jnp.concatenate(masks, axis=1)
    # Noise breaks ties at random, so exactly K tokens stay visible even when the rounded shares
    # sum to K +- 1: surplus visible tokens are dropped, missing ones drawn from the masked.
    ids_shuffle = jnp.argsort(mask_all + jax.random.uniform(tie_key, mask_all.shape), axis=1)
    return _keep_first(ids_shuffle, num_encoded_tokens)


def _keep_first(ids_shuffle: jax.Array, num_visible: int):
    ids_restore = jnp.argsort(ids_shuffle, axis=1)
    ids_keep = ids_shuffle[:, :num_visible]
    shuffled = (jnp.arange(ids_shuffle.shape[1]) >= num_visible).astype(jnp.int32)
    mask_all = jnp.take_along_axis(jnp.broadcast_to(shuffled, ids_shuffle.shape), ids_restore, axis=1)
    return mask_all, ids_keep, ids_restore


def count_visible(mask_all) -> int:
    """The common number of visible tokens per sample of a concrete (B, N) mask; a ValueError
    when samples differ (the encoder needs one static token count)."""
    visible = np.asarray(mask_all == 0).sum(axis=1)
    if visible.size == 0 or (visible != visible[0]).any():
        raise ValueError("task_masks: every sample must keep the same number of visible tokens "
                         f"(mask value 0) over all tasks; got per-sample counts {visible.tolist()}")
    return int(visible[0])


def masks_to_ids(mask_all: jax.Array, num_visible: int):
    """User masks (B, N), 1 = masked, with `num_visible` zeros per row -> (mask_all, ids_keep,
    ids_restore). Visible tokens keep their original order (stable sort, no noise)."""
    return _keep_first(jnp.argsort(mask_all, axis=1, stable=True), num_visible)


def no_masking(batch: int, total: int):
    """Every token visible, in order: (zeros (B, N), ids_keep = ids_restore = arange)."""
    ids = jnp.broadcast_to(jnp.arange(total), (batch, total))
    return jnp.zeros((batch, total), jnp.int32), ids, ids


#: How the backward pass of `take_tokens` runs.
GATHER_GRADS = ("gather", "scatter")


def _take(x: jax.Array, ids: jax.Array) -> jax.Array:
    """x (B, N, C), ids (B, M) -> x[b, ids[b, m]] (B, M, C); zeros where ids[b, m] >= N."""
    return jnp.take_along_axis(x, ids[..., None], axis=1, mode="fill", fill_value=0)


@jax.custom_vjp
def _take_transposed_by_gather(x, ids, inverse):
    return _take(x, ids)


def _take_fwd(x, ids, inverse):
    return _take(x, ids), (ids, inverse)


def _take_bwd(residuals, cotangent):
    ids, inverse = residuals
    return _take(cotangent, inverse), None, None


_take_transposed_by_gather.defvjp(_take_fwd, _take_bwd)


def take_tokens(x: jax.Array, ids: jax.Array, inverse: jax.Array,
                gather_grad: str = "gather") -> jax.Array:
    """Tokens of x at ids: x (B, N, C), ids (B, M) int -> (B, M, C), zeros where ids[b, m] >= N.

    A row of ids holds each of 0..N-1 at most once, and `inverse` (B, N) is its inverse map:
    inverse[b, ids[b, m]] = m, inverse[b, n] >= M where n is not in ids[b]. So (ids_keep,
    ids_restore) gathers the visible tokens, and (ids_restore, ids_keep) puts K visible tokens
    back at their places among N. The transpose of such a gather is the gather by `inverse`
    (the cotangent of x is take_tokens(cotangent, inverse, ids)): 'gather' computes it so, as a
    custom VJP; 'scatter' leaves it to JAX's autodiff, a scatter-add (slow with atomics on GPUs).
    The values are the same either way.
    """
    if gather_grad not in GATHER_GRADS:
        raise ValueError(f"gather_grad={gather_grad!r}: expected one of {GATHER_GRADS}")
    with jax.named_scope("take_tokens"):  # names the ops (and their transposes) in HLO
        if gather_grad == "gather":
            return _take_transposed_by_gather(x, ids, inverse)
        return _take(x, ids)


def split_by_task(mask_all: jax.Array, num_tokens: dict[str, int]) -> dict[str, jax.Array]:
    """(B, N) -> {task: (B, N_t)} in the order of `num_tokens`."""
    out, start = {}, 0
    for task, n in num_tokens.items():
        out[task] = mask_all[:, start:start + n]
        start += n
    return out


def make_mask(n_h: int, n_w: int, xy_idxs: Sequence[tuple[int, int]] = (),
              full_tasks: Sequence[str] = (), tasks: Sequence[str] = ("rgb", "depth", "semseg"),
              indicate_visible: bool = True) -> dict[str, np.ndarray]:
    """Hand-made masks as in the official demo, for a batch of one: {task: (1, n_h * n_w)}.

    `xy_idxs[task]`-style lists are given per task as a dict; (x, y) = (column, row) patches listed
    are visible, tasks in `full_tasks` are entirely visible, everything else is masked. With
    `indicate_visible=False` the meaning of the listed patches is inverted (they are masked).
    """
    per_task = xy_idxs if isinstance(xy_idxs, dict) else {t: xy_idxs for t in tasks}
    out = {}
    for task in tasks:
        m = np.ones((n_h, n_w), np.int32)
        for x, y in per_task.get(task, ()):
            m[y, x] = 0
        if task in full_tasks:
            m[:] = 0
        if not indicate_visible:
            m = 1 - m
        out[task] = m.reshape(1, -1)
    return out
