"""HOST-side image transforms of classification (official utils/datasets.py: build_transform,
timm's transforms_imagenet_train / the eval branch), on uint8 (H, W, 3) images:

- training: RandomResizedCrop (scale (0.08, 1), ratio (3/4, 4/3), crop then PIL bicubic
  resize), horizontal flip, then RandAugment (`data/randaugment.py`) on the uint8 crop. With
  reprob > 0 the random erasing boxes are drawn here too (`erase_boxes_from_samples`, after
  RandAugment, from the same rng) and filled on the device after normalisation
  (`multimae_jax/erasing.py`), before mixup / cutmix (`multimae_jax/mixup.py`).
- evaluation: resize the shorter side to int(size / crop_pct) (256 for 224: torchvision
  Resize(int): the long side int(256 * long / short)) with PIL bicubic, then a centre crop of
  size x size with torchvision's offsets int(round((H - size) / 2)).

Inputs beyond rgb (the linear probe of an RGB-D encoder, say; the official code classifies rgb
alone) share the rgb image's crop and flip, each modality resampled and stored as pre-training
stores it (`PretrainAugment`); at evaluation each is resized as its `resample` says before the
same centre crop. RandAugment and random erasing are rgb operations: they need a single input.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from multimae_jax.data import pil_resample, randaugment
from multimae_jax.data.transforms import PretrainAugment, nearest_index
from multimae_jax.modalities import MODALITIES, Modality


# The official RandomErasing's fixed arguments (utils/random_erasing.py, as
# transforms_imagenet_train creates it): area share, log aspect-ratio range, tries per box.
ERASE_AREA = (0.02, 1 / 3)
ERASE_LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))
ERASE_TRIES = 10


def erase_boxes_from_samples(height: int, width: int, probability: float, max_count: int,
                             apply_uniform: float, count: int, area_share, log_aspect,
                             top_uniform: Sequence[float], left_uniform: Sequence[float]
                             ) -> np.ndarray:
    """One image's random erasing boxes from raw random numbers, with the official rules
    (RandomErasing._erase): nothing when apply_uniform > probability; else `count` boxes (the
    official count randint(1, max_count), 1 when max_count is 1), box i taking the first of
    ERASE_TRIES tries t with target area area_share[i][t] x H W / count (area_share in
    ERASE_AREA), aspect exp(log_aspect[i][t]), h = int(round(sqrt(area x aspect))), w =
    int(round(sqrt(area / aspect))) and w < W and h < H (no box if none fits); its corner top =
    the official randint(0, H - h) as floor(top_uniform[i] x (H - h + 1)), left likewise.

    Returns int32 (max_count, 4) rows (top, left, h, w) in the official order (a later box
    overwrites an earlier one), h = w = 0 for no box."""
    boxes = np.zeros((max_count, 4), np.int32)
    if apply_uniform > probability:
        return boxes
    area, k = height * width, 0
    for i in range(count):
        for t in range(ERASE_TRIES):
            target_area = float(area_share[i][t]) * area / count
            aspect = math.exp(float(log_aspect[i][t]))
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if w < width and h < height:
                top = min(int(float(top_uniform[i]) * (height - h + 1)), height - h)
                left = min(int(float(left_uniform[i]) * (width - w + 1)), width - w)
                boxes[k] = (top, left, h, w)
                k += 1
                break
    return boxes


def draw_erase_boxes(height: int, width: int, probability: float, max_count: int,
                     rng: np.random.Generator) -> np.ndarray:
    """`erase_boxes_from_samples` with its numbers drawn from `rng` alone: the same
    distributions as the official code (not its Python `random` stream). Every call takes the
    same amount of randomness from `rng`, whatever is erased."""
    apply_uniform = rng.random()
    count = int(rng.integers(1, max_count + 1)) if max_count > 1 else 1
    area_share = rng.uniform(*ERASE_AREA, (max_count, ERASE_TRIES))
    log_aspect = rng.uniform(*ERASE_LOG_ASPECT, (max_count, ERASE_TRIES))
    top_uniform, left_uniform = rng.random(max_count), rng.random(max_count)
    return erase_boxes_from_samples(height, width, probability, max_count, apply_uniform, count,
                                    area_share, log_aspect, top_uniform, left_uniform)


@dataclasses.dataclass(frozen=True)
class ClassifyTrainAugment:
    """`aug(images, rng)`: {modality: native (H, W, ...)} -> {modality: (S, S, ...)} as
    `PretrainAugment` stores it (rgb uint8 (S, S, 3)), S = image_size; the crop, flip and
    RandAugment draws all come from `rng` (a numpy Generator), so the output is a function of the
    images and the rng state only. modalities: the inputs (Modality objects). randaugment: a timm
    policy string ('' = none). reprob, recount: random erasing's probability (0 = off) and most
    boxes per image (`erase_boxes`). RandAugment and erasing need a single rgb8 input.
    crop_draw: the crop's draw, torchvision's or MAE's (`transforms.CROP_DRAWS`)."""
    modalities: tuple
    image_size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    randaugment: str = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.0
    recount: int = 1
    crop_draw: str = "torchvision"

    def __post_init__(self):
        mods = tuple(self.modalities)
        if (self.randaugment or self.reprob > 0) and (len(mods) != 1
                                                      or mods[0].storage != "rgb8"):
            raise ValueError(f"augment.randaugment ({self.randaugment!r}) and augment.reprob "
                             f"({self.reprob}) act on one rgb image, but the inputs are "
                             f"{[m.name for m in mods]}: set augment.randaugment='' and "
                             "augment.reprob=0")
        crop = PretrainAugment(mods, self.image_size, tuple(self.scale), tuple(self.ratio),
                               self.hflip, self.crop_draw)
        object.__setattr__(self, "_crop", crop)
        policy = randaugment.parse_policy(self.randaugment) if self.randaugment else None
        object.__setattr__(self, "_policy", policy)

    def __call__(self, images: dict, rng: np.random.Generator) -> dict:
        out = self._crop(images, rng)
        if self._policy is None:
            return out
        (name, image), = out.items()
        return {name: randaugment.apply(image, randaugment.draw(self._policy, rng))}

    def erase_boxes(self, rng: np.random.Generator) -> np.ndarray:
        """int32 (recount, 4) random erasing boxes of an S x S image (`draw_erase_boxes`)."""
        s = self.image_size
        return draw_erase_boxes(s, s, self.reprob, self.recount, rng)


def eval_transform(image: np.ndarray, image_size: int, crop_pct: float = 224 / 256,
                   modality: Modality = MODALITIES["rgb"]) -> np.ndarray:
    """A native (H, W, ...) image of `modality` -> (S, S, ...) stored as `PretrainAugment`
    stores it (rgb: uint8 (S, S, 3)): the official evaluation resize and centre crop (see the
    module docstring) with the modality's resample; labels are then taken every stride_level
    pixels (NEAREST to S / stride_level). A side shorter than S after the resize is a
    ValueError."""
    height, width = image.shape[:2]
    short = int(image_size / crop_pct)
    if height <= width:
        size = (short, int(short * width / height))
    else:
        size = (int(short * height / width), short)
    top = int(round((size[0] - image_size) / 2))
    left = int(round((size[1] - image_size) / 2))
    if top < 0 or left < 0:
        raise ValueError(f"eval_transform: {size} after the resize is smaller than the crop "
                         f"{image_size} (crop_pct {crop_pct} > 1)")
    rows, cols = slice(top, top + image_size), slice(left, left + image_size)
    if modality.resample == "bicubic":
        if modality.storage == "uint16":  # PIL's 32-bit 'I' image, as pre-training resizes it
            image = pil_resample.resize_bicubic_int32(image, size)[..., None]
        elif size != (height, width):
            image = pil_resample.resize_bicubic_uint8(image, size)
        return np.ascontiguousarray(image[rows, cols])
    per_pixel = modality.storage == "uint16"  # PIL NEAREST's two roundings (transforms.py)
    row_index = nearest_index(height, size[0], per_pixel)[rows]
    col_index = nearest_index(width, size[1], per_pixel)[cols]
    if modality.kind == "labels":
        small = nearest_index(image_size, image_size // modality.stride_level, per_pixel=False)
        row_index, col_index = row_index[small], col_index[small]
        return image[row_index][:, col_index]
    out = image[row_index][:, col_index]
    out = out[..., None] if out.ndim == 2 else out
    return out.astype(np.float32) if modality.storage == "npy" else out


@dataclasses.dataclass(frozen=True)
class ClassifyRecipe:
    """A source sample (`classify_sources`) -> one batch row {modality: (S, S, ...) as
    `eval_transform` / the augmentation store it, 'label': int32}, and 'erase' int32
    (recount, 4) when augment.reprob > 0 (the boxes that the device fills after normalisation,
    drawn after the augmentation from the same rng). modalities: the inputs (Modality objects).
    augment: the training augmentation, or None for the evaluation transform (image_size,
    crop_pct). A corrupt sample that an evaluation source leaves out (data.skip_corrupt) becomes
    a zero row with 'valid' False, which evaluation does not count (a training source replaces
    such a sample instead)."""
    modalities: tuple
    image_size: int
    augment: ClassifyTrainAugment | None = None
    crop_pct: float = 224 / 256

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        names = [m.name for m in self.modalities]
        erasing = self.augment is not None and self.augment.reprob > 0
        if sample[names[0]] is None:
            row = {m.name: np.zeros_like(self._blank(m)) for m in self.modalities}
            row.update(label=np.int32(0), valid=np.bool_(False))
            if erasing:
                row["erase"] = np.zeros((self.augment.recount, 4), np.int32)
            return row
        if self.augment is not None:
            row = self.augment({n: sample[n] for n in names}, rng)
        else:
            row = {m.name: eval_transform(sample[m.name], self.image_size, self.crop_pct, m)
                   for m in self.modalities}
        row["label"] = np.int32(sample["label"])
        if erasing:
            row["erase"] = self.augment.erase_boxes(rng)
        return row

    def _blank(self, modality: Modality) -> np.ndarray:
        """A stand-in row of `modality` with the shape and dtype of a real one: what the
        evaluation transform makes of an S x S image of zeros."""
        s = self.image_size
        shape = (s, s) + ((3,) if modality.storage == "rgb8" else ())
        dtype = {"rgb8": np.uint8, "uint8": np.uint8, "uint16": np.uint16,
                 "labels": np.uint8, "npy": np.float32}[modality.storage]
        return eval_transform(np.zeros(shape, dtype), s, 1.0, modality)
