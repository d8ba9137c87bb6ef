"""HOST (numpy) transforms of the official dense fine-tuning, one sample at a time:
semantic segmentation (utils/datasets_semseg.py), NYUv2 depth (utils/dataset_regression.py).

A sample maps names to arrays (H, W[, C]) that share one H x W. The caller says which keys are
images (uint8 RGB: bilinear resize, colour jitter, image pad value) and which are masks (depth,
labels, validity masks: nearest resize, mask pad value), as the official scripts do with
albumentations' additional_targets 'image' / 'mask'. Outputs keep each array's dtype: images
stay uint8, normalised later (`dense_ops.normalize_image`, or on the device). The official
Compose ends with Normalize(ImageNet) and ToTensorV2 (CHW); both are left out here.

Random parameters come from a numpy Generator (`draw`), so an output is a function of the sample
and the rng state; `apply` takes them explicitly (the tests replay official draws with it).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from multimae_jax.data.dense_ops import (ColorJitter, JitterDraw, color_jitter, crop,
                                         max_size_shape, pad_bottom_right, resize, to_gray)
from multimae_jax.modalities import NYU_DEPTH_MEAN, NYU_DEPTH_STD

PAD_MASK_VALUE = 254  # utils/data_constants.py: mask pad; the labels' pad becomes the ignore index
IGNORE_INDEX = 255  # utils/data_constants.py: SEG_IGNORE_INDEX
# utils/datasets_semseg.py: simple_transform (train): ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.5)
SEMSEG_JITTER = ColorJitter((0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1), p=0.5)
# utils/dataset_regression.py: nyu_transform (color_aug): brightness 0.1255, contrast 0.4,
# saturation [0.5, 1.5], hue [-0.2, 0.2], p=0.5
NYU_JITTER = ColorJitter((1 - 0.1255, 1 + 0.1255), (0.6, 1.4), (0.5, 1.5), (-0.2, 0.2), p=0.5)


@dataclasses.dataclass(frozen=True)
class DenseDraw:
    """The random parameters of one training sample: horizontal flip, colour jitter (None: not
    applied), ToGray, RandomScale factor, and RandomCrop's (h_start, w_start) in [0, 1)."""
    flip: bool = False
    jitter: JitterDraw | None = None
    gray: bool = False
    scale: float = 1.0
    crop: tuple[float, float] = (0.0, 0.0)


def _checked(sample: dict, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in sample]
    if missing:
        raise KeyError(f"sample lacks {missing}; it has {sorted(sample)}")
    sizes = {k: tuple(sample[k].shape[:2]) for k in keys}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"modalities of one sample must share one H x W, got {sizes}")


def _draw_if_training(aug, rng: np.random.Generator | None) -> DenseDraw | None:
    if not aug.train:
        return None
    if rng is None:
        raise ValueError(f"{type(aug).__name__}(train=True) needs an rng (numpy Generator)")
    return aug.draw(rng)


def _random_crop(x: np.ndarray, size: int, starts: tuple[float, float]) -> np.ndarray:
    """albumentations 1.1.0 RandomCrop (crops/functional.py: get_random_crop_coords)."""
    top = int((x.shape[0] - size) * starts[0])
    left = int((x.shape[1] - size) * starts[1])
    return crop(x, top, left, size, size)


@dataclasses.dataclass(frozen=True)
class SemsegAugment:
    """utils/datasets_semseg.py: simple_transform, on the keys image_keys + mask_keys.

    train: HorizontalFlip(hflip) -> LongestMaxSize(input_size) -> ColorJitter (images) ->
    RandomScale(factor uniform in `scale`: sides int(side * factor)) -> PadIfNeeded to
    input_size at the top-left (pad_value for images, pad_mask_value for masks) ->
    RandomCrop(input_size). eval: LongestMaxSize -> PadIfNeeded.
    `aug(sample, rng)` -> {key: (input_size, input_size[, C])}, each key's dtype kept.
    """
    image_keys: tuple[str, ...]
    mask_keys: tuple[str, ...] = ()
    input_size: int = 512
    train: bool = True
    hflip: float = 0.5
    jitter: ColorJitter | None = SEMSEG_JITTER
    scale: tuple[float, float] = (0.1, 2.0)
    pad_value: int = 128
    pad_mask_value: int = PAD_MASK_VALUE

    def draw(self, rng: np.random.Generator) -> DenseDraw:
        flip = bool(rng.random() < self.hflip)
        jitter = self.jitter.draw(rng) if self.jitter is not None else None
        scale = float(rng.uniform(*self.scale))
        return DenseDraw(flip=flip, jitter=jitter, scale=scale,
                         crop=(float(rng.random()), float(rng.random())))

    def apply(self, sample: dict, draw: DenseDraw | None) -> dict:
        """The transform with given parameters; draw None is the eval transform."""
        size = self.input_size
        keys = (*self.image_keys, *self.mask_keys)
        _checked(sample, keys)
        out = {}
        for key in keys:
            image, x = key in self.image_keys, sample[key]
            if draw is not None and draw.flip:
                x = np.ascontiguousarray(x[:, ::-1])
            x = resize(x, max_size_shape(*x.shape[:2], size, longest=True), linear=image)
            if draw is not None:
                if image and draw.jitter is not None:
                    x = color_jitter(x, draw.jitter)
                x = resize(x, (int(x.shape[0] * draw.scale), int(x.shape[1] * draw.scale)),
                           linear=image)
            x = pad_bottom_right(x, size, size, self.pad_value if image else self.pad_mask_value)
            if draw is not None:
                x = _random_crop(x, size, draw.crop)
            out[key] = np.ascontiguousarray(x)
        return out

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        return self.apply(sample, _draw_if_training(self, rng))


@dataclasses.dataclass(frozen=True)
class NyuAugment:
    """utils/dataset_regression.py: nyu_transform, on the keys image_keys + mask_keys.

    train: SmallestMaxSize(input_size) -> HorizontalFlip(hflip) -> ColorJitter (images) ->
    ToGray(gray_p) (images) -> RandomCrop(input_size); the official color_aug=False is
    jitter=None, gray_p=0. eval: SmallestMaxSize -> CenterCrop(input_size).
    `aug(sample, rng)` -> {key: (input_size, input_size[, C])}, each key's dtype kept.
    """
    image_keys: tuple[str, ...]
    mask_keys: tuple[str, ...] = ()
    input_size: int = 256
    train: bool = True
    hflip: float = 0.5
    jitter: ColorJitter | None = NYU_JITTER
    gray_p: float = 0.3

    def draw(self, rng: np.random.Generator) -> DenseDraw:
        flip = bool(rng.random() < self.hflip)
        jitter = self.jitter.draw(rng) if self.jitter is not None else None
        gray = bool(rng.random() < self.gray_p)
        return DenseDraw(flip=flip, jitter=jitter, gray=gray,
                         crop=(float(rng.random()), float(rng.random())))

    def apply(self, sample: dict, draw: DenseDraw | None) -> dict:
        """The transform with given parameters; draw None is the eval transform."""
        size = self.input_size
        keys = (*self.image_keys, *self.mask_keys)
        _checked(sample, keys)
        out = {}
        for key in keys:
            image, x = key in self.image_keys, sample[key]
            x = resize(x, max_size_shape(*x.shape[:2], size, longest=False), linear=image)
            if draw is None:  # CenterCrop (crops/functional.py: get_center_crop_coords)
                x = crop(x, (x.shape[0] - size) // 2, (x.shape[1] - size) // 2, size, size)
            else:
                if draw.flip:
                    x = np.ascontiguousarray(x[:, ::-1])
                if image and draw.jitter is not None:
                    x = color_jitter(x, draw.jitter)
                if image and draw.gray:
                    x = to_gray(x)
                x = _random_crop(x, size, draw.crop)
            out[key] = np.ascontiguousarray(x)
        return out

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        return self.apply(sample, _draw_if_training(self, rng))


def adapt_labels(labels: np.ndarray, num_classes: int, reduce_zero_label: bool = True,
                 use_void_label: bool = False, ignore_index: int = IGNORE_INDEX,
                 pad_value: int = PAD_MASK_VALUE) -> np.ndarray:
    """utils/datasets_semseg.py: DataAugmentationForSemSeg.seg_adapt_labels, then a check.

    labels: integer (H, W) as stored and transformed (pads = pad_value). Pads become
    ignore_index (or the void class num_classes with use_void_label); with reduce_zero_label,
    0 becomes ignore_index and every other class c becomes c - 1 (a stored ignore_index stays).
    Returns int32 (H, W) in 0..num_classes-1 (num_classes: void) or ignore_index. Any other
    result raises ValueError naming the stored values: the official loss would fail on them.
    """
    out = labels.astype(np.int32)
    if use_void_label:
        pad_replace = num_classes + 1 if reduce_zero_label else num_classes
    else:
        pad_replace = ignore_index
    out[labels == pad_value] = pad_replace
    if reduce_zero_label:
        out[out == 0] = ignore_index
        out -= 1
        out[out == ignore_index - 1] = ignore_index
    bad = ((out < 0) | (out >= num_classes + use_void_label)) & (out != ignore_index)
    if bad.any():
        raise ValueError(
            f"labels hold value(s) {np.unique(labels[bad])[:8].tolist()} that are not classes "
            f"0..{num_classes - 1} after adaptation (num_classes={num_classes}, "
            f"reduce_zero_label={reduce_zero_label}) nor the ignore index {ignore_index}")
    return out


def standardize_depth_map(depth: np.ndarray, mask_valid: np.ndarray | None = None,
                          pad_value: float | None = PAD_MASK_VALUE, trunc: float = 0.1,
                          eps: float = 1e-6) -> np.ndarray:
    """utils/datasets_semseg.py: DataAugmentationForSemSeg.standardize_depth_map, per sample.

    depth (H, W[, 1]) any real dtype, as float32; pixels equal to pad_value (also true depths of
    that value, as there) and, if given, where bool mask_valid (H, W) is False are left out:
    of the n others, sorted, the slice [int(trunc n), int((1 - trunc) n)) gives the mean and
    unbiased variance; left-out pixels take the mean; returns float32 (depth - mean) /
    sqrt(var + eps), depth's shape. Statistics in float64, rounded to float32 (torch's float32
    reductions differ by about an ulp).
    """
    d = np.array(depth, np.float32)
    left_out = np.zeros(d.shape, bool) if pad_value is None else d == pad_value
    if mask_valid is not None:
        left_out |= ~np.asarray(mask_valid, bool).reshape(d.shape)
    values = np.sort(d[~left_out])
    n = values.size
    kept = values[int(trunc * n):int((1 - trunc) * n)].astype(np.float64)
    mean = np.float32(kept.mean() if kept.size else np.nan)
    var = np.float32(kept.var(ddof=1) if kept.size > 1 else np.nan)
    d[left_out] = mean
    return (d - mean) / np.sqrt(var + np.float32(eps))


def depth_input(depth: np.ndarray, mask_valid: np.ndarray | None = None,
                standardize: bool = True, pad_value: float = PAD_MASK_VALUE) -> np.ndarray:
    """The depth input of semantic segmentation (DataAugmentationForSemSeg.__call__, 'depth').

    depth (H, W[, 1]) after `SemsegAugment`; mask_valid uint8 (H, W[, 1]) after it too, or None
    when the run has no validity masks. Standardised (`standardize_depth_map`, no mask) if
    `standardize`, then 0 wherever mask_valid != 255 (its pads included). -> float32 (H, W, 1).
    """
    d = depth.astype(np.float32).reshape(depth.shape[:2] + (1,))
    if standardize:
        d = standardize_depth_map(d, pad_value=pad_value)
    if mask_valid is not None:
        d[mask_valid.reshape(d.shape) != 255] = 0.0
    return d


def depth_target(depth: np.ndarray, mask_valid: np.ndarray, mean: float = NYU_DEPTH_MEAN,
                 std: float = NYU_DEPTH_STD, fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The NYUv2 depth target (utils/dataset_regression.py: DataAugmentationForRegression).

    depth (H, W[, 1]) raw units and mask_valid uint8 (H, W[, 1]), both after `NyuAugment`.
    Returns (target float32 (H, W, 1) = (depth - mean) / std in float32, `fill` where invalid;
    valid bool (H, W, 1) = mask_valid == 255).
    """
    target = (depth.astype(np.float32) - np.float32(mean)) / np.float32(std)
    target = target.reshape(depth.shape[:2] + (1,))
    valid = mask_valid.reshape(target.shape) == 255
    target[~valid] = fill
    return target, valid


def pseudo_semseg_input(labels: np.ndarray, num_classes: int = 133, stride: int = 4,
                        train: bool = True, pad_value: int = PAD_MASK_VALUE) -> np.ndarray:
    """A pseudo-label map as the semseg input: labels (H, W) after `SemsegAugment` -> int32
    (H // stride, W // stride), every stride-th pixel from the first (DataAugmentationForSemSeg:
    F.interpolate(scale_factor=1/4, mode='nearest')). Then, as run_finetuning_semseg.py's loops
    do: train_one_epoch maps every value > num_classes - 1 to num_classes (the adapter's padding
    class); evaluate maps only pad_value to it."""
    h, w = labels.shape[:2]
    out = labels[:h // stride * stride:stride, :w // stride * stride:stride].astype(np.int32)
    out[(out > num_classes - 1) if train else (out == pad_value)] = num_classes
    return out
