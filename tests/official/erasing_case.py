"""Random erasing of the ImageNet fine-tuning recipe: the official `utils/random_erasing.py:
RandomErasing` as `utils/transforms_factory.py: transforms_imagenet_train` builds it
(RandomErasing(re_prob, mode=re_mode, max_count=re_count, num_splits=0, device='cpu'), so
min_count 1), its Python `random` draws scripted and recorded, and the boxes it erased read back
from the image (each box filled with its own marker value by a stand-in `_get_pixels`).

Cases: one box; a first try rejected (h >= H) on a non-square image, the box at the bottom edge;
re_count 2 drawing 2 boxes (area per box halved) and drawing 1; the probability missed; a draw
exactly at the probability (erases: the official skips only when random() > probability); all ten
tries rejected (no box). Also the shapes and zero-ness of `_get_pixels` per mode.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import torch

from common import Fixture

LOG_MAX = math.log(1 / 0.3)  # the official log-aspect range: (log 0.3, log(1 / 0.3))

# case -> (probability, re_count, (H, W), scripted draws in call order: (function, value))
CASES = {
    # 0.2 * 256 = 51.2 px, aspect e^0.4: h 9, w 6; top randint(0, 7) = 3, left randint(0, 10) = 5
    "single": (1.0, 1, (16, 16), [("random", 0.3), ("uniform", 0.2), ("uniform", 0.4),
                                  ("randint", 3), ("randint", 5)]),
    # try 1: 0.33 * 240 px, aspect e^1.2: h 16 >= 12, rejected; try 2: 24 px, aspect e^-0.5:
    # h 4, w 6; top randint(0, 8) = 8 (the bottom edge), left 0
    "first_try_rejected": (0.25, 1, (12, 20), [
        ("random", 0.1), ("uniform", 0.33), ("uniform", 1.2), ("uniform", 0.1),
        ("uniform", -0.5), ("randint", 8), ("randint", 0)]),
    # re_count 2: count randint(1, 2) = 2, area / 2 per box: box 1 0.3 * 256 / 2 px, aspect 1:
    # 6 x 6 at (0, 0); box 2 0.05 * 256 / 2 px, aspect e: 4 x 2 at (10, 13)
    "count2": (1.0, 2, (16, 16), [
        ("random", 0.0), ("randint", 2), ("uniform", 0.3), ("uniform", 0.0), ("randint", 0),
        ("randint", 0), ("uniform", 0.05), ("uniform", 1.0), ("randint", 10), ("randint", 13)]),
    # re_count 2 drawing count 1: the whole area share for one box (0.3 * 256, aspect 1: 9 x 9)
    "count2_draws1": (1.0, 2, (16, 16), [
        ("random", 0.0), ("randint", 1), ("uniform", 0.3), ("uniform", 0.0), ("randint", 7),
        ("randint", 2)]),
    # random() 0.7 > probability 0.5: nothing erased
    "skipped": (0.5, 1, (16, 16), [("random", 0.7)]),
    # random() == probability: erased (0.1 * 256 px, aspect e^-1: h 3, w 8)
    "at_probability": (0.5, 1, (16, 16), [("random", 0.5), ("uniform", 0.1), ("uniform", -1.0),
                                          ("randint", 4), ("randint", 1)]),
    # every try 0.33 * 192 px at aspect e^1.2 on 8 x 24: h 15 >= 8, ten rejections, no box
    "all_rejected": (1.0, 1, (8, 24), [("random", 0.0)] + [("uniform", 0.33),
                                                           ("uniform", 1.2)] * 10),
}

WHAT = (
    "Meta only. recipe: the RandomErasing arguments of transforms_imagenet_train (min_area, "
    "max_area, log_aspect = (log 0.3, log(1 / 0.3)), min_count 1, mode 'pixel' default). cases: "
    "per case probability (re_prob), re_count (max_count), image (C, H, W) = (3, H, W), calls: "
    "the Python random calls of RandomErasing._erase in order, [function, arguments, the scripted "
    "value returned] (random.uniform returns the value itself: the area share in [min_area, "
    "max_area], the log aspect ratio; randint its integer), boxes: [top, left, h, w] per box "
    "erased, in order, read back from the image (each box a distinct marker value, checked to "
    "fill exactly h x w pixels in every channel). get_pixels: per mode the shape and all-zero-ness "
    "of _get_pixels(per_pixel, rand_color, (3, 4, 5)) (the fill: 'pixel' normal per pixel and "
    "channel, 'rand' normal per channel, 'const' zeros).")


class _ScriptedRandom:
    """Stands in for the `random` module inside utils/random_erasing.py: returns the scripted
    values in order, checks the function called and its value's range, records the arguments."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = []

    def _next(self, name, *args):
        if not self.script:
            raise AssertionError(f"unscripted random.{name}{args}")
        want, value = self.script.pop(0)
        if want != name:
            raise AssertionError(f"random.{name}{args} called where {want} was scripted")
        if args and not min(args) <= value <= max(args):
            raise AssertionError(f"scripted random.{name}{args} = {value}: out of range")
        self.calls.append([name, [float(a) for a in args], value])
        return value

    def random(self):
        return self._next("random")

    def uniform(self, a, b):
        return self._next("uniform", a, b)

    def randint(self, a, b):
        return self._next("randint", a, b)


def _boxes(img: np.ndarray, count: int) -> list[list[int]]:
    boxes = []
    for k in range(1, count + 1):
        rows, cols = np.nonzero((img == k).all(axis=0))
        top, left = int(rows.min()), int(cols.min())
        h, w = int(rows.max()) - top + 1, int(cols.max()) - left + 1
        if (img == k).sum() != img.shape[0] * h * w:
            raise AssertionError(f"box {k}: not a full {h} x {w} rectangle (an overlap?)")
        boxes.append([top, left, h, w])
    return boxes


def random_erasing(off) -> Fixture:
    del off  # the official utils package is registered by official_code.load
    re_mod = importlib.import_module("utils.random_erasing")
    get_pixels, module_random = re_mod._get_pixels, re_mod.random
    cases = {}
    for case, (probability, re_count, (h, w), script) in CASES.items():
        patches = []

        def marker_pixels(per_pixel, rand_color, patch_size, dtype=torch.float32, device="cuda"):
            patches.append(list(patch_size))
            return torch.full(patch_size, float(len(patches)), dtype=dtype, device=device)

        scripted = _ScriptedRandom(script)
        re_mod._get_pixels, re_mod.random = marker_pixels, scripted
        try:
            erase = re_mod.RandomErasing(probability, mode="pixel", max_count=re_count,
                                         num_splits=0, device="cpu")
            img = torch.zeros((3, h, w))
            out = erase(img)
        finally:
            re_mod._get_pixels, re_mod.random = get_pixels, module_random
        if scripted.script:
            raise AssertionError(f"{case}: scripted draws left unused: {scripted.script}")
        boxes = _boxes(out.numpy(), len(patches))
        if [[3, b[2], b[3]] for b in boxes] != patches:
            raise AssertionError(f"{case}: boxes {boxes} differ from the patches {patches}")
        cases[case] = {"probability": probability, "re_count": re_count, "image": [3, h, w],
                       "calls": scripted.calls, "boxes": boxes}
    fills = {}
    for mode in ("pixel", "rand", "const"):
        erase = re_mod.RandomErasing(1.0, mode=mode, device="cpu")
        torch.manual_seed(0)
        patch = get_pixels(erase.per_pixel, erase.rand_color, (3, 4, 5), device="cpu")
        fills[mode] = {"shape": list(patch.shape), "all_zero": bool((patch == 0).all())}
    erase = re_mod.RandomErasing(1.0, mode="pixel", max_count=1, device="cpu")
    recipe = {"min_area": erase.min_area, "max_area": erase.max_area,
              "log_aspect": list(erase.log_aspect_ratio), "min_count": erase.min_count,
              "mode": "pixel"}
    if not math.isclose(recipe["log_aspect"][1], LOG_MAX):
        raise AssertionError(f"log aspect range {recipe['log_aspect']}")
    return Fixture("random_erasing", {}, {"what": WHAT, "recipe": recipe, "cases": cases,
                                          "get_pixels": fills})
