"""HOST-side image transforms of classification (official utils/datasets.py: build_transform,
timm's transforms_imagenet_train / the eval branch), on uint8 (H, W, 3) images:

- training: RandomResizedCrop (scale (0.08, 1), ratio (3/4, 4/3), crop then PIL bicubic
  resize), horizontal flip, then RandAugment (`data/randaugment.py`) on the uint8 crop. Random
  erasing and mixup / cutmix act on the normalised batch on the device (`multimae_jax/mixup.py`).
- evaluation: resize the shorter side to int(size / crop_pct) (256 for 224: torchvision
  Resize(int): the long side int(256 * long / short)) with PIL bicubic, then a centre crop of
  size x size with torchvision's offsets int(round((H - size) / 2)).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from multimae_jax.data import pil_resample, randaugment
from multimae_jax.data.transforms import PretrainAugment
from multimae_jax.modalities import Modality


@dataclasses.dataclass(frozen=True)
class ClassifyTrainAugment:
    """`aug(image, rng)`: uint8 (H, W, 3) -> uint8 (S, S, 3), S = image_size; the crop, flip and
    RandAugment draws all come from `rng` (a numpy Generator), so the output is a function of the
    image and the rng state only. randaugment: a timm policy string ('' = none)."""
    modality: Modality
    image_size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    randaugment: str = "rand-m9-mstd0.5-inc1"

    def __post_init__(self):
        crop = PretrainAugment((self.modality,), self.image_size, tuple(self.scale),
                               tuple(self.ratio), self.hflip)
        object.__setattr__(self, "_crop", crop)
        policy = randaugment.parse_policy(self.randaugment) if self.randaugment else None
        object.__setattr__(self, "_policy", policy)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = self._crop({self.modality.name: image}, rng)[self.modality.name]
        if self._policy is None:
            return out
        return randaugment.apply(out, randaugment.draw(self._policy, rng))  # the official hparams


def eval_transform(image: np.ndarray, image_size: int, crop_pct: float = 224 / 256
                   ) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (S, S, 3): the official evaluation resize and centre crop (see
    the module docstring). A side shorter than S after the resize is a ValueError."""
    height, width = image.shape[:2]
    short = int(image_size / crop_pct)
    if height <= width:
        size = (short, int(short * width / height))
    else:
        size = (int(short * height / width), short)
    if size != (height, width):
        image = pil_resample.resize_bicubic_uint8(image, size)
    top = int(round((size[0] - image_size) / 2))
    left = int(round((size[1] - image_size) / 2))
    if top < 0 or left < 0:
        raise ValueError(f"eval_transform: {size} after the resize is smaller than the crop "
                         f"{image_size} (crop_pct {crop_pct} > 1)")
    return np.ascontiguousarray(image[top:top + image_size, left:left + image_size])


@dataclasses.dataclass(frozen=True)
class ClassifyRecipe:
    """A source sample (`classify_sources`) -> one batch row {modality: uint8 (S, S, 3),
    'label': int32}. augment: the training augmentation, or None for the evaluation transform
    (image_size, crop_pct). A corrupt image that an evaluation source leaves out
    (data.skip_corrupt) becomes a black row with 'valid' False, which evaluation does not
    count (a training source replaces such an image instead)."""
    modality: str
    image_size: int
    augment: ClassifyTrainAugment | None = None
    crop_pct: float = 224 / 256

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        image = sample[self.modality]
        if image is None:
            s = self.image_size
            return {self.modality: np.zeros((s, s, 3), np.uint8), "label": np.int32(0),
                    "valid": np.bool_(False)}
        if self.augment is not None:
            image = self.augment(image, rng)
        else:
            image = eval_transform(image, self.image_size, self.crop_pct)
        return {self.modality: image, "label": np.int32(sample["label"])}
