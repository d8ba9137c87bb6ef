"""HOST (numpy) per-task preprocessing of Taskonomy, as the official loader does it
(utils/taskonomy/transforms.py: task_transform, with utils/taskonomy/task_configs.py).

There is no augmentation. Each file is first resized as the PIL image it was loaded as
(torchvision Resize(image_size): the smaller edge to image_size; BILINEAR for rgb, NEAREST for
everything else), then made float32 in [0, 1] (8-bit / 255, 16-bit / 65535), optionally clamped
and rescaled, blurred or normalised. The validity mask is resized the same way and its invalid
areas dilated to whole 4x4 blocks (`valid_mask`).

PIL facts used (see transforms.py and pil_resample.py): the official Pillow (<= 10.2) opened
16-bit PNGs as mode 'I', whose NEAREST resize accumulates the source coordinate like 8-bit
modes (`transforms.nearest_index(per_pixel=False)`); Pillow 13 may run a bilinear resize's
vertical pass first, so the two passes are run here as two single-axis resizes, horizontal
first, which every Pillow computes as the official one did.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from multimae_jax.data.transforms import nearest_index
from multimae_jax.modalities import IMAGENET_MEAN, IMAGENET_STD


@dataclasses.dataclass(frozen=True)
class TaskonomyTask:
    """How one Taskonomy domain's file becomes a float32 array.

    bilinear: resize filter (else NEAREST); max_value: stored range -> [0, 1] (255 or 65535);
    channels: keep the first ones (transform_8bit_n_channel); clamp_max: task_configs
    'clamp_to' (0, clamp_max), then / clamp_max; blur_sigma: torchvision GaussianBlur(3, sigma);
    mean, std: a final torchvision Normalize.
    """
    bilinear: bool = False
    max_value: float = 255.0
    channels: int | None = None
    clamp_max: float | None = None
    blur_sigma: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


_16BIT = 2.0 ** 16 - 1.0
# utils/taskonomy/transforms.py: task_transform, per task (the 8 transfer tasks and the input).
TASKONOMY_TASKS = {
    "rgb": TaskonomyTask(bilinear=True, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "normal": TaskonomyTask(),
    "principal_curvature": TaskonomyTask(channels=2),
    "reshading": TaskonomyTask(channels=1),
    "depth_zbuffer": TaskonomyTask(max_value=_16BIT, clamp_max=8000.0 / _16BIT),
    "depth_euclidean": TaskonomyTask(max_value=_16BIT, clamp_max=8000.0 / _16BIT),
    "edge_texture": TaskonomyTask(max_value=_16BIT, clamp_max=0.25),
    "edge_occlusion": TaskonomyTask(max_value=_16BIT, blur_sigma=1.0),
    "keypoints2d": TaskonomyTask(max_value=_16BIT),
    "keypoints3d": TaskonomyTask(max_value=_16BIT),
}


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision Resize(size) with an int: the smaller edge becomes size, the other
    int(size * long / short) (`_compute_resized_output_size`)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def _resize(x: np.ndarray, size: tuple[int, int], bilinear: bool) -> np.ndarray:
    """PIL resize of x (H, W[, C]) to size (height, width) as the official Pillow computed it."""
    (h, w), (oh, ow) = x.shape[:2], size
    if not bilinear:
        return x[nearest_index(h, oh, per_pixel=False)][:, nearest_index(w, ow, per_pixel=False)]
    if x.dtype != np.uint8:
        raise ValueError(f"bilinear resize expects a uint8 image, got {x.dtype}")
    img = Image.fromarray(x)
    img = img.resize((ow, h), Image.BILINEAR).resize((ow, oh), Image.BILINEAR)
    return np.asarray(img).reshape(size + x.shape[2:])


def _blur3(x: np.ndarray, sigma: float) -> np.ndarray:
    """torchvision GaussianBlur(3, sigma) of float32 x (H, W, C): the float32 kernel of
    `_get_gaussian_kernel1d` (outer product), reflect padding, summed in float64."""
    pdf = np.exp(np.float32(-0.5) * (np.array([-1, 0, 1], np.float32) / np.float32(sigma)) ** 2)
    k1 = pdf / pdf.sum(dtype=np.float32)
    kernel = (k1[:, None] * k1[None, :]).astype(np.float64)
    h, w = x.shape[:2]
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="reflect")
    out = sum(kernel[i, j] * padded[i:i + h, j:j + w] for i in range(3) for j in range(3))
    return out.astype(np.float32)


def resize_as_loaded(x: np.ndarray, task: TaskonomyTask, image_size: int = 384) -> np.ndarray:
    """The first step of `preprocess_taskonomy` alone: x as stored (H, W[, C]) resized as the
    official PIL image was, to resized_shape(H, W, image_size); dtype kept (an rgb input stays
    uint8, normalised later on the device)."""
    return _resize(x, resized_shape(*x.shape[:2], image_size), task.bilinear)


def preprocess_taskonomy(x: np.ndarray, task: TaskonomyTask, image_size: int = 384) -> np.ndarray:
    """One Taskonomy file's array as the official task_transform returns it, channels last.

    x: as stored, uint8 (H, W[, C]) for 8-bit PNGs or uint16 (H, W) for 16-bit ones.
    Returns float32 (h, w, C') with (h, w) = resized_shape(H, W, image_size).
    """
    x = resize_as_loaded(x, task, image_size)
    x = x.reshape(x.shape[:2] + (-1,)).astype(np.float32) / np.float32(task.max_value)
    if task.channels is not None:
        x = x[..., :task.channels]
    if task.clamp_max is not None:
        top = np.float32(task.clamp_max)
        x = np.clip(x, np.float32(0), top) / top
    if task.blur_sigma is not None:
        x = _blur3(x, task.blur_sigma)
    if task.mean is not None:
        x = (x - np.asarray(task.mean, np.float32)) / np.asarray(task.std, np.float32)
    return np.ascontiguousarray(x)


def valid_mask(mask: np.ndarray, image_size: int = 384, pool: int = 4) -> np.ndarray:
    """The Taskonomy validity mask: task_transform('mask_valid') = Resize(NEAREST) -> ToTensor
    -> make_valid_mask(max_pool_size=pool).

    mask: uint8 (H, W[, 1]), 255 = valid. After the resize to (h, w), a pixel is valid when
    every pixel of its pool x pool block (max_pool2d, stride pool) is 255; blocks map back with
    torch's nearest upsampling (index floor(i * float32(blocks / h))). Returns bool (h, w, 1).
    """
    m = _resize(mask.reshape(mask.shape[:2]), resized_shape(*mask.shape[:2], image_size), False)
    h, w = m.shape
    bh, bw = h // pool, w // pool
    blocks = (m[:bh * pool, :bw * pool] == 255).reshape(bh, pool, bw, pool).all(axis=(1, 3))

    def up(n_out: int, n_in: int) -> np.ndarray:
        scale = np.float32(n_in) / np.float32(n_out)
        idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
        return np.minimum(idx, n_in - 1)

    return blocks[up(h, bh)][:, up(w, bw)][..., None]
