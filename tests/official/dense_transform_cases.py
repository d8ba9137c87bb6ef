"""Dense fine-tuning data transforms: what the official loaders make of small samples.

utils/datasets_semseg.py (simple_transform, DataAugmentationForSemSeg: seg_adapt_labels,
standardize_depth_map), utils/dataset_regression.py (nyu_transform,
DataAugmentationForRegression) with albumentations 1.1.0, and utils/taskonomy/transforms.py
(task_transform). Inputs are PIL images of the modes the official loader got from its files
(Pillow <= 10.2 opened 16-bit PNGs as mode 'I'). The random training transforms run with a
seeded `random`; their draws (flip, jitter factors and order, scale, crop starts, gray) are
recorded from the albumentations transforms and stored, so the tests replay them.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

from common import Fixture

SEMSEG_SIZE, NYU_SIZE, TASKONOMY_SIZE = 16, 12, 12
# landscape / portrait smaller than the input, square equal and smaller, portrait larger,
# landscape exactly 2x (OpenCV's bilinear takes its INTER_AREA path there), very elongated
SEMSEG_SHAPES = [(10, 14), (14, 10), (16, 16), (12, 12), (23, 19), (20, 32), (5, 27)]
# odd margins around the centre crop: (15, 21) -> 12 x 17, (31, 25) -> 15 x 12
NYU_SHAPES = [(15, 21), (20, 15), (12, 12), (31, 25)]
TASKONOMY_TASKS = ["rgb", "normal", "principal_curvature", "reshading", "depth_zbuffer",
                   "depth_euclidean", "edge_texture", "edge_occlusion", "keypoints2d",
                   "keypoints3d", "mask_valid"]
JITTER_OPS = {"adjust_brightness_torchvision": 0, "adjust_contrast_torchvision": 1,
              "adjust_saturation_torchvision": 2, "adjust_hue_torchvision": 3}
DRAW_LAYOUT = ["flip", "gray", "crop_h_start", "crop_w_start", "scale", "brightness", "contrast",
               "saturation", "hue", "order_0", "order_1", "order_2", "order_3"]


def _smooth(rng: np.random.Generator, shape, top: int, channels: int = 0) -> np.ndarray:
    """Image-like values in 0..top-1: ramps (one direction per channel) plus noise of a tenth
    of the range, which exercises the interpolations' rounding."""
    h, w = shape
    out = []
    for c in range(max(channels, 1)):
        i, j = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
        ramp = [i, j, 1 - (i + j) / 2][c % 3]
        out.append(ramp * 0.9 * (top - 1) + rng.integers(0, top // 10, (h, w)))
    x = np.stack(out, -1).astype(np.int64)
    return x if channels else x[..., 0]


def _sample(rng: np.random.Generator, shape, classes: int | None) -> dict[str, np.ndarray]:
    h, w = shape
    sample = {
        "rgb": _smooth(rng, shape, 256, channels=3).astype(np.uint8),
        "depth": (200 + _smooth(rng, shape, 9000)).astype(np.uint16),
        "mask_valid": np.where(rng.random((h, w)) < 0.85, 255, 0).astype(np.uint8),
    }
    sample["depth"][0, : w // 3] = 254  # true depths equal to the pad value (standardisation quirk)
    if classes is not None:
        labels = rng.integers(0, classes + 1, (h, w))
        labels[rng.random((h, w)) < 0.1] = 255
        sample["semseg"] = labels.astype(np.uint8)
    return sample


def _pil(sample: dict[str, np.ndarray]) -> dict[str, Image.Image]:
    """The sample as the official MultiTaskImageFolder loads it (rgb 'RGB', depth 'I',
    semseg converted to 'P', others as stored)."""
    out = {}
    for key, x in sample.items():
        if key == "depth":
            out[key] = Image.fromarray(x.astype(np.int32), "I")
        elif "semseg" in key:
            out[key] = Image.fromarray(x, "L").convert("P")
        else:
            out[key] = Image.fromarray(x)
    return out


def _recorded(compose, log: dict):
    """Record every applied albumentations transform's params in log[class name]."""
    for t in compose.transforms:
        def wrapped(params, _orig=t.apply_with_params, _name=type(t).__name__, **kwargs):
            log[_name] = dict(params)
            return _orig(params, **kwargs)
        t.apply_with_params = wrapped
    return compose


def _draw(log: dict) -> np.ndarray:
    """The recorded albumentations draws as float64 in DRAW_LAYOUT (NaN: not drawn)."""
    draw = dict.fromkeys(DRAW_LAYOUT, np.nan)
    crop = log["RandomCrop"]
    draw.update(flip="HorizontalFlip" in log, gray="ToGray" in log,
                crop_h_start=crop["h_start"], crop_w_start=crop["w_start"])
    if "RandomScale" in log:
        draw["scale"] = log["RandomScale"]["scale"]
    if "ColorJitter" in log:
        fns = log["ColorJitter"]["transforms"]  # the four adjust_* lambdas, in their run order
        for k, fn in enumerate(fns):
            op = JITTER_OPS[fn.__code__.co_names[-1]]
            draw[f"order_{k}"], draw[DRAW_LAYOUT[5 + op]] = op, fn.__closure__[0].cell_contents
    return np.asarray([draw[k] for k in DRAW_LAYOUT], np.float64)


def _outputs(prefix: str, result: dict) -> dict[str, np.ndarray]:
    out = {}
    for key, value in result.items():
        value = value.numpy()
        out[f"{prefix}/out/{key}"] = value.astype(np.int32) if value.dtype == np.int64 else value
    return out


def _semseg(off, arrays: dict, rng, case: str, shape, train: bool, seed=None, with_mask=True,
            pseudo=False, **options) -> None:
    sample = _sample(rng, shape, classes=40)
    if not with_mask:
        del sample["mask_valid"]
    if pseudo:
        sample["pseudo_semseg"] = rng.integers(0, 140, shape).astype(np.uint8)
    data = off.semseg_data
    targets = {k: "mask" for k in sample if k != "rgb"}
    transform = data.simple_transform(train=train, additional_targets=targets,
                                      input_size=SEMSEG_SIZE)
    log = {}
    aug = data.DataAugmentationForSemSeg(transform=_recorded(transform, log), seg_num_classes=40,
                                         seg_reduce_zero_label=True, **options)
    if seed is not None:
        random.seed(seed)
    result = aug(_pil(sample))
    prefix = f"semseg_{'train' if train else 'eval'}/{case}"
    arrays.update({f"{prefix}/in/{k}": v for k, v in sample.items()})
    arrays.update(_outputs(prefix, result))
    if train:
        arrays[f"{prefix}/draw"] = _draw(log)


def _nyu(off, arrays: dict, rng, case: str, shape, train: bool, seed=None) -> None:
    sample = _sample(rng, shape, classes=None)
    data = off.regression_data
    transform = data.nyu_transform(train=train, input_size=NYU_SIZE, color_aug=True,
                                   additional_targets={"depth": "mask", "mask_valid": "mask"})
    log = {}
    aug = data.DataAugmentationForRegression(transform=_recorded(transform, log))
    if seed is not None:
        random.seed(seed)
    result = aug(_pil(sample))
    prefix = f"nyu_{'train' if train else 'eval'}/{case}"
    arrays.update({f"{prefix}/in/{k}": v for k, v in sample.items()})
    arrays.update(_outputs(prefix, result))
    if train:
        arrays[f"{prefix}/draw"] = _draw(log)


def _labels(off, arrays: dict) -> None:
    """seg_adapt_labels on every stored value 0..255, with num_classes such that all are valid."""
    labels = np.arange(256, dtype=np.int64).reshape(16, 16)
    for reduce in (True, False):
        for void in (False, True):
            classes = 253 if reduce else 254
            aug = off.semseg_data.DataAugmentationForSemSeg(
                transform=None, seg_num_classes=classes, seg_reduce_zero_label=reduce,
                seg_use_void_label=void)
            out = aug.seg_adapt_labels(torch.from_numpy(labels.copy()))
            arrays[f"labels/reduce{int(reduce)}_void{int(void)}"] = out.numpy().astype(np.int32)
    arrays["labels/in"] = labels.astype(np.int32)


def _standardize(off, arrays: dict, rng) -> None:
    standardize = off.semseg_data.DataAugmentationForSemSeg.standardize_depth_map
    cases = {"pads": (100 + _smooth(rng, (19, 23), 20000), None),
             "mask": (100 + _smooth(rng, (19, 23), 20000), rng.random((19, 23)) < 0.7),
             "tiny": (rng.integers(100, 20000, (3, 3)), None),
             "flat": (np.full((10, 10), 5000), None)}
    cases["pads"][0][2:5] = 254
    cases["mask"][0][:, 3] = 254
    cases["flat"][0][0, :5], cases["flat"][0][9, 5:] = 1000, 9000  # only the cut tails differ
    for name, (depth, mask) in cases.items():
        depth = depth.astype(np.float32)
        arrays[f"standardize/{name}/in"] = depth
        if mask is not None:
            arrays[f"standardize/{name}/mask"] = mask
        out = standardize(torch.from_numpy(depth.copy()),
                          None if mask is None else torch.from_numpy(mask))
        arrays[f"standardize/{name}/out"] = out.numpy()


def _taskonomy(off, arrays: dict, rng) -> None:
    transform = off.taskonomy_transforms.task_transform
    cases = [("square", (16, 16), TASKONOMY_TASKS),
             ("wide", (15, 22), ["rgb", "depth_zbuffer", "mask_valid"])]
    for case, (h, w), tasks in cases:
        for task in tasks:
            if task in ("rgb", "normal", "principal_curvature"):
                stored = _smooth(rng, (h, w), 256, channels=3).astype(np.uint8)
                img = Image.fromarray(stored)
            elif task == "reshading":
                stored = _smooth(rng, (h, w), 256).astype(np.uint8)
                img = Image.fromarray(stored)
            elif task == "mask_valid":
                stored = np.where(rng.random((h, w)) < 0.97, 255, 0).astype(np.uint8)
                img = Image.fromarray(stored)
            else:  # 16-bit PNGs, opened as mode 'I' by the Pillow of the official code
                top = {"depth_zbuffer": 12000, "depth_euclidean": 12000, "edge_texture": 24000}
                stored = _smooth(rng, (h, w), top.get(task, 65536)).astype(np.uint16)
                img = Image.fromarray(stored.astype(np.int32), "I")
            out = transform(img, task=task, image_size=TASKONOMY_SIZE)
            arrays[f"taskonomy/{case}/{task}/in"] = stored
            arrays[f"taskonomy/{case}/{task}/out"] = out.numpy()


def dense_transforms(off, seed=11) -> Fixture:
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for shape in SEMSEG_SHAPES:
        _semseg(off, arrays, rng, f"{shape[0]}x{shape[1]}", shape, train=False)
    _semseg(off, arrays, rng, "no_mask", (10, 14), train=False, with_mask=False)
    _semseg(off, arrays, rng, "raw_depth", (14, 10), train=False, standardize_depth=False)
    _semseg(off, arrays, rng, "pseudo", (23, 19), train=False, pseudo=True)
    # seeds: jitter only, flip and jitter, flip only, neither
    for shape, seed_ in [((10, 14), 0), ((23, 19), 4), ((20, 32), 9), ((14, 10), 5)]:
        _semseg(off, arrays, rng, f"seed{seed_}", shape, train=True, seed=seed_)
    for shape in NYU_SHAPES:
        _nyu(off, arrays, rng, f"{shape[0]}x{shape[1]}", shape, train=False)
    # seeds: flip and jitter, flip, jitter and gray, none, flip and gray
    for shape, seed_ in [((15, 20), 0), ((20, 15), 4), ((30, 25), 5), ((15, 20), 8)]:
        _nyu(off, arrays, rng, f"seed{seed_}", shape, train=True, seed=seed_)
    _labels(off, arrays)
    _standardize(off, arrays, rng)
    _taskonomy(off, arrays, rng)
    what = (
        "Official data transforms on small samples. <part>/<case>/in/<key>: inputs as stored "
        "(rgb uint8 HWC, depth uint16 given as PIL mode 'I', labels and masks uint8); "
        "<part>/<case>/out/<key>: the official outputs (CHW tensors as numpy, int64 as int32). "
        "semseg_eval, semseg_train: utils/datasets_semseg.py DataAugmentationForSemSeg("
        f"simple_transform(input_size={SEMSEG_SIZE}), seg_num_classes=40, "
        "seg_reduce_zero_label=True) with depth, semseg, mask_valid (and pseudo_semseg) as "
        "'mask' targets; case options in 'cases'. nyu_eval, nyu_train: utils/dataset_regression.py "
        f"DataAugmentationForRegression(nyu_transform(input_size={NYU_SIZE}, color_aug=True)). "
        "Training cases store the albumentations draws in <part>/<case>/draw, float64 in the "
        "order 'draw_layout' (order_k: the k-th jitter operation run, 0..3 = brightness, "
        "contrast, saturation, hue; NaN: not drawn, i.e. no RandomScale or no jitter). "
        "labels/reduce<r>_void<v>: seg_adapt_labels of labels/in with num_classes 253 (reduce) "
        "or 254. standardize/<case>: standardize_depth_map(in, mask). taskonomy/<case>/<task>: "
        "utils/taskonomy/transforms.py task_transform(img, task, "
        f"image_size={TASKONOMY_SIZE}), 16-bit inputs given as mode 'I' images.")
    cases = {"no_mask": "no mask_valid target", "raw_depth": "standardize_depth=False",
             "pseudo": "with a pseudo_semseg 'mask' target", "seed<n>": "random.seed(n) first"}
    return Fixture("dense_transforms", arrays, {"what": what, "cases": cases,
                                                "draw_layout": DRAW_LAYOUT,
                                                "albumentations": off.semseg_data.A.__version__})
