"""Resizing a decoded image once, by its modality's `resample` (HOST): the pre-resized
packing (`pack --max_size`) and the device-augmentation canvas (`device_augment`).

Bicubic modalities go through `pil_resample` (PIL's antialiased BICUBIC, the training filter,
the same whatever Pillow is installed): 8-bit images as PIL's 8-bit images, 16-bit ones as
PIL's 32-bit 'I' image clipped back to 0..65535. Nearest modalities (labels) pick PIL's NEAREST
source pixels (`transforms.nearest_index`), so labels stay labels.
"""
import numpy as np

from multimae_jax.data import pil_resample
from multimae_jax.data.transforms import nearest_index


def shorter_side_at_most(height: int, width: int, max_size: int) -> tuple[int, int]:
    """(h, w) scaled so that the shorter side is max_size, aspect kept (rounded); unchanged
    when the shorter side is already at most max_size."""
    scale = max_size / min(height, width)
    if scale >= 1:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def longer_side_at_most(height: int, width: int, max_size: int) -> tuple[int, int]:
    """(h, w) scaled so that the longer side is max_size (e.g. to fit a square canvas)."""
    scale = max_size / max(height, width)
    if scale >= 1:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_image(mod, x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One modality's native array x (H, W[, C]) (see `codecs.decode`) resized to size
    (h, w), same dtype and rank."""
    if x.shape[:2] == tuple(size):
        return x
    if mod.resample == "bicubic":
        if mod.storage == "uint16":
            out = pil_resample.resize_bicubic_int32(x, size)
            return np.clip(out, 0, 65535).astype(np.uint16)  # the cubic overshoot
        return pil_resample.resize_bicubic_uint8(x, size)
    per_pixel = mod.storage == "uint16"  # PIL's 'I;16' rule, as in transforms.PretrainAugment
    rows = nearest_index(x.shape[0], size[0], per_pixel)
    return x[rows][:, nearest_index(x.shape[1], size[1], per_pixel)]

