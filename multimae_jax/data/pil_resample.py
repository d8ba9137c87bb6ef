"""PIL's BICUBIC `Image.resize` reproduced bit-exactly in numpy, whatever Pillow is installed.

The official pre-training augmentation (utils/datasets.py: DataAugmentationForMultiMAE.__call__)
crops every modality and calls `img.resize((224, 224))` with PIL's default filter, BICUBIC, on the
8-bit RGB image and on the 16-bit depth PNG. What that computes depends on the Pillow (source
read for 8.4, 9.5, 11.0-13.0; run on 9.5, 10.2, 10.4, 11.3, 12.1 and 13.0):

* uint8 images ('L', 'RGB'): fixed-point taps, the same in Pillow 8.4-12.x: `resize_bicubic_uint8`.
  Pillow 13 runs the vertical pass first when the height loses more than twice as many pixels
  as the width, which changes the intermediate rounding (up to 5 levels on photos, 20 on noise).
* 16-bit depth PNG: Pillow <= 10.2 opens it as a 32-bit 'I' image, resized in double precision
  and rounded to int32 without clipping (values may leave 0..65535): `resize_bicubic_int32`.
  That is what the official code (2022, Pillow 9.x) computed. Pillow 10.3-10.4 open it as
  'I;16', for which their default filter is NEAREST. Pillow 11-12 resize 'I;16' bicubically but
  store each pass as uint16 with an overflow quirk (0xFF00 + value % 256); Pillow 13 clips to
  0..65535 instead and may run the vertical pass first.

The algorithm (libImaging/Resample.c: precompute_coeffs, ImagingResampleInner and the
Horizontal/Vertical passes): per output position along an axis, a window of input positions
with Keys-cubic (a = -0.5) weights, stretched by the downscale factor, normalised to sum 1.
A horizontal pass over the rows that the vertical pass will read, then a vertical pass; a pass
is skipped when its axis keeps its size. Each pass rounds (and for 8 bits clips) its output.
Float arithmetic is replayed in the C order, so results are bit-identical to Pillow's x86-64
builds (a build that fused multiply-adds could move the last bit of a double sum).
"""
from __future__ import annotations

import functools

import numpy as np

_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point fraction bits for 8-bit images


def _keys_cubic(t: np.ndarray) -> np.ndarray:
    """Pillow's bicubic_filter (a = -0.5) of float64 t, each branch in the C evaluation order."""
    t = np.abs(t)
    near = (1.5 * t - 2.5) * t * t + 1
    far = (((t - 5) * t + 8) * t - 4) * -0.5
    return np.where(t < 1.0, near, np.where(t < 2.0, far, 0.0))


@functools.lru_cache(maxsize=512)  # crops repeat sizes; each entry is ~40 KB
def _coefficients(n_in: int, n_out: int, start: float = 0.0, length: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Taps of one axis, as Pillow's precompute_coeffs for the box (start, start + length),
    by default (0, n_in); the taps stay inside [0, n_in).

    Returns (read-only) index (n_out, K) int64, the input positions each output reads, left to
    right (taps past an output's window repeat its last position); weight (n_out, K) float64,
    normalised, 0.0 past the window; fixed (n_out, K) int32, the 8-bit fixed-point weights.
    """
    scale = (n_in if length is None else length) / n_out
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    center = start + (np.arange(n_out) + 0.5) * scale
    # C's (int) truncates toward zero, as astype does; negatives are clamped to 0 anyway.
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)
    count = np.minimum((center + support + 0.5).astype(np.int64), n_in) - first
    k = np.arange(count.max())  # Pillow pads to ceil(support) * 2 + 1 taps with zeros
    inside = k[None, :] < count[:, None]
    t = ((first[:, None] + k[None, :]).astype(np.float64) - center[:, None] + 0.5) * (
        1.0 / filterscale)
    weight = np.where(inside, _keys_cubic(t), 0.0)
    total = np.zeros(n_out)
    for col in weight.T:  # the C sums the window left to right; np.sum would pair terms
        total = total + col
    weight = weight / total[:, None]  # > 0: the tap nearest the centre weighs >= 0.5625
    index = first[:, None] + np.minimum(k[None, :], count[:, None] - 1)
    # Pillow's normalize_coeffs_8bpc: round half away from zero, 22 fraction bits.
    scaled = weight * (1 << _PRECISION_BITS)
    fixed = np.trunc(np.where(weight < 0, scaled - 0.5, scaled + 0.5)).astype(np.int32)
    for a in (index, weight, fixed):
        a.flags.writeable = False
    return index, weight, fixed


def _pass(src: np.ndarray, index: np.ndarray, weight: np.ndarray, acc_dtype) -> np.ndarray:
    """Resample axis 1 of src (P, N, M) with taps index/weight (n_out, K) -> (P, n_out, M).

    Tap by tap, products added to an acc_dtype accumulator: for float64 this is the C's
    left-to-right double sum (padded taps add exactly 0); int32 sums are exact in any order.
    Gathering whole rows of M keeps every numpy operation contiguous.
    """
    shape = (src.shape[0], index.shape[0], src.shape[2])
    acc, taps = np.empty(shape, acc_dtype), np.empty(shape, src.dtype)
    term = taps if src.dtype == acc_dtype else np.empty(shape, acc_dtype)  # fewer big buffers
    for k in range(index.shape[1]):
        # mode='clip' (indices are in range anyway): with out=, the default mode buffers a copy
        np.take(src, index[:, k], axis=1, out=taps, mode="clip")
        np.multiply(taps, weight[None, :, k, None], out=acc if k == 0 else term)
        if k:
            acc += term
    return acc


def _resize(x: np.ndarray, size: tuple[int, int], run_pass, box=None) -> np.ndarray:
    """ImagingResampleInner: x (H, W, C) -> (size[0], size[1], C).

    run_pass(src (P, N, M), index, weight, fixed) -> (P, n_out, M), resampling axis 1.
    box: (top, left, height, width), floats, the region resized (Pillow's `resize(size,
    box=(left, top, left + width, top + height))`; the filter may read pixels around it);
    None: the whole image.
    """
    out_h, out_w = size
    if out_h < 1 or out_w < 1:
        raise ValueError(f"resize target size must be positive, got {size}")
    in_h, in_w = x.shape[:2]
    top, left, height, width = (0.0, 0.0, float(in_h), float(in_w)) if box is None else box
    index_v, weight_v, fixed_v = _coefficients(in_h, out_h, top, height)
    planes = x.transpose(2, 0, 1)  # (C, H, W)
    # Pillow skips a pass whose axis keeps its size and its whole extent
    if (out_w, left, width) != (in_w, 0, in_w):
        # Only the rows the vertical pass reads are resampled horizontally.
        first, last = index_v[0, 0], index_v[-1, -1] + 1
        index_v = index_v - first
        cols = np.ascontiguousarray(planes[:, first:last].transpose(0, 2, 1))  # (C, W, rows)
        cols = run_pass(cols, *_coefficients(in_w, out_w, left, width))
        planes = cols.transpose(0, 2, 1)
    if (out_h, top, height) != (in_h, 0, in_h):
        planes = run_pass(np.ascontiguousarray(planes), index_v, weight_v, fixed_v)
    return np.ascontiguousarray(planes.transpose(1, 2, 0))


def resize_bicubic_uint8(x: np.ndarray, size: tuple[int, int], box=None) -> np.ndarray:
    """PIL `Image.fromarray(x).resize((size[1], size[0]), Image.BICUBIC)` for 8-bit images, as
    Pillow 8.4-12.x compute it.

    x: uint8 (H, W) or (H, W, C); channels are resampled independently, as in PIL's 'L' and
    'RGB' modes (PIL premultiplies alpha for 'LA'/'RGBA'; this does not). size: (height, width).
    box: (top, left, height, width) of x to resize, floats (PIL's `box` argument); None: all.
    Returns uint8 of the same rank, (height, width[, C]).
    """
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 (H, W) or (H, W, C) image, got {x.dtype} {x.shape}")

    def run_pass(src, index, weight, fixed):
        """Pillow's 8-bit pass: fixed-point sum plus half, >> 22, clipped to 0..255."""
        acc = _pass(src, index, fixed, np.int32)
        acc += 1 << (_PRECISION_BITS - 1)
        acc >>= _PRECISION_BITS
        return np.clip(acc, 0, 255).astype(np.uint8)

    out = _resize(x.reshape(x.shape[:2] + (-1,)), size, run_pass, box)
    return out.reshape(tuple(size) + x.shape[2:])


def resize_bicubic_int32(x: np.ndarray, size: tuple[int, int], box=None) -> np.ndarray:
    """PIL BICUBIC resize of a mode 'I' image: the official depth path.

    Pillow <= 10.2 opened the 16-bit depth PNG as mode 'I'; this equals
    `Image.fromarray(x.astype(np.int32), 'I').resize((size[1], size[0]), Image.BICUBIC)` of
    Pillow 8.4-12.x. x: integer (H, W) (uint16 depth, or int32). size: (height, width).
    box: as in `resize_bicubic_uint8`.
    Returns int32 (height, width), rounded half away from zero and NOT clipped: the cubic
    overshoot at edges leaves 0..65535 (the official code divides by 2**16 as it is).
    """
    x = np.asarray(x)
    if not np.can_cast(x.dtype, np.int32):
        raise ValueError(f"expected an int32 or narrower integer (H, W) image, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"expected a single-channel (H, W) image, got shape {x.shape}")

    def run_pass(src, index, weight, fixed):
        """Pillow's 'I' pass: double sum, ROUND_UP, stored as int32 without clipping."""
        # float64 taps (exact) multiply faster than mixed int32 * float64
        acc = _pass(src.astype(np.float64), index, weight, np.float64)
        # Pillow's ROUND_UP: +-0.5 by the sign (-0.0 gets -0.5 instead of +0.5: still 0), then
        # C's truncating (int) cast.
        acc += np.copysign(0.5, acc)
        return acc.astype(np.int32)

    out = _resize(x[..., None], size, run_pass, box)
    return out[..., 0].astype(np.int32)  # int32 also when no pass ran

