"""Input adapters: pixels or label maps -> tokens with positional embeddings
(`multimae/input_adapters.py: PatchedInputAdapter`, `SemSegInputAdapter`).

Positional embeddings are fixed sin-cos grids stored in the 'buffers' collection (the official
`requires_grad=False` Parameter), so checkpoints carry them and fine-tuning can overwrite them
with resized ones; `learnable_pos_emb=True` makes them ordinary params.

Patch projections run in `dtype`; the positional embedding is added in `residual_dtype`, which is
also the dtype of the output tokens (under the official autocast a low-precision conv output plus
the float32 embedding gives float32 tokens).
"""
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from multimae_jax.models import inits
from multimae_jax.models.posemb import build_2d_sincos_posemb
from multimae_jax.models.resize import resize_bicubic, resize_bilinear

BUFFERS = "buffers"


def pair(x) -> tuple[int, int]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


def patch_dims(patch_size_full, stride_level: int) -> tuple[int, int]:
    """Patch size at this modality's resolution: max(1, patch_size_full // stride_level)."""
    ph, pw = pair(patch_size_full)
    return max(1, ph // stride_level), max(1, pw // stride_level)


def pos_emb_variable(module: nn.Module, grid: tuple[int, int], dim: int, sincos: bool,
                     learnable: bool) -> jax.Array:
    """The (1, h, w, dim) positional embedding of an adapter, as the official code creates it."""
    if sincos and not learnable:
        return module.variable(BUFFERS, "pos_emb",
                               lambda: jnp.asarray(build_2d_sincos_posemb(*grid, dim))).value
    if sincos:
        return module.param("pos_emb", lambda _: jnp.asarray(build_2d_sincos_posemb(*grid, dim)))
    return module.param("pos_emb", inits.trunc_normal_02, (1, *grid, dim))


class PatchedInputAdapter(nn.Module):
    """Image-like input (B, H, W, C) -> tokens (B, N_H * N_W, dim_tokens).

    `proj` is a non-overlapping patch conv; the positional embedding is resized bicubically
    (PyTorch A = -0.75; the identity at the native grid) to (N_H, N_W) and added.
    """
    # `PatchedInputAdapter.no_weight_decay()`: names below this adapter, matched exactly
    no_weight_decay = ("pos_emb",)
    num_channels: int
    stride_level: int = 1
    patch_size_full: Any = 16
    dim_tokens: int | None = None
    sincos_pos_emb: bool = True
    learnable_pos_emb: bool = False
    image_size: Any = 224
    dtype: Any = jnp.float32
    residual_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ph, pw = patch_dims(self.patch_size_full, self.stride_level)
        b, h, w, c = x.shape
        if h % ph or w % pw or c != self.num_channels:
            raise ValueError(f"{self.name}: expected (B, H, W, {self.num_channels}) with H, W "
                             f"divisible by {ph}x{pw}, got {x.shape}")
        ih, iw = pair(self.image_size)
        grid = (ih // (self.stride_level * ph), iw // (self.stride_level * pw))
        pos = pos_emb_variable(self, grid, self.dim_tokens, self.sincos_pos_emb,
                               self.learnable_pos_emb)
        tokens = nn.Conv(self.dim_tokens, (ph, pw), strides=(ph, pw), padding="VALID",
                         dtype=self.dtype, kernel_init=inits.patch_conv_kernel,
                         bias_init=inits.torch_default_bias(c * ph * pw), name="proj")(x)
        pos = resize_bicubic(pos, (h // ph, w // pw))
        tokens = tokens.astype(self.residual_dtype) + pos.astype(self.residual_dtype)
        return tokens.reshape(b, -1, self.dim_tokens)


class _InterpolatedClassEmbProj(nn.Module):
    """`interpolate_class_emb=True`: bilinear down-sampling by the patch size, then a 1x1 conv
    named '1' (the official `proj.1`)."""
    dim_tokens: int
    patch: tuple[int, int]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h, w = x.shape[1] // self.patch[0], x.shape[2] // self.patch[1]
        x = resize_bilinear(x, (h, w))
        return nn.Conv(self.dim_tokens, (1, 1), dtype=self.dtype,
                       kernel_init=inits.patch_conv_kernel,
                       bias_init=inits.torch_default_bias(x.shape[-1]), name="1")(x)


def _lookup(table: jax.Array, ids: jax.Array) -> jax.Array:
    """Rows of table (R, D) at integer ids (...) -> (..., D), as nn.Embed (NaN rows for ids
    out of range)."""
    return jnp.take(table, ids, axis=0)


@jax.custom_vjp
def _lookup_one_hot_grad(table, ids):
    return _lookup(table, ids)


def _lookup_fwd(table, ids):
    return _lookup(table, ids), (table, ids)  # the table is small (classes x features)


def _lookup_bwd(residuals, cotangent):
    table, ids = residuals
    one_hot = jax.nn.one_hot(ids, table.shape[0], dtype=cotangent.dtype)
    grad = jnp.einsum("...r,...d->rd", one_hot, cotangent, precision=jax.lax.Precision.HIGHEST,
                      preferred_element_type=jnp.float32)
    return grad.astype(table.dtype), None


_lookup_one_hot_grad.defvjp(_lookup_fwd, _lookup_bwd)


class ClassEmbedding(nn.Module):
    """`nn.Embed` (the same parameter 'embedding' (rows, features), looked up in `dtype`) whose
    gradient, with gather_grad='gather', is a one-hot matmul (one_hot(ids)^T cotangent, float32
    accumulation) instead of JAX's scatter-add, which on GPUs adds every pixel's gradient into
    the small table with atomics; the same sums in another order. 'scatter' keeps JAX's."""
    rows: int
    features: int
    dtype: Any = jnp.float32
    gather_grad: str = "gather"

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"{self.name}: expected integer labels, got {ids.dtype}")
        table = self.param("embedding", inits.trunc_normal_02,
                           (self.rows, self.features)).astype(self.dtype)
        if self.gather_grad == "gather":
            return _lookup_one_hot_grad(table, ids)
        return _lookup(table, ids)


class SemSegInputAdapter(nn.Module):
    """Integer label map (B, H_s, W_s) at 1/stride_level resolution -> tokens (B, N, dim_tokens).

    Labels are embedded (`class_emb`, dim_class_emb channels), patched by `proj`, and a bilinearly
    resized positional embedding is added. The embedding lookup (no matmul) is in `residual_dtype`.
    With `emb_padding_idx` the table has one more row and that row gets no gradient (PyTorch
    `padding_idx`); like the official code, it is randomly initialised, and zero only when loaded
    from a padded checkpoint.
    """
    # `SemSegInputAdapter.no_weight_decay()`; 'class_emb' is a module (its parameter is
    # class_emb.weight), so matched exactly it exempts nothing, as in the official code
    no_weight_decay = ("pos_emb", "class_emb")
    num_classes: int
    stride_level: int = 4
    patch_size_full: Any = 16
    dim_tokens: int | None = None
    sincos_pos_emb: bool = True
    learnable_pos_emb: bool = False
    image_size: Any = 224
    dim_class_emb: int = 64
    interpolate_class_emb: bool = False
    emb_padding_idx: int | None = None
    dtype: Any = jnp.float32
    residual_dtype: Any = jnp.float32
    gather_grad: str = "gather"  # the class embedding's backward pass (ClassEmbedding)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ph, pw = patch_dims(self.patch_size_full, self.stride_level)
        if x.ndim != 3 or x.shape[1] % ph or x.shape[2] % pw:
            raise ValueError(f"{self.name}: expected integer labels (B, H_s, W_s) with H_s, W_s "
                             f"divisible by {ph}x{pw}, got shape {x.shape}")
        ih, iw = pair(self.image_size)
        grid = (ih // (self.stride_level * ph), iw // (self.stride_level * pw))
        pos = pos_emb_variable(self, grid, self.dim_tokens, self.sincos_pos_emb,
                               self.learnable_pos_emb)
        rows = self.num_classes + (self.emb_padding_idx is not None)
        emb = ClassEmbedding(rows, self.dim_class_emb, self.residual_dtype, self.gather_grad,
                             name="class_emb")(x)
        if self.emb_padding_idx is not None:
            pad = (x == self.emb_padding_idx)[..., None]
            emb = jnp.where(pad, jax.lax.stop_gradient(emb), emb)
        if self.interpolate_class_emb:
            tokens = _InterpolatedClassEmbProj(self.dim_tokens, (ph, pw), self.dtype,
                                               name="proj")(emb)
        else:
            tokens = nn.Conv(self.dim_tokens, (ph, pw), strides=(ph, pw), padding="VALID",
                             dtype=self.dtype, kernel_init=inits.patch_conv_kernel,
                             bias_init=inits.torch_default_bias(self.dim_class_emb * ph * pw),
                             name="proj")(emb)
        nh, nw = tokens.shape[1:3]
        pos = resize_bilinear(pos, (nh, nw))
        tokens = tokens.astype(self.residual_dtype) + pos.astype(self.residual_dtype)
        return tokens.reshape(x.shape[0], -1, self.dim_tokens)
