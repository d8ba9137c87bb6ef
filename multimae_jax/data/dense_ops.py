"""HOST (numpy) image operations of the official fine-tuning augmentation, as albumentations 1.1.0
computes them (the version the official code used), for `dense_transforms`.

Pixel kernels are OpenCV's, called as albumentations 1.1.0 calls them (cv2.resize, cvtColor,
addWeighted); everything else (sizes, padding, crops, lookup tables) is numpy with its integer
rules. The random parameters are drawn by the caller from a numpy Generator, so an output is a
function of the sample and the rng state only. Arrays are HWC (or HW); 'images' are uint8 RGB,
'masks' are anything cv2 resizes with INTER_NEAREST (uint8, uint16, int32, float32).
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np


def max_size_shape(height: int, width: int, max_size: int, longest: bool) -> tuple[int, int]:
    """Output (height, width) of albumentations' LongestMaxSize (longest=True) or SmallestMaxSize.

    `geometric/functional.py: _func_max_size`: scale = max_size / max (or min) side; each side
    becomes py3round(side * scale), i.e. round half to even; unchanged when scale is exactly 1.
    """
    scale = max_size / float(max(width, height) if longest else min(width, height))
    if scale == 1.0:
        return height, width
    return round(height * scale), round(width * scale)


def resize(x: np.ndarray, size: tuple[int, int], linear: bool) -> np.ndarray:
    """cv2.resize of x (H, W[, C]) to size (height, width), keeping x's rank and dtype.

    linear: INTER_LINEAR (albumentations' default for images; x must be uint8 or float32),
    else INTER_NEAREST (what albumentations 1.1.0 uses for every mask target: source index
    floor(dst * in / out), not centred). The same size returns x itself, as albumentations does.
    """
    if tuple(size) == x.shape[:2]:
        return x
    if min(size) < 1:
        raise ValueError(f"resize of a {x.shape[:2]} array to {tuple(size)}: the image is too "
                         "elongated for this size")
    out = cv2.resize(x, (size[1], size[0]),
                     interpolation=cv2.INTER_LINEAR if linear else cv2.INTER_NEAREST)
    return out.reshape(tuple(size) + x.shape[2:])  # cv2 drops a trailing channel axis of 1


def pad_bottom_right(x: np.ndarray, height: int, width: int, value) -> np.ndarray:
    """PadIfNeeded(min_height=height, min_width=width, position=TOP_LEFT, BORDER_CONSTANT):
    x (H, W[, C]) at the top-left of a max(H, height) x max(W, width) canvas of `value`."""
    h, w = x.shape[:2]
    if h >= height and w >= width:
        return x
    out = np.full((max(h, height), max(w, width)) + x.shape[2:], value, dtype=x.dtype)
    out[:h, :w] = x
    return out


def crop(x: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """Rows top:top+height, columns left:left+width of x (H, W[, C]), which must hold them."""
    if top + height > x.shape[0] or left + width > x.shape[1]:
        raise ValueError(f"crop of {height}x{width} at ({top}, {left}) is outside a "
                         f"{x.shape[0]}x{x.shape[1]} array")
    return x[top:top + height, left:left + width]


def normalize_image(img: np.ndarray, mean, std, max_pixel_value: float = 255.0) -> np.ndarray:
    """albumentations `Normalize` (functional.py: normalize): float32 (img - mean * max) *
    (1 / (std * max)), every step in float32 as there. img (H, W, C) -> float32 (H, W, C)."""
    mean = np.asarray(mean, np.float32) * np.float32(max_pixel_value)
    denominator = np.reciprocal(np.asarray(std, np.float32) * np.float32(max_pixel_value))
    return (img.astype(np.float32) - mean) * denominator


def to_gray(img: np.ndarray) -> np.ndarray:
    """albumentations `ToGray` (transforms.py: ToGray.apply): uint8 RGB (H, W, 3) -> its luma
    (OpenCV's fixed-point RGB2GRAY) in all three channels; a grey image is returned as it is."""
    if img.ndim == 2 or img.shape[-1] == 1:
        return img
    return cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


@dataclasses.dataclass(frozen=True)
class JitterDraw:
    """One ColorJitter draw: factors (brightness, contrast, saturation, hue) and the order in
    which the four operations run (a permutation of 0..3, indices into the factors)."""
    factors: tuple[float, float, float, float]
    order: tuple[int, int, int, int] = (0, 1, 2, 3)


@dataclasses.dataclass(frozen=True)
class ColorJitter:
    """albumentations 1.1.0 `ColorJitter` with explicit ranges: each factor is uniform in its
    range, the four operations run in a random order, the whole with probability p.

    The official `ColorJitter(brightness=b, ...)` with a number b means the range (1 - b, 1 + b)
    (clipped at 0) for brightness, contrast and saturation, and (-b, b) for hue.
    """
    brightness: tuple[float, float]
    contrast: tuple[float, float]
    saturation: tuple[float, float]
    hue: tuple[float, float]
    p: float = 0.5

    def draw(self, rng: np.random.Generator) -> JitterDraw | None:
        """None (not applied: probability 1 - p), or the factors and the order
        (ColorJitter.get_params)."""
        if rng.random() >= self.p:
            return None
        factors = tuple(float(rng.uniform(*r))
                        for r in (self.brightness, self.contrast, self.saturation, self.hue))
        return JitterDraw(factors, tuple(int(i) for i in rng.permutation(4)))


def color_jitter(img: np.ndarray, draw: JitterDraw) -> np.ndarray:
    """Apply one ColorJitter draw to uint8 img (H, W, 3) or grey (H, W[, 1]): the operations of
    albumentations 1.1.0 functional.py adjust_{brightness,contrast,saturation,hue}_torchvision
    for uint8, in draw.order."""
    if img.dtype != np.uint8:
        raise ValueError(f"color jitter expects a uint8 image, got {img.dtype}")
    rgb = img.ndim == 3 and img.shape[-1] == 3
    for op in draw.order:
        factor = draw.factors[op]
        if op == 0:  # brightness: a lookup table, truncated to uint8 after clipping
            img = np.clip(np.arange(256) * factor, 0, 255).astype(np.uint8)[img]
        elif op == 1:  # contrast: blend with the mean luma, truncated
            mean = (cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if rgb else img).mean()
            lut = np.arange(256) * factor + mean * (1 - factor)
            img = np.clip(lut, 0, 255).astype(np.uint8)[img]
        elif op == 2 and rgb:  # saturation: blend with the grey image, OpenCV rounding
            gray = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
            img = cv2.addWeighted(img, factor, gray, 1 - factor, 0)
        elif op == 3 and rgb and factor != 0:  # hue: shift OpenCV's 0..179 hue by 180 * factor
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            lut = np.mod(np.arange(256, dtype=np.int16) + 180 * factor, 180).astype(np.uint8)
            hsv[..., 0] = lut[hsv[..., 0]]
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return img
