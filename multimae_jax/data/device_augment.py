"""Device-side augmentation (config data.augment = 'device'): the random resized crop, resize
and flip of the bicubic modalities run inside the jitted train step, so the host only decodes.

HOST (`CanvasAugment`, in the data workers): draws the crop box and flip exactly as
`PretrainAugment.draw` (the same rng calls, so the same box as data.augment = 'host' for every
sample), then for each bicubic modality (`resample == 'bicubic'`: rgb, depth) places its decoded
image, in its stored dtype, in the top-left corner of a zero canvas of C x C pixels
(data.device_canvas), and sends the box in that canvas's pixels. An image whose longer side
exceeds C is first downscaled once to fit (`resize.resize_image`: PIL's bicubic, a cost on the
host and a loss of detail for small crops; size C for the files you train on, e.g. 384 for
`pack --max_size 256`, 512 for ImageNet's originals). Nearest modalities (semseg) are cropped
and resized on the host as with 'host': an exact two-gather lookup (~0.1 ms), and 56 x 56
bytes instead of a canvas.

DEVICE (`crop_resize_batch`, jnp, batched): per sample and axis a dense (S, C) matrix of PIL's
BICUBIC taps for the box (Keys cubic, a = -0.5, widened by the downscale factor, limited to the
canvas pixels the box touches, normalised: `pil_resample`'s coefficients for a crop), then the
horizontal and the vertical pass as two matmuls, each rounded as PIL rounds it (8-bit: half up,
clipped to 0..255; 16-bit as the official 32-bit 'I' image: half away from zero, unclipped).
With an integer box (an image that fit its canvas, no JPEG draft) this is the host path's
`img.crop(box).resize((S, S))` up to float32 rounding of the taps (a level now and then where
PIL's sum lands on a half). Matmul FLOPs per sample: 2 S C (C + S) per channel, at float32
'highest' precision: 0.31 GFLOP for rgb and 0.10 for depth at C = 384, S = 224, so 2.5
TFLOP/s at 6,000 samples/s (a few % of an H100's float32 rate).

Batch layout (`box_key`): {name: canvas (B, C, C, channels) uint8 / uint16, name + '_box':
float32 (B, 5) = (top, left, height, width, flip) in canvas pixels} per bicubic modality, the
other modalities as `PretrainAugment` emits them. `crop_resize_batch` turns it into
`PretrainAugment`'s layout, for `transforms.prepare_batch`.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from multimae_jax.data.resize import longer_side_at_most, resize_image
from multimae_jax.data.transforms import PretrainAugment, random_stored_batch


def box_key(name: str) -> str:
    """The batch key of a device-resampled modality's crop box."""
    return f"{name}_box"


def device_modalities(modalities) -> tuple:
    """The Modality objects whose crop and resize run on the device: the bicubic ones."""
    return tuple(m for m in modalities if m.resample == "bicubic")


@dataclasses.dataclass(frozen=True)
class CanvasAugment:
    """HOST part of the device augmentation of one sample (see the module docstring).

    `aug(sample, rng)` -> {bicubic modality: canvas (C, C, channels) in its stored dtype (8-bit
    uint8, 16-bit uint16), box_key(name): float32 (5,), other modality: as `PretrainAugment`}.
    Drop-in for `PretrainAugment` in the pipeline (`draw`, `draft_factor`, `crop`).
    """
    augment: PretrainAugment
    canvas: int = 384

    def __post_init__(self):
        if self.canvas < 1:
            raise ValueError(f"canvas must be >= 1, got {self.canvas}")

    @property
    def modalities(self) -> tuple:
        return self.augment.modalities

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.augment.tasks

    def draw(self, height: int, width: int, rng: np.random.Generator):
        return self.augment.draw(height, width, rng)

    def draft_factor(self, box: tuple) -> int:
        return self.augment.draft_factor(box)

    # PretrainAugment's: checks the sample, draws the box, calls this class's `crop`
    __call__ = PretrainAugment.__call__

    def crop(self, sample: dict, box: tuple, drafted: dict | None = None) -> dict:
        """The outputs for box = (i, j, h, w, flip) in full-resolution pixels; drafted: {task:
        k} for images decoded at 1/k (`codecs.decode_draft`)."""
        drafted = drafted or {}
        i, j, h, w, flip = box
        out = {}
        for mod in self.modalities:
            x = sample[mod.name]
            if mod.resample != "bicubic":
                out[mod.name] = self.augment.apply(mod, x, *box)
                continue
            factor = drafted.get(mod.name, 1)
            fit = longer_side_at_most(*x.shape[:2], self.canvas)
            # full-resolution pixels -> canvas pixels: 1/k (draft), then the fit's scale
            sy, sx = fit[0] / x.shape[0] / factor, fit[1] / x.shape[1] / factor
            x = resize_image(mod, x, fit)
            x = x.reshape(x.shape[:2] + (-1,))
            canvas = np.zeros((self.canvas, self.canvas, x.shape[2]), x.dtype)
            canvas[:x.shape[0], :x.shape[1]] = x
            out[mod.name] = canvas
            out[box_key(mod.name)] = np.array([i * sy, j * sx, h * sy, w * sx, flip], np.float32)
        return out


def _keys_cubic(t: jnp.ndarray) -> jnp.ndarray:
    """PIL's bicubic_filter (a = -0.5), as pil_resample._keys_cubic, in jnp."""
    t = jnp.abs(t)
    near = (1.5 * t - 2.5) * t * t + 1
    far = (((t - 5) * t + 8) * t - 4) * -0.5
    return jnp.where(t < 1.0, near, jnp.where(t < 2.0, far, 0.0))


def _taps(start: jnp.ndarray, length: jnp.ndarray, n_in: int, n_out: int) -> jnp.ndarray:
    """(B, n_out, n_in) normalised bicubic weights resizing [start, start + length) of an
    n_in-pixel axis to n_out pixels, one row per output pixel; start, length: (B,) float32.

    PIL's precompute_coeffs over the crop [floor(start), ceil(start + length)): tap p of output
    o weighs K((p - centre_o + 0.5) / max(scale, 1)), centre_o = start + (o + 0.5) * scale,
    scale = length / n_out; its window [centre - support + 0.5, centre + support + 0.5) only
    ever drops taps where K is 0, so the dense row needs only the crop limits. The argument is
    formed as (2 n_out (p - start) + n_out - (2 o + 1) length) / (2 max(length, n_out)): one
    rounding, exact numerators for integer boxes.
    """
    start, length = start[:, None, None], length[:, None, None]
    p = jnp.arange(n_in, dtype=jnp.float32)[None, None, :]
    o = jnp.arange(n_out, dtype=jnp.float32)[None, :, None]
    t = ((2 * n_out) * (p - start) + n_out - (2 * o + 1) * length) / (
        2 * jnp.maximum(length, n_out))
    inside = (p >= jnp.floor(start)) & (p < jnp.ceil(start + length))
    weight = jnp.where(inside, _keys_cubic(t), 0.0)
    return weight / jnp.sum(weight, axis=2, keepdims=True)


def _round_pass(x: jnp.ndarray, int32: bool) -> jnp.ndarray:
    """PIL's rounding of one pass's sums: 'I' images half away from zero, unclipped; 8-bit
    ones half up (fixed point + 2**21 >> 22), clipped to 0..255."""
    if int32:
        return jnp.trunc(x + jnp.copysign(0.5, x))
    return jnp.clip(jnp.floor(x + 0.5), 0, 255)


def crop_resize(canvas: jnp.ndarray, box: jnp.ndarray, size: int, int32: bool) -> jnp.ndarray:
    """DEVICE: canvases (B, Hc, Wc, ch) and boxes (B, 5) -> (B, size, size, ch) crops resized
    with PIL's BICUBIC and flipped where box[:, 4] is set; int32 (16-bit, as 'I') or uint8."""
    top, left, height, width, flip = (box[:, k] for k in range(5))
    rows = _taps(top, height, canvas.shape[1], size)
    cols = _taps(left, width, canvas.shape[2], size)
    cols = jnp.where(flip[:, None, None] > 0, cols[:, ::-1], cols)  # output column o <- S-1-o
    hi = jax.lax.Precision.HIGHEST  # TF32 / bf16 passes would move 16-bit depth by units
    x = canvas.astype(jnp.float32)
    x = _round_pass(jnp.einsum("brpc,bop->broc", x, cols, precision=hi), int32)  # horizontal
    x = _round_pass(jnp.einsum("bqr,broc->bqoc", rows, x, precision=hi), int32)  # vertical
    return x.astype(jnp.int32 if int32 else jnp.uint8)


def crop_resize_batch(batch: dict, modalities, image_size: int) -> dict:
    """DEVICE: a batch of `CanvasAugment` outputs -> `PretrainAugment`'s layout: every bicubic
    Modality of `modalities` cropped, resized to image_size and flipped (uint8 (B, S, S, ch),
    16-bit as int32 (B, S, S, 1)); box keys dropped, other keys unchanged."""
    out = dict(batch)
    for mod in device_modalities(modalities):
        out[mod.name] = crop_resize(batch[mod.name], out.pop(box_key(mod.name)), image_size,
                                    mod.storage == "uint16")
    return out


def random_canvas_batch(key, modalities, batch_size: int, image_size: int, canvas: int) -> dict:
    """Random arrays in `CanvasAugment`'s layout batched (for benchmarks): canvases of random
    values in the stored dtypes, boxes of 0.2-1 of the canvas, the other modalities as
    `transforms.random_stored_batch`."""
    mods = tuple(modalities)
    out = random_stored_batch(key, [m for m in mods if m.resample != "bicubic"], batch_size,
                              image_size)
    for i, mod in enumerate(device_modalities(mods)):
        k_img, k_side, k_corner, k_flip = jax.random.split(jax.random.fold_in(key, 1000 + i), 4)
        top = 2 ** 16 if mod.storage == "uint16" else 256
        shape = (batch_size, canvas, canvas, mod.channels)
        img = jax.random.randint(k_img, shape, 0, top)
        out[mod.name] = img.astype(jnp.uint16 if mod.storage == "uint16" else jnp.uint8)
        side = jnp.floor(jax.random.uniform(k_side, (batch_size, 2), minval=0.45, maxval=1.0)
                         * canvas)
        corner = jnp.floor(jax.random.uniform(k_corner, (batch_size, 2)) * (canvas - side + 1))
        flip = jax.random.bernoulli(k_flip, 0.5, (batch_size, 1)).astype(jnp.float32)
        out[box_key(mod.name)] = jnp.concatenate([corner, side, flip], axis=1)
    return out
