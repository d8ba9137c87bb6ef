"""Random erasing of a training batch on the device, as the official ImageNet fine-tuning does it
(`utils/random_erasing.py: RandomErasing`, created by `utils/transforms_factory.py:
transforms_imagenet_train` with re_prob, re_mode, re_count and applied to each normalised image
before the batch is mixed).

The boxes are drawn on the host (`data/classify_transforms.py: draw_erase_boxes`: per image int32
(K, 4) rows (top, left, h, w), h = w = 0 for no box); `erase_boxes` fills them here, after the
normalisation, so the fill is in the normalised space as the official one is:

- 'pixel': a standard normal value per pixel and channel (the official default re_mode);
- 'rand': one standard normal value per box and channel;
- 'const': zeros.

A later box overwrites an earlier one where they overlap, as in the official loop. Pure jnp with
static shapes (iota masks and where), so it jits and works on a batch sharded over devices.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

MODES = ("pixel", "rand", "const")


def box_masks(boxes: jax.Array, height: int, width: int) -> jax.Array:
    """bool (B, K, H, W): pixel (y, x) lies in box k of image b; boxes int (B, K, 4) rows
    (top, left, h, w)."""
    top, left, h, w = (boxes[..., i][:, :, None, None] for i in range(4))
    rows = jnp.arange(height)[None, None, :, None]
    cols = jnp.arange(width)[None, None, None, :]
    return (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)


def erase_boxes(x: jax.Array, boxes: jax.Array, key: jax.Array, mode: str = "pixel"
                ) -> jax.Array:
    """x (B, H, W, C) normalised images with each box of boxes (B, K, 4) filled as `mode` says
    (see the module docstring); the same dtype as x."""
    if mode not in MODES:
        raise ValueError(f"random erasing mode {mode!r}: expected one of {MODES}")
    b, height, width, c = x.shape
    inside = box_masks(boxes, height, width)  # (B, K, H, W)
    if mode == "pixel":
        fill = jax.random.normal(key, x.shape, jnp.float32).astype(x.dtype)
        return jnp.where(inside.any(axis=1)[..., None], fill, x)
    if mode == "const":
        return jnp.where(inside.any(axis=1)[..., None], jnp.zeros((), x.dtype), x)
    colors = jax.random.normal(key, (b, boxes.shape[1], c), jnp.float32).astype(x.dtype)
    for k in range(boxes.shape[1]):  # in order: a later box overwrites an earlier one
        x = jnp.where(inside[:, k, :, :, None], colors[:, k, None, None, :], x)
    return x
