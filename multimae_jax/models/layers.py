"""Transformer building blocks equal to `multimae/multimae_utils.py` (`Mlp`, `Attention`,
`CrossAttention`, `Block`).

All modules take `dtype` (the dtype of Dense inputs and outputs, and of attention; parameters stay
float32) and a `train` flag for dropout and drop-path, whose randomness comes from the 'dropout' RNG
stream. Modules with LayerNorms also take `residual_dtype`, the dtype LayerNorms compute and
output in.

Mixed precision follows the official `torch.cuda.amp.autocast`: matmuls run in `dtype`, LayerNorm
and softmax in float32, and a block adds its `dtype` branch to the residual x with type
promotion, so an x that enters in float32 stays float32 (bf16 + f32 -> f32, as fp16 + fp32 in
PyTorch). `residual_dtype=bfloat16` gives the all-bf16 variant.
"""
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from multimae_jax.models import inits

Dtype = Any


def layer_norm(name: str, dtype: Dtype = jnp.float32) -> nn.LayerNorm:
    """LayerNorm as in the official code: eps 1e-6, biased variance, computed as E[(x - mean)^2]."""
    return nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, dtype=dtype, name=name)


def dense(features: int, name: str, dtype: Dtype = jnp.float32, use_bias: bool = True,
          kernel_init=inits.xavier_uniform) -> nn.Dense:
    """`nn.Linear` after MultiMAE's re-init: xavier-uniform kernel, zero bias."""
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, kernel_init=kernel_init,
                    bias_init=nn.initializers.zeros, name=name)


class DropPath(nn.Module):
    """Per-sample stochastic depth: x / keep_prob * floor(keep_prob + U[0, 1)) with shape (B, 1, ...)."""
    rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jnp.floor(keep + jax.random.uniform(self.make_rng("dropout"), shape, x.dtype))
        return x / keep * mask


class Mlp(nn.Module):
    """fc1 -> exact (erf) GELU -> fc2 -> dropout. x: (..., C) -> (..., out_features or C)."""
    hidden_features: int
    out_features: int | None = None
    drop: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        out = self.out_features or x.shape[-1]
        x = dense(self.hidden_features, "fc1", self.dtype)(x)
        x = nn.gelu(x, approximate=False)
        x = dense(out, "fc2", self.dtype)(x)
        return nn.Dropout(self.drop, deterministic=not train)(x)


BATCH = "batch"  # logical axis name of the batch dimension


def batch_split(x: jax.Array) -> jax.Array:
    """x (B, ...) constrained to be split along B over the mesh axes that the logical axis rules
    in effect map 'batch' to (see `flax.linen.logical_axis_rules`); unchanged without rules.

    Under FSDP the compiler would otherwise follow the split weights into the attention
    reshapes and regather whole activations there.
    """
    return nn.with_logical_constraint(x, (BATCH,) + (None,) * (x.ndim - 1))


def _attend(q, k, v, num_heads: int, attn_drop: float, train: bool, dtype: Dtype):
    """Multi-head scaled dot-product attention. q: (B, N, C), k, v: (B, M, C) -> (B, N, C).

    Heads own contiguous channel blocks, as in the official reshape. Softmax runs in float32.
    """
    q, k, v = batch_split(q), batch_split(k), batch_split(v)
    b, n, c = q.shape
    hd = c // num_heads
    split = lambda t: t.reshape(t.shape[0], t.shape[1], num_heads, hd)
    logits = jnp.einsum("bnhd,bmhd->bhnm", split(q), split(k)) * (hd ** -0.5)
    attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)
    attn = nn.Dropout(attn_drop, deterministic=not train)(attn)
    return batch_split(jnp.einsum("bhnm,bmhd->bnhd", attn, split(v)).reshape(b, n, c))


class _AttentionConfig(nn.Module):
    """Fields shared by Attention and CrossAttention."""
    num_heads: int = 8
    qkv_bias: bool = False
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    dtype: Dtype = jnp.float32


class Attention(_AttentionConfig):
    """Self-attention with one fused `qkv` Dense (rows [Q | K | V]) and a `proj` Dense."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        qkv = dense(3 * c, "qkv", self.dtype, self.qkv_bias, inits.split_xavier_uniform(3))(x)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        x = _attend(q, k, v, self.num_heads, self.attn_drop, train, self.dtype)
        x = dense(c, "proj", self.dtype)(x)
        return nn.Dropout(self.proj_drop, deterministic=not train)(x)


class CrossAttention(_AttentionConfig):
    """Queries x (B, N, C) attend to context (B, M, C); `q` Dense, fused `kv` Dense (rows [K | V])."""

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        q = dense(c, "q", self.dtype, self.qkv_bias)(x)
        kv = dense(2 * c, "kv", self.dtype, self.qkv_bias, inits.split_xavier_uniform(2))(context)
        k, v = jnp.split(kv, 2, axis=-1)
        x = _attend(q, k, v, self.num_heads, self.attn_drop, train, self.dtype)
        x = dense(c, "proj", self.dtype)(x)
        return nn.Dropout(self.proj_drop, deterministic=not train)(x)


class Block(nn.Module):
    """Pre-norm transformer block: x += DropPath(attn(norm1(x))); x += DropPath(mlp(norm2(x))).

    The output dtype is the promotion of x's dtype and `dtype` (see the module docstring)."""
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    drop: float = 0.0
    attn_drop: float = 0.0
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32
    residual_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = Attention(self.num_heads, self.qkv_bias, self.attn_drop, self.drop, self.dtype,
                      name="attn")(layer_norm("norm1", self.residual_dtype)(x), train)
        x = x + DropPath(self.drop_path)(y, train)
        y = Mlp(int(x.shape[-1] * self.mlp_ratio), drop=self.drop, dtype=self.dtype,
                name="mlp")(layer_norm("norm2", self.residual_dtype)(x), train)
        return x + DropPath(self.drop_path)(y, train)


class BlockStack(nn.Module):
    """`depth` Blocks named '0', '1', ... (the official `nn.Sequential` keys).

    Drop-path for block i is linspace(0, drop_path_rate, depth)[i]. With `remat`, each block's
    activations are recomputed in the backward pass. Returns the last output, or with
    `return_all=True` the list of every block's output (each (B, N, C)).
    """
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    remat: bool = False
    dtype: Dtype = jnp.float32
    residual_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_all: bool = False):
        block_cls = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
        rates = np.linspace(0.0, self.drop_path_rate, self.depth, dtype=np.float32).tolist()
        outputs = []
        for i in range(self.depth):
            x = block_cls(self.num_heads, self.mlp_ratio, self.qkv_bias, self.drop_rate,
                          self.attn_drop_rate, rates[i], self.dtype, self.residual_dtype,
                          name=str(i))(x, train)
            outputs.append(x)
        return outputs if return_all else x
