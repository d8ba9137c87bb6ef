"""PyTorch-equivalent `F.interpolate` for NHWC arrays, as the official code resizes positional
embeddings (`multimae/input_adapters.py: PatchedInputAdapter.forward`, `utils/pos_embed.py:
interpolate_pos_embed_multimae`) and feature maps (`multimae/output_adapter_utils.py: Interpolate`).

`jax.image.resize` uses the Keys kernel (A = -0.5), renormalises weights at the borders and has no
align_corners mode, so it does not match PyTorch. Each resize here is separable: a (out, in) weight
matrix per spatial axis, built with numpy from static shapes and applied with two einsums.
"""
import numpy as np
import jax
import jax.numpy as jnp


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
    """Cubic-convolution weights for taps at offsets -1, 0, 1, 2 of a fractional position t."""
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1
    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """(n_out, n_in) weights of PyTorch bicubic, align_corners=False: half-pixel source
    coordinates, no antialiasing, taps clamped to the border."""
    scale = n_in / n_out
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    base = np.floor(src)
    weights = _cubic_weights(src - base, a)
    mat = np.zeros((n_out, n_in), np.float64)
    for tap in range(4):
        idx = np.clip(base.astype(np.int64) - 1 + tap, 0, n_in - 1)
        np.add.at(mat, (np.arange(n_out), idx), weights[:, tap])
    return mat.astype(np.float32)


def bilinear_matrix(n_in: int, n_out: int, align_corners: bool = False) -> np.ndarray:
    """(n_out, n_in) weights of PyTorch bilinear (no antialiasing) for either align_corners."""
    dst = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = dst * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros_like(dst)
    else:
        src = np.maximum((dst + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    mat = np.zeros((n_out, n_in), np.float64)
    np.add.at(mat, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(mat, (np.arange(n_out), hi), frac)
    return mat.astype(np.float32)


def _separable(x: jax.Array, mat_h: np.ndarray, mat_w: np.ndarray) -> jax.Array:
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bhwc->bowc", jnp.asarray(mat_h, x.dtype), x, precision=hi)
    return jnp.einsum("pw,bowc->bopc", jnp.asarray(mat_w, x.dtype), x, precision=hi)


def resize_bicubic(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """PyTorch `F.interpolate(mode='bicubic', align_corners=False)`, A = -0.75.

    x: (B, H, W, C) -> (B, size[0], size[1], C). Exactly the identity at the same size.
    """
    h, w = x.shape[1:3]
    if (h, w) == tuple(size):
        return x
    return _separable(x, bicubic_matrix(h, size[0]), bicubic_matrix(w, size[1]))


def resize_bilinear(x: jax.Array, size: tuple[int, int], align_corners: bool = False) -> jax.Array:
    """PyTorch `F.interpolate(mode='bilinear', align_corners=...)`. x: (B, H, W, C)."""
    h, w = x.shape[1:3]
    if (h, w) == tuple(size) and not align_corners:
        return x
    return _separable(x, bilinear_matrix(h, size[0], align_corners),
                      bilinear_matrix(w, size[1], align_corners))


def resize_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """PyTorch `F.interpolate(mode='nearest')` (legacy nearest, not 'nearest-exact'): source index
    floor(dst * (in / out)) in float32. x: (B, H, W, C) -> (B, size[0], size[1], C)."""
    for axis, n_out in zip((1, 2), size):
        n_in = x.shape[axis]
        scale = np.float32(n_in) / np.float32(n_out)
        idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
        x = jnp.take(x, np.minimum(idx, n_in - 1), axis=axis)
    return x
