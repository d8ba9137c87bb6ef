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
    """Per-sample stochastic depth: x / keep_prob * floor(keep_prob + U[0, 1)), U of shape
    (B, 1, ...). `rate` is a float, or a traced scalar (BlockStack's scan), then always applied."""
    rate: float | jax.Array = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if not train or (not isinstance(self.rate, jax.Array) and self.rate == 0.0):
            return x
        keep = 1.0 - self.rate
        if isinstance(keep, jax.Array):  # in x's dtype, as a Python float would be
            keep = keep.astype(x.dtype)
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


#: `attention` of the modules below: how softmax(q k^T / sqrt(head dim)) v is computed.
ATTENTION = ("xla", "cudnn")


def _attend(q, k, v, num_heads: int, attn_drop: float, train: bool, dtype: Dtype,
            attention: str = "xla"):
    """Multi-head scaled dot-product attention. q: (B, N, C), k, v: (B, M, C) -> (B, N, C).

    Heads own contiguous channel blocks, as in the official reshape. 'xla': the logits in
    `dtype`, the softmax in float32, its probabilities cast to `dtype` for the product with v
    (the official, under autocast: fp32 softmax, fp16 probabilities). 'cudnn':
    `jax.nn.dot_product_attention(implementation='cudnn')`, cuDNN's fused flash attention (an
    NVIDIA GPU; q, k, v in bf16 or fp16; head dim a multiple of 8, at most 128, 256 from
    Hopper on; no attention dropout): it keeps the softmax's running max and sum in float32
    but rounds the unnormalised probabilities exp(logit - max) to bf16 for the product with v
    and divides by the sum after it, so outputs differ from 'xla' at bf16 rounding level.
    """
    if attention not in ATTENTION:
        raise ValueError(f"attention={attention!r}: expected one of {ATTENTION}")
    q, k, v = batch_split(q), batch_split(k), batch_split(v)
    b, n, c = q.shape
    hd = c // num_heads
    split = lambda t: t.reshape(t.shape[0], t.shape[1], num_heads, hd)
    if attention == "cudnn":
        if attn_drop > 0:
            raise ValueError(f"attention='cudnn' has no attention dropout (attn_drop={attn_drop}"
                             "): jax.nn.dot_product_attention applies none")
        out = jax.nn.dot_product_attention(split(q), split(k), split(v), implementation="cudnn")
        return batch_split(out.reshape(b, n, c))
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
    attention: str = "xla"  # `_attend`


class Attention(_AttentionConfig):
    """Self-attention with one fused `qkv` Dense (rows [Q | K | V]) and a `proj` Dense."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        qkv = dense(3 * c, "qkv", self.dtype, self.qkv_bias, inits.split_xavier_uniform(3))(x)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        x = _attend(q, k, v, self.num_heads, self.attn_drop, train, self.dtype, self.attention)
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
        x = _attend(q, k, v, self.num_heads, self.attn_drop, train, self.dtype, self.attention)
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
    drop_path: float | jax.Array = 0.0
    dtype: Dtype = jnp.float32
    residual_dtype: Dtype = jnp.float32
    attention: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = Attention(self.num_heads, self.qkv_bias, self.attn_drop, self.drop, self.dtype,
                      self.attention, name="attn")(
            layer_norm("norm1", self.residual_dtype)(x), train)
        x = x + DropPath(self.drop_path)(y, train)
        y = Mlp(int(x.shape[-1] * self.mlp_ratio), drop=self.drop, dtype=self.dtype,
                name="mlp")(layer_norm("norm2", self.residual_dtype)(x), train)
        return x + DropPath(self.drop_path)(y, train)


class BlockStack(nn.Module):
    """`depth` Blocks named '0', '1', ... (the official `nn.Sequential` keys).

    Drop-path for block i is linspace(0, drop_path_rate, depth)[i]. With `remat`, each block's
    activations are recomputed in the backward pass. Returns the last output, or with
    `return_all=True` the list of every block's output (each (B, N, C)).

    With `scan`, applying runs the blocks as one `jax.lax.scan` over their parameters stacked
    along a new leading axis: one compiled block body instead of `depth` (initialising still
    creates the blocks one by one, so the parameters keep their names). Each step applies a
    pure `Block` to (x, its parameters, its drop-path rate, its 'dropout' key); remat wraps
    that step. The outputs and gradients are those of the unrolled blocks, but the random
    streams of dropout and drop path differ: block i draws from split(make_rng('dropout'),
    depth)[i], not from Flax's per-module key of block i.
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
    attention: str = "xla"
    scan: bool = False

    def _block(self, cls, drop_path, **kwargs) -> Block:
        return cls(self.num_heads, self.mlp_ratio, self.qkv_bias, self.drop_rate,
                   self.attn_drop_rate, drop_path, self.dtype, self.residual_dtype,
                   self.attention, **kwargs)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_all: bool = False):
        rates = np.linspace(0.0, self.drop_path_rate, self.depth, dtype=np.float32)
        if self.scan and not self.is_initializing():
            return self._scanned(x, train, return_all, rates)
        block_cls = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
        outputs = []
        for i, rate in enumerate(rates.tolist()):
            x = self._block(block_cls, rate, name=str(i))(x, train)
            outputs.append(x)
        return outputs if return_all else x

    def _scanned(self, x: jax.Array, train: bool, return_all: bool, rates: np.ndarray):
        """The blocks as one scan (see the class docstring)."""
        params = self.variables["params"]
        xs = {"params": jax.tree.map(lambda *p: jnp.stack(p),
                                     *(params[str(i)] for i in range(self.depth)))}
        if train and self.drop_path_rate > 0:
            xs["rate"] = jnp.asarray(rates)
        if train and (self.drop_path_rate > 0 or self.drop_rate > 0 or self.attn_drop_rate > 0):
            xs["key"] = jax.random.split(self.make_rng("dropout"), self.depth)

        def block(x, xs):
            rngs = {"dropout": xs["key"]} if "key" in xs else {}
            return self._block(Block, xs.get("rate", 0.0), parent=None).apply(
                {"params": xs["params"]}, x, train, rngs=rngs)
        if self.remat:
            # scan already keeps XLA from merging the recomputation with the forward
            block = jax.checkpoint(block, prevent_cse=False)

        def step(x, xs):
            x = block(x, xs)
            return x, (x if return_all else None)
        x, ys = jax.lax.scan(step, x, xs)
        return [ys[i] for i in range(self.depth)] if return_all else x
