"""What one dense fine-tuning sample becomes on the HOST: a recipe maps a source sample
(`dense_sources`: native arrays of one H x W, plus 'paths') to the arrays of one batch row.

The caller (a config) says which keys are inputs, targets and masks; nothing here depends on a
modality's name. Outputs (S = the augmentation's input_size):
- image inputs: uint8 (S, S, 3), as stored (ImageNet normalisation happens on the device);
- depth inputs (segmentation): float32 (S, S, 1), `dense_transforms.depth_input`;
- label targets: int32 (S, S), `dense_transforms.adapt_labels` (255 = ignore);
- depth targets (NYUv2): float32 (S, S, 1), `dense_transforms.depth_target`, with the mask
  bool (S, S, 1);
- Taskonomy targets: float32 (S, S, C) (`preprocess_taskonomy`), the mask bool (S, S, 1).
`recipe(sample, rng)`: rng, a numpy Generator, draws the training augmentation (unused by eval
recipes and Taskonomy, which has none).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from multimae_jax.data.codecs import CorruptFileError
from multimae_jax.data.dense_transforms import (IGNORE_INDEX, NyuAugment, SemsegAugment,
                                                adapt_labels, depth_input, depth_target)
from multimae_jax.data.taskonomy_transforms import (TaskonomyTask, preprocess_taskonomy,
                                                    resize_as_loaded, valid_mask)
from multimae_jax.modalities import NYU_DEPTH_MEAN, NYU_DEPTH_STD


def _require(keys, among, what: str) -> None:
    missing = [k for k in keys if k is not None and k not in among]
    if missing:
        raise ValueError(f"{what}: {missing} must be among {list(among)}")


@dataclasses.dataclass(frozen=True)
class SemsegRecipe:
    """Semantic segmentation (utils/datasets_semseg.py: DataAugmentationForSemSeg.__call__).

    augment: its image_keys are the image inputs; its mask_keys hold `label`, the
    `depth_inputs` and `mask` (resized nearest, padded with 254). The depth inputs are
    standardised (with `standardize_depth`) and zeroed where mask != 255; the labels adapted.
    A stored label that adaptation does not map to a class or to 255 is a CorruptFileError
    naming the file, checked on the whole stored map (a crop could hide it).
    """
    augment: SemsegAugment
    label: str
    num_classes: int
    reduce_zero_label: bool = True
    use_void_label: bool = False
    depth_inputs: tuple[str, ...] = ()
    mask: str | None = None
    standardize_depth: bool = True

    def __post_init__(self):
        _require((self.label, *self.depth_inputs, self.mask), self.augment.mask_keys,
                 "SemsegRecipe: the label, depth inputs and mask are the augmentation's masks")

    @property
    def keys(self) -> tuple[str, ...]:
        return (*self.augment.image_keys, *self.augment.mask_keys)

    def _labels(self, labels: np.ndarray) -> np.ndarray:
        return adapt_labels(labels, self.num_classes, self.reduce_zero_label,
                            self.use_void_label, IGNORE_INDEX, self.augment.pad_mask_value)

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        try:
            self._labels(sample[self.label])
        except ValueError as e:
            raise CorruptFileError(f"{sample['paths'][self.label]}: {e}") from None
        x = self.augment({k: sample[k] for k in self.keys}, rng)
        out = {k: x[k] for k in self.augment.image_keys}
        mask = x[self.mask] if self.mask else None
        for key in self.depth_inputs:
            out[key] = depth_input(x[key], mask, self.standardize_depth,
                                   self.augment.pad_mask_value)
        out[self.label] = self._labels(x[self.label])
        return out


@dataclasses.dataclass(frozen=True)
class DepthRecipe:
    """NYUv2 depth (utils/dataset_regression.py: DataAugmentationForRegression.__call__).

    augment: its image_keys are the image inputs; its mask_keys hold `target` (raw depth) and
    `mask` (uint8, 255 = valid). Target (depth - mean) / std, 0 where invalid; mask -> bool.
    """
    augment: NyuAugment
    target: str
    mask: str
    mean: float = NYU_DEPTH_MEAN
    std: float = NYU_DEPTH_STD

    def __post_init__(self):
        _require((self.target, self.mask), self.augment.mask_keys,
                 "DepthRecipe: the target and mask are the augmentation's masks")

    @property
    def keys(self) -> tuple[str, ...]:
        return (*self.augment.image_keys, *self.augment.mask_keys)

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        x = self.augment({k: sample[k] for k in self.keys}, rng)
        out = {k: x[k] for k in self.augment.image_keys}
        out[self.target], out[self.mask] = depth_target(x[self.target], x[self.mask],
                                                        self.mean, self.std)
        return out


@dataclasses.dataclass(frozen=True)
class TaskonomyRecipe:
    """Taskonomy (utils/taskonomy/transforms.py: task_transform), no augmentation.

    tasks: {key: TaskonomyTask} of every key but the mask. `inputs` are only resized as loaded
    (an rgb input stays uint8); the other keys are preprocessed to float32 (S, S, C); `mask`
    becomes the dilated validity mask bool (S, S, 1). S = image_size for square files.
    """
    tasks: dict[str, TaskonomyTask]
    inputs: tuple[str, ...]
    mask: str
    image_size: int = 384
    pool: int = 4

    def __post_init__(self):
        _require(self.inputs, self.tasks, "TaskonomyRecipe: the inputs are tasks")

    @property
    def keys(self) -> tuple[str, ...]:
        return (*self.tasks, self.mask)

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        out = {}
        for key, task in self.tasks.items():
            fn = resize_as_loaded if key in self.inputs else preprocess_taskonomy
            out[key] = fn(sample[key], task, self.image_size)
        out[self.mask] = valid_mask(sample[self.mask], self.image_size, self.pool)
        return out
