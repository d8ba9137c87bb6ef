"""Configuration checks of the classification objective (train/classify.py); each error is one
line naming the config field (train/validate.py calls these)."""
import math

from multimae_jax import erasing
from multimae_jax.data import randaugment
from multimae_jax.data.transforms import CROP_DRAWS
from multimae_jax.train.evaluators.knn import POOLS
from multimae_jax.train.step import SCHEDULES

_PROBABILITY = (lambda v: 0 <= v <= 1, "in [0, 1] (a probability)")
CLASSIFY_RANGES = {
    "optimizer.blr": (lambda v: math.isfinite(v) and v > 0, "finite and > 0"),
    "optimizer.layer_decay": (lambda v: 0 < v <= 1, "in (0, 1] (1 = no layer decay)"),
    "data.eval_batch_size": (lambda v: v >= 1, ">= 1"),
    "target.num_classes": (lambda v: v >= 1, ">= 1"),
    "augment.hflip": _PROBABILITY,
    "augment.crop_pct": (lambda v: 0 < v <= 1, "in (0, 1] (the centre crop's share of the "
                                               "resized image)"),
    "mixup.mixup_alpha": (lambda v: math.isfinite(v) and v >= 0, "finite and >= 0 (0 = off)"),
    "mixup.cutmix_alpha": (lambda v: math.isfinite(v) and v >= 0, "finite and >= 0 (0 = off)"),
    "mixup.prob": _PROBABILITY,
    "mixup.switch_prob": _PROBABILITY,
    "mixup.label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "mixup.groups": (lambda v: v >= 1, ">= 1"),
}


def validate_classify(config, error) -> None:
    """The input, the augmentation and mixing fields; `error`: the exception class to raise."""
    c = config
    inputs = tuple(c.model.input_tasks)
    one_rgb = len(inputs) == 1 and c.modalities[inputs[0]].storage == "rgb8"
    if (c.augment.randaugment or c.augment.reprob > 0) and not one_rgb:
        raise error(f"config.model.input_tasks={inputs}: RandAugment and random erasing act on "
                    "one rgb image; set config.augment.randaugment='' and "
                    "config.augment.reprob=0 for other inputs")
    labels = [t for t in inputs if c.modalities[t].kind == "labels"]
    if labels and (c.mixup.mixup_alpha > 0 or c.mixup.cutmix_alpha > 0):
        raise error(f"config.model.input_tasks={inputs}: mixup / cutmix blend images, not the "
                    f"label maps of {labels}; set config.mixup.mixup_alpha=0 and "
                    "config.mixup.cutmix_alpha=0")
    if c.augment.randaugment:
        try:
            randaugment.parse_policy(c.augment.randaugment)
        except ValueError as e:
            raise error(f"config.augment.randaugment={c.augment.randaugment!r}: {e}") from None
    a = c.augment
    reprob, remode, recount = a.reprob, a.remode, a.recount
    if not 0 <= reprob <= 1:
        raise error(f"config.augment.reprob={reprob}: must be in [0, 1] (random erasing's "
                    "probability, 0 = off)")
    if remode not in erasing.MODES:
        raise error(f"config.augment.remode={remode!r}: expected one of {erasing.MODES} "
                    "(random erasing's fill)")
    if isinstance(recount, bool) or not isinstance(recount, int) or recount < 1:
        raise error(f"config.augment.recount={recount!r}: must be an integer >= 1 (random "
                    "erasing's most boxes per image)")
    if reprob > 0 and c.objective == "linear_probe":
        raise error(f"config.augment.reprob={reprob}: linear probing does not erase (set it "
                    "to 0)")
    if a.crop_draw not in CROP_DRAWS:
        raise error(f"config.augment.crop_draw={a.crop_draw!r}: expected one of {CROP_DRAWS}")
    lo, hi = c.augment.scale
    if not 0 < lo <= hi <= 1:
        raise error(f"config.augment.scale={tuple(c.augment.scale)}: expected 0 < min <= max <= 1"
                    " (the crop's share of the image area)")
    o = c.optimizer
    if o.get("schedule", "cosine_scheduler") not in SCHEDULES:
        raise error(f"config.optimizer.schedule={o.schedule!r}: expected one of "
                    f"{sorted(SCHEDULES)}")
    if c.objective == "linear_probe":
        if not 0 <= o.momentum < 1 or not o.trust_coefficient > 0:
            raise error(f"config.optimizer.momentum={o.momentum} must be in [0, 1) and "
                        f"config.optimizer.trust_coefficient={o.trust_coefficient} > 0 (LARS)")
        if c.head.pool not in POOLS:
            raise error(f"config.head.pool={c.head.pool!r}: expected one of {POOLS}")
        micro = c.data.global_batch_size // c.train.grad_accum_steps
        if c.head.bn_groups < 1 or micro % c.head.bn_groups or micro // c.head.bn_groups < 2:
            raise error(f"config.head.bn_groups={c.head.bn_groups}: each micro-batch of {micro} "
                        "must split into that many slices of at least 2 samples (the "
                        "BatchNorm's statistics per slice)")
    m = c.mixup
    if m.mixup_alpha > 0 or m.cutmix_alpha > 0:
        micro = c.data.global_batch_size // c.train.grad_accum_steps
        if micro % m.groups or (micro // m.groups) % 2:
            raise error(f"config.mixup.groups={m.groups}: each micro-batch of {micro} must split "
                        "into that many groups of an even size (mixup pairs sample i with the "
                        "group's reversed order, as the official `x.flip(0)`, which needs an "
                        "even batch)")
