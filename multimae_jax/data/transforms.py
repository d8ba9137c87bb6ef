"""MultiMAE pre-training augmentation (official `DataAugmentationForMultiMAE`), in two parts.

HOST (numpy, one sample at a time, in data-loader workers): `PretrainAugment` draws one
RandomResizedCrop box and one horizontal-flip decision and applies them to every modality, with
each modality's `resample`, and returns compact arrays (8-bit images stay uint8).

DEVICE (jnp, batched, inside the jitted train step): `prepare_batch` normalises every image
modality as its entry says (rgb: /255 and ImageNet mean/std; depth: /2**16 and the official
truncated per-sample standardisation) and makes labels int32.

PIL facts this module relies on (checked in tests/test_transforms.py):
* The official code crops, then calls PIL's `resize` whose default filter is BICUBIC for RGB and
  for the 16-bit depth (a 32-bit 'I' image in the Pillow of its time). `pil_resample` reproduces
  both exactly in numpy, independent of the installed Pillow (whose results changed across
  versions). `resize(..., box=crop)` would differ: the filter reads pixels outside the box.
* NEAREST picks source index floor((x + 0.5) * n_in / n_out), but with two different float
  roundings: 'I;16' images (uint16 arrays) compute it per pixel as (x + 0.5) * (n_in / n_out);
  8-bit, 'I' and 'F' images accumulate x_0 = scale / 2, x_k+1 = x_k + scale. They differ when the
  exact value is an integer (e.g. 64 -> 224, 16 -> 56); `nearest_index` reproduces both exactly.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from multimae_jax.data import pil_resample
from multimae_jax.modalities import Modality, resolve


def nearest_index(n_in: int, n_out: int, per_pixel: bool) -> np.ndarray:
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


#: PretrainAugment.crop_draw: torchvision's RandomResizedCrop (10 tries, then a central crop), as
#: the official MultiMAE and timm; MAE's util/crop.py (its linear probe: one draw, clamped)
CROP_DRAWS = ("torchvision", "mae")


def mae_crop_size(height: int, width: int, area_fraction: float, log_aspect: float
                  ) -> tuple[int, int]:
    """(h, w) of MAE's RandomResizedCrop (facebookresearch/mae util/crop.py, after BYOL's TF
    crop) given its two draws: the area fraction (in scale) and the log aspect ratio (in
    log(ratio), drawn in float32 as torch draws it); one try, each side clamped to the image."""
    target_area = height * width * area_fraction
    aspect = float(np.exp(np.float32(log_aspect)))
    w = min(int(round(math.sqrt(target_area * aspect))), width)
    h = min(int(round(math.sqrt(target_area / aspect))), height)
    return h, w


@dataclasses.dataclass(frozen=True)
class PretrainAugment:
    """HOST-side MultiMAE pre-training augmentation of one sample.

    `aug(sample, rng)`: sample maps every modality's name to its native array (see
    `codecs.decode`), all with the same H x W. With S = image_size and s = stride_level:
    * 'rgb8' / 'uint8': uint8 (S, S, C), resampled as its `resample` says;
    * 'uint16': bicubic -> int32 (S, S, 1) as PIL's 32-bit 'I' image that the official loader
      resizes (bicubic overshoot beyond 0..65535 is kept); nearest -> uint16 (S, S, 1);
      the device divides by `scale` (2**16);
    * 'npy': float32 (S, S, C), PIL NEAREST semantics;
    * labels: stored ints (S/s, S/s): NEAREST to S x S, flip, then NEAREST to S/s x S/s (the
      official code resizes the mode-P image again after the flip).
    One crop box (torchvision `RandomResizedCrop.get_params`, or with crop_draw 'mae' MAE's
    one-draw variant: `mae_crop_size`) and one flip (probability `hflip`) are drawn from `rng`
    (see `draw`) and shared by all modalities: the output is a function of the sample and the
    rng state only. `modalities`: Modality objects (or names of the default entries); they
    travel with this object to worker processes.
    """
    modalities: tuple
    image_size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    crop_draw: str = "torchvision"  # or 'mae'

    def __post_init__(self):
        if self.crop_draw not in CROP_DRAWS:
            raise ValueError(f"crop_draw must be one of {CROP_DRAWS}, got {self.crop_draw!r}")
        object.__setattr__(self, "modalities", tuple(resolve(self.modalities).values()))
        for mod in self.modalities:
            if not mod.on_disk:
                raise ValueError(f"'{mod.name}' is computed from '{mod.source}', not augmented")
            if mod.kind == "labels" and self.image_size % mod.stride_level:
                raise ValueError(f"'{mod.name}': image_size {self.image_size} is not a multiple "
                                 f"of stride_level {mod.stride_level}")

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modalities)

    def draw(self, height: int, width: int, rng: np.random.Generator
             ) -> tuple[int, int, int, int, bool]:
        """The random parameters (i, j, h, w, flip): the crop is rows i:i+h, columns j:j+w.

        As torchvision `RandomResizedCrop.get_params`: 10 tries of area fraction U(scale) and
        log-uniform aspect w/h in `ratio`; else a central crop with the aspect clamped to `ratio`.
        """
        flip = bool(rng.random() < self.hflip)
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        if self.crop_draw == "mae":
            h, w = mae_crop_size(height, width, rng.uniform(*self.scale), rng.uniform(*log_ratio))
            i = int(rng.integers(0, height - h + 1))
            j = int(rng.integers(0, width - w + 1))
            return i, j, h, w, flip
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
        return self.crop(sample, self.draw(*shapes[self.tasks[0]], rng))

    def draft_factor(self, box: tuple) -> int:
        """The largest k in (1, 2, 4, 8) that keeps the crop of box = (i, j, h, w, flip) at
        least image_size pixels on both sides at 1/k resolution: how much a JPEG may be
        downscaled while decoding (`codecs.decode_draft`) before the crop is resized."""
        shorter = min(box[2], box[3])
        return next(k for k in (8, 4, 2, 1) if shorter >= k * self.image_size or k == 1)

    def crop(self, sample: dict, box: tuple, drafted: dict | None = None
             ) -> dict[str, np.ndarray]:
        """Every modality cropped to box = (i, j, h, w, flip) (see `draw`), resized and flipped.

        drafted: {task: k} for images decoded at 1/k (`codecs.decode_draft`; bicubic
        modalities only): their box is (i/k, j/k, h/k, w/k), resampled over the pixels it
        touches (`crop_resize`), an approximation of the full-resolution result."""
        drafted = drafted or {}
        return {m.name: self.apply(m, sample[m.name], *box, drafted.get(m.name, 1))
                for m in self.modalities}

    def apply(self, mod: Modality, x, i, j, h, w, flip, factor: int = 1) -> np.ndarray:
        """One modality's output (see the class docstring) of the crop (i, j, h, w, flip) of x,
        an image at 1/factor of the full resolution (JPEG draft; bicubic modalities only)."""
        size = self.image_size
        if mod.resample == "bicubic":  # the official code crops first, then resizes
            out = crop_resize(x, (i / factor, j / factor, h / factor, w / factor), size,
                              mod.storage == "uint16")
            return np.ascontiguousarray(out[:, ::-1] if flip else out)
        if factor != 1:
            raise ValueError(f"'{mod.name}': only bicubic modalities are decoded at 1/k")
        # NEAREST: compose crop, resize, flip (and the labels' second resize) into one gather.
        per_pixel = mod.storage == "uint16"
        rows = i + nearest_index(h, size, per_pixel)
        cols = j + nearest_index(w, size, per_pixel)
        if flip:
            cols = cols[::-1]
        if mod.kind == "labels":
            small = nearest_index(size, size // mod.stride_level, per_pixel=False)
            rows, cols = rows[small], cols[small]
        out = x[rows][:, cols]  # two 1-D gathers: much faster than one 2-D fancy index
        if mod.kind == "labels":
            return out  # stored dtype; int32 on the device (prepare_batch)
        if out.ndim == 2:
            out = out[..., None]
        if mod.storage == "npy":
            return out.astype(np.float32)
        return out  # uint8 / uint16: compact between processes, scaled on the device


def crop_resize(x: np.ndarray, box: tuple, size: int, int32: bool) -> np.ndarray:
    """HOST: PIL's crop, then BICUBIC resize to size x size (`pil_resample`; the device's twin
    is `device_augment.crop_resize`): x (H, W[, C]) uint8 or (H, W) integer; box (top, left,
    height, width). An integer box is the official `img.crop(box).resize(...)`, bit-exact; a
    fractional one (a drafted image's) crops the pixels it touches and resizes that box within
    them. int32: the 16-bit depth path (`resize_bicubic_int32`, (S, S, 1) int32), else
    (S, S[, C]) uint8."""
    top, left, height, width = box
    r0, c0 = math.floor(top), math.floor(left)
    crop = x[r0:math.ceil(top + height), c0:math.ceil(left + width)]
    inner = None if box == (r0, c0, height, width) else (top - r0, left - c0, height, width)
    if int32:  # resized as the 32-bit 'I' image official PIL made of it
        return pil_resample.resize_bicubic_int32(crop, (size, size), inner)[..., None]
    return pil_resample.resize_bicubic_uint8(crop, (size, size), inner)


def normalize(x: jnp.ndarray, mod: Modality) -> jnp.ndarray:
    """DEVICE: an image modality's stored values (B, H, W, C) -> float32 model input:
    x / scale, then (x - mean) / std per channel, then the truncated standardisation."""
    x = jnp.asarray(x).astype(jnp.float32) / mod.scale
    if mod.mean is not None:
        x = x - jnp.asarray(mod.mean, jnp.float32)
    if mod.std is not None:
        x = x / jnp.asarray(mod.std, jnp.float32)
    return standardize_depth(x) if mod.standardize else x


def standardize_depth(d: jnp.ndarray) -> jnp.ndarray:
    """DEVICE: official truncated standardisation (`run_pretraining_multimae.py:
    train_one_epoch`, the standardize_depth branch), per sample of d (B, H, W, C).

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


def prepare_batch(batch: dict, modalities) -> dict:
    """DEVICE: a collated batch of `PretrainAugment` outputs -> model inputs and targets.

    Every key that names one of `modalities` (Modality objects or default names) is
    normalised as that modality says (`normalize`); labels become int32 (B, S/s, S/s); other
    keys are returned unchanged.
    """
    out = dict(batch)
    for name, mod in resolve(modalities).items():
        if name not in batch:
            continue
        if mod.kind == "labels":
            out[name] = jnp.asarray(batch[name]).astype(jnp.int32)
        else:
            out[name] = normalize(batch[name], mod)
    return out


def random_stored_batch(key, modalities, batch_size: int, image_size: int) -> dict:
    """Random arrays in the layout and dtypes of `PretrainAugment`'s rows batched (for
    benchmarks): 'image' modalities (B, S, S, C) as stored (uint8; uint16 depth as int32 when
    resized bicubically, as pil_resample returns it; .npy as float32), 'labels' (B, S/s, S/s)
    below num_classes."""
    out = {}
    for i, mod in enumerate(modalities):
        k, side = jax.random.fold_in(key, i), image_size // mod.stride_level
        if mod.kind == "labels":
            x = jax.random.randint(k, (batch_size, side, side), 0, mod.num_classes)
            out[mod.name] = x.astype(jnp.uint8 if mod.num_classes <= 256 else jnp.int32)
        elif mod.storage == "uint16":
            x = jax.random.randint(k, (batch_size, side, side, 1), 0, 2 ** 16)
            out[mod.name] = x.astype(jnp.int32 if mod.resample == "bicubic" else jnp.uint16)
        elif mod.storage in ("rgb8", "uint8"):
            shape = (batch_size, side, side, mod.channels)
            out[mod.name] = jax.random.randint(k, shape, 0, 256).astype(jnp.uint8)
        else:  # 'npy'
            out[mod.name] = jax.random.normal(k, (batch_size, side, side, mod.channels))
    return out
