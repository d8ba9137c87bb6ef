"""MultiMAE pre-training augmentation (official `DataAugmentationForMultiMAE`), in two parts.

HOST (numpy/PIL, one sample at a time, in data-loader workers): `PretrainAugment` draws one
RandomResizedCrop box and one horizontal-flip decision and applies them to every modality, with
each modality's registry `resample`, and returns compact arrays (rgb stays uint8).

DEVICE (jnp, batched, inside the jitted train step): `prepare_batch` normalises rgb with the
ImageNet mean/std and applies the official truncated per-sample depth standardisation.

PIL facts this module relies on (checked in tests/test_transforms.py):
* `resize(..., box=crop)` is NOT crop-then-resize for BICUBIC: the filter reads pixels outside the
  box near its edges. The official code crops first, so we do too.
* NEAREST picks source index floor((x + 0.5) * n_in / n_out), but with two different float
  roundings: 'I;16' images (uint16 arrays) compute it per pixel as (x + 0.5) * (n_in / n_out);
  8-bit, 'I' and 'F' images accumulate x_0 = scale / 2, x_k+1 = x_k + scale. They differ when the
  exact value is an integer (e.g. 64 -> 224, 16 -> 56); `_nearest_index` reproduces both exactly.
"""
from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
from PIL import Image

from multimae_jax import modalities

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _nearest_index(n_in: int, n_out: int, per_pixel: bool) -> np.ndarray:
    """Source indices (n_out,) of PIL's NEAREST resize of a length-n_in axis to n_out.

    per_pixel: True for 'I;16' images (Pillow's generic transform), False for all other modes
    (Pillow's affine fast path, which accumulates the coordinate; np.cumsum adds sequentially).
    """
    scale = n_in / n_out
    if per_pixel:
        coords = (np.arange(n_out) + 0.5) * scale
    else:
        coords = np.cumsum(np.r_[0.5 * scale, np.full(n_out - 1, scale)])
    return coords.astype(np.int64)


@dataclasses.dataclass(frozen=True)
class PretrainAugment:
    """HOST-side MultiMAE pre-training augmentation of one sample.

    `aug(sample, rng)`: sample maps every task in `tasks` to its native array, all with the same
    H x W: 'rgb8' storage uint8 (H, W, 3); 'uint16' (H, W); 'labels' (H, W) ints; 'npy' float32
    (H, W[, C]). With S = image_size and s = the modality's stride_level it returns:
    * 'rgb8': uint8 (S, S, 3), PIL BICUBIC (normalised later on the device, see `normalize_rgb`);
    * 'uint16': uint16 (S, S, 1), PIL NEAREST (float32 value / 2**16 on the device);
    * 'npy': float32 (S, S, C), PIL NEAREST semantics;
    * 'labels': stored ints (S/s, S/s) (int32 on the device): PIL NEAREST to S x S, flip, then PIL NEAREST to S/s x S/s
      (the official code resizes the mode-P image again after the flip).
    One crop box (torchvision `RandomResizedCrop.get_params`) and one flip (probability `hflip`)
    are drawn from `rng` (see `draw`) and shared by all modalities: the output is a function of
    the sample and the rng state only.
    """
    tasks: tuple[str, ...]
    image_size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5

    def __post_init__(self):
        for task in self.tasks:
            mod = modalities.get(task)
            if not mod.on_disk:
                raise ValueError(f"'{task}' is computed from another modality, not augmented")
            if mod.resample == "bicubic" and mod.storage != "rgb8":
                raise ValueError(f"'{task}': bicubic resampling is implemented for rgb8 only")
            if mod.kind == "labels" and self.image_size % mod.stride_level:
                raise ValueError(f"'{task}': image_size {self.image_size} is not a multiple of "
                                 f"stride_level {mod.stride_level}")

    def draw(self, height: int, width: int, rng: np.random.Generator
             ) -> tuple[int, int, int, int, bool]:
        """The random parameters (i, j, h, w, flip): the crop is rows i:i+h, columns j:j+w.

        As torchvision `RandomResizedCrop.get_params`: 10 tries of area fraction U(scale) and
        log-uniform aspect w/h in `ratio`; else a central crop with the aspect clamped to `ratio`.
        """
        flip = bool(rng.random() < self.hflip)
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                i = int(rng.integers(0, height - h + 1))
                j = int(rng.integers(0, width - w + 1))
                return i, j, h, w, flip
        in_ratio = width / height
        w, h = width, height
        if in_ratio < min(self.ratio):
            h = round(w / min(self.ratio))
        elif in_ratio > max(self.ratio):
            w = round(h * max(self.ratio))
        return (height - h) // 2, (width - w) // 2, h, w, flip

    def __call__(self, sample: dict[str, np.ndarray], rng: np.random.Generator
                 ) -> dict[str, np.ndarray]:
        missing = [t for t in self.tasks if t not in sample]
        if missing:
            raise ValueError(f"sample lacks tasks {missing}; it has {sorted(sample)}")
        shapes = {t: sample[t].shape[:2] for t in self.tasks}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"tasks must share one H x W, got {shapes}")
        height, width = shapes[self.tasks[0]]
        i, j, h, w, flip = self.draw(height, width, rng)
        return {t: self._apply(t, sample[t], i, j, h, w, flip) for t in self.tasks}

    def _apply(self, task, x, i, j, h, w, flip):
        mod, size = modalities.get(task), self.image_size
        if mod.resample == "bicubic":  # rgb8: PIL, crop first (see the module docstring)
            img = Image.fromarray(x).crop((j, i, j + w, i + h)).resize((size, size),
                                                                       Image.BICUBIC)
            if flip:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            return np.array(img)
        # NEAREST: compose crop, resize, flip (and the labels' second resize) into one gather.
        per_pixel = mod.storage == "uint16"
        rows = i + _nearest_index(h, size, per_pixel)
        cols = j + _nearest_index(w, size, per_pixel)
        if flip:
            cols = cols[::-1]
        if mod.kind == "labels":
            small = _nearest_index(size, size // mod.stride_level, per_pixel=False)
            rows, cols = rows[small], cols[small]
        out = x[rows][:, cols]  # two 1-D gathers: much faster than one 2-D fancy index
        if mod.kind == "labels":
            return out  # stored dtype; int32 on the device (prepare_batch)
        if mod.storage == "uint16":
            return out[..., None]  # uint16: 2x smaller than float32 between processes
        return out.astype(np.float32).reshape(size, size, -1)


def normalize_rgb(x: jnp.ndarray) -> jnp.ndarray:
    """DEVICE: uint8 (..., 3) -> float32 (x / 255 - ImageNet mean) / ImageNet std."""
    x = jnp.asarray(x).astype(jnp.float32) / 255.0
    return (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)


def standardize_depth(d: jnp.ndarray) -> jnp.ndarray:
    """DEVICE: official truncated depth standardisation, per sample of d (B, H, W, C).

    Per sample: sort the n = H*W*C values, keep the slice [int(0.1 n), int(0.9 n)), and return
    (d - mean) / sqrt(var + 1e-6) with the slice's mean and unbiased (ddof 1) variance.
    """
    flat = jnp.sort(d.reshape(d.shape[0], -1), axis=1)
    n = flat.shape[1]
    kept = flat[:, int(0.1 * n):int(0.9 * n)]
    shape = (-1,) + (1,) * (d.ndim - 1)
    mean = kept.mean(axis=1).reshape(shape)
    var = kept.var(axis=1, ddof=1).reshape(shape)
    return (d - mean) / jnp.sqrt(var + 1e-6)


def prepare_batch(batch: dict, depth_standardization: bool = True) -> dict:
    """DEVICE: a collated batch of `PretrainAugment` outputs -> model inputs/targets.

    'rgb' uint8 (B, S, S, 3) -> float32 ImageNet-normalised; 'uint16' modalities (depth)
    -> float32 value / 2**16, then for depth the truncated standardisation when
    `depth_standardization` (official default for pre-training); labels -> int32 (B, S/s, S/s);
    other keys are returned unchanged.
    """
    out = dict(batch)
    for task, value in batch.items():
        if task not in modalities.MODALITIES:
            continue
        mod = modalities.get(task)
        if mod.kind == "labels":
            out[task] = jnp.asarray(value).astype(jnp.int32)
        elif mod.storage == "uint16":  # the official loader's float(depth) / 2**16
            out[task] = jnp.asarray(value).astype(jnp.float32) / 2.0 ** 16
    if "rgb" in out:
        out["rgb"] = normalize_rgb(out["rgb"])
    if depth_standardization and "depth" in out:
        out["depth"] = standardize_depth(out["depth"])
    return out
