"""Mixup / CutMix of a training batch on the device, as the official ImageNet fine-tuning does it.

`run_finetuning_cls.py` mixes each batch with timm's `utils/mixup.py: Mixup` (mode 'batch', the
only mode here) before the forward pass, and trains on the soft targets with
`SoftTargetCrossEntropy` (`losses.soft_target_cross_entropy`). Per batch:

- with probability `prob` the batch is mixed, else it is left as it is (lam = 1);
- if mixed: with probability `switch_prob` (when both are active) CutMix with lam ~
  Beta(cutmix_alpha, cutmix_alpha), else Mixup with lam ~ Beta(mixup_alpha, mixup_alpha);
- Mixup: x <- lam * x + (1 - lam) * x.flip(0);
- CutMix: a box of side int(H * sqrt(1 - lam)) x int(W * sqrt(1 - lam)) centred at uniform
  random integers (cy, cx), rows cy - cut_h // 2 .. cy + cut_h // 2 (end excluded) and the same for
  columns, clipped to the image, takes the pixels of x.flip(0); lam is then corrected to
  1 - box area / (H W). With `cutmix_minmax` = (lo, hi) the box sides are uniform integers in
  [int(H lo), int(H hi)) (and W), its corner uniform inside the image, and CutMix is active
  whatever `cutmix_alpha` says (the official forces it to 1.0);
- targets: one-hot labels smoothed to off = smoothing / C, on = 1 - smoothing + off, then
  lam * onehot(y) + (1 - lam) * onehot(y.flip(0)).

`draw_mixup` makes the random choices (jax.random, one key per step) and `mix_batch` applies them:
both are pure jnp with static shapes, so they jit and work on a batch sharded over devices.

Difference from the official run: the official code mixes each GPU's local batch with its own
draw (the flip pairs samples within a GPU). Here the default mixes the global batch with one draw
(`groups=1`: sample i is paired with sample B - 1 - i of the whole batch); `groups=G` flips within
G equal slices, as G GPUs would pair their samples, but still with a single lam and box.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

MODES = ("batch", "pair", "elem")


class MixDraw(NamedTuple):
    """One batch's mixing decision (all scalars, a pytree).

    apply: bool, the batch is mixed (np.random.rand() < prob); use_cutmix: bool, CutMix rather
    than Mixup (False when not applied); lam: float32, the Beta draw (1 when not applied);
    y0, y1, x0, x1: int32 CutMix box, rows y0:y1 and columns x0:x1 (all 0 for Mixup);
    lam_corrected: float32, the weight of each sample's own label in the targets, which the
    official `_mix_batch` returns: 1 - box area / (H W) for CutMix, lam for Mixup, 1 unmixed.
    """
    apply: jax.Array
    use_cutmix: jax.Array
    lam: jax.Array
    y0: jax.Array
    y1: jax.Array
    x0: jax.Array
    x1: jax.Array
    lam_corrected: jax.Array


def check_options(*, mixup_alpha: float, cutmix_alpha: float, prob: float, switch_prob: float,
                  image_hw: Sequence[int], mode: str = "batch",
                  cutmix_minmax: Sequence[float] | None = None) -> None:
    """ValueError for settings `draw_mixup` cannot draw faithfully (call it when reading a config).
    """
    if mode != "batch":
        raise ValueError(f"mixup.mode {mode!r} is not supported: only 'batch' (one lam and box per "
                         "batch, the official default) is implemented; 'pair' and 'elem' draw "
                         "per sample")
    if cutmix_minmax is not None:
        if len(cutmix_minmax) != 2:
            raise ValueError(f"mixup.cutmix_minmax must be None or (min, max), got {cutmix_minmax}")
        for size in image_hw:
            lo, hi = int(size * cutmix_minmax[0]), int(size * cutmix_minmax[1])
            if not 0 <= lo < hi <= size:
                raise ValueError(f"mixup.cutmix_minmax {tuple(cutmix_minmax)} gives box sides in "
                                 f"[{lo}, {hi}) for an image side of {size}: need "
                                 f"0 <= min < max <= 1 with int(side * min) < int(side * max)")
    elif not (mixup_alpha > 0 or cutmix_alpha > 0):
        raise ValueError("mixup is inactive (mixup_alpha = cutmix_alpha = 0, cutmix_minmax None): "
                         "the official run then trains without Mixup; do not call draw_mixup")
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixup alphas must be >= 0, got mixup_alpha={mixup_alpha}, "
                         f"cutmix_alpha={cutmix_alpha}")
    for name, p in (("prob", prob), ("switch_prob", switch_prob)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"mixup.{name} must be in [0, 1], got {p}")
    if len(image_hw) != 2 or min(image_hw) < 1:
        raise ValueError(f"image_hw must be (H, W), got {image_hw}")


def draw_mixup(key: jax.Array, *, mixup_alpha: float, cutmix_alpha: float, prob: float,
               switch_prob: float, image_hw: Sequence[int], mode: str = "batch",
               cutmix_minmax: Sequence[float] | None = None) -> MixDraw:
    """The random choices of `Mixup._params_per_batch` and `cutmix_bbox_and_lam` for one batch
    of (H, W) = `image_hw` images. The options are static Python numbers (`check_options`)."""
    check_options(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob,
                  switch_prob=switch_prob, image_hw=image_hw, mode=mode,
                  cutmix_minmax=cutmix_minmax)
    if cutmix_minmax is not None:
        cutmix_alpha = 1.0  # as the official Mixup.__init__
    h, w = (int(s) for s in image_hw)
    k_apply, k_switch, k_lam, k_y, k_x, k_h, k_w = jax.random.split(key, 7)
    apply = jax.random.uniform(k_apply) < prob
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(k_switch) < switch_prob
    else:
        use_cutmix = jnp.asarray(cutmix_alpha > 0)
    alpha = jnp.where(use_cutmix, jnp.float32(cutmix_alpha), jnp.float32(mixup_alpha))
    lam = jnp.where(apply, jax.random.beta(k_lam, alpha, alpha).astype(jnp.float32), 1.0)
    use_cutmix = use_cutmix & apply

    if cutmix_minmax is None:  # rand_bbox
        ratio = jnp.sqrt(1.0 - lam)
        cut_h = jnp.floor(h * ratio).astype(jnp.int32)
        cut_w = jnp.floor(w * ratio).astype(jnp.int32)
        cy = jax.random.randint(k_y, (), 0, h)
        cx = jax.random.randint(k_x, (), 0, w)
        y0, y1 = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h)
        x0, x1 = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w)
    else:  # rand_bbox_minmax
        lo, hi = cutmix_minmax
        cut_h = jax.random.randint(k_h, (), int(h * lo), int(h * hi))
        cut_w = jax.random.randint(k_w, (), int(w * lo), int(w * hi))
        y0 = jax.random.randint(k_y, (), 0, h - cut_h)
        x0 = jax.random.randint(k_x, (), 0, w - cut_w)
        y1, x1 = y0 + cut_h, x0 + cut_w
    y0, y1, x0, x1 = (jnp.where(use_cutmix, v, 0).astype(jnp.int32) for v in (y0, y1, x0, x1))
    area = ((y1 - y0) * (x1 - x0)).astype(jnp.float32)
    lam_corrected = jnp.where(use_cutmix, 1.0 - area / (h * w), lam).astype(jnp.float32)
    return MixDraw(apply, use_cutmix, lam.astype(jnp.float32), y0, y1, x0, x1, lam_corrected)


def _flip_groups(a: jax.Array, groups: int) -> jax.Array:
    """`a` with its leading axis reversed within each of `groups` equal consecutive slices."""
    b = a.shape[0]
    return jnp.flip(a.reshape((groups, b // groups) + a.shape[1:]), axis=1).reshape(a.shape)


def mix_batch(x: jax.Array, labels: jax.Array, draw: MixDraw, num_classes: int,
              smoothing: float, groups: int = 1) -> tuple[jax.Array, jax.Array]:
    """Apply `draw` (from `draw_mixup` for this image size) to a batch, as `Mixup.__call__`.

    x: (B, H, W, C) float images (NHWC; mixed in float32 at least, returned in x's dtype);
    labels: (B,) int classes in [0, num_classes); smoothing: label smoothing of the targets.
    groups: the flip pairs sample i with sample n - 1 - i within each of `groups` equal
    consecutive slices of n = B / groups samples (1: the whole global batch, one pairing and one
    draw for all devices, our default; G: the pairing of G GPUs each mixing its own slice, as the
    official per-GPU Mixup, though still with one lam and box where the official draws one per
    GPU). B must split into `groups` slices of an even size.

    Returns (mixed x (B, H, W, C), soft targets (B, num_classes) float32). An unmixed draw
    (apply False or lam 1) leaves x unchanged and gives the smoothed one-hot targets.
    """
    if x.ndim != 4:
        raise ValueError(f"mix_batch expects (B, H, W, C) images, got shape {x.shape}")
    b = x.shape[0]
    if labels.shape != (b,):
        raise ValueError(f"labels of shape {labels.shape} do not fit a batch of {b}: "
                         f"expected ({b},)")
    if not isinstance(groups, int) or groups < 1 or b % groups or (b // groups) % 2:
        raise ValueError(f"mixup needs a batch that splits into groups={groups} slices of an even "
                         f"size (the official asserts an even batch per GPU); got a batch of {b}")
    h, w = x.shape[1:3]
    active = draw.apply & (draw.lam != 1.0)
    flipped = _flip_groups(x, groups)

    dtype = jnp.promote_types(x.dtype, jnp.float32)
    lam = draw.lam.astype(dtype)
    blended = (x.astype(dtype) * lam + flipped.astype(dtype) * (1.0 - lam)).astype(x.dtype)
    rows = jax.lax.broadcasted_iota(jnp.int32, (h, w), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (h, w), 1)
    in_box = (rows >= draw.y0) & (rows < draw.y1) & (cols >= draw.x0) & (cols < draw.x1)
    cut = active & draw.use_cutmix
    out = jnp.where((cut & in_box)[None, :, :, None], flipped, x)
    out = jnp.where(active & ~draw.use_cutmix, blended, out)

    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    one_hot = jnp.where(labels[:, None] == jnp.arange(num_classes)[None, :],
                        jnp.float32(on), jnp.float32(off))
    target_lam = jnp.where(active, draw.lam_corrected, 1.0).astype(jnp.float32)
    targets = one_hot * target_lam + _flip_groups(one_hot, groups) * (1.0 - target_lam)
    return out, targets
