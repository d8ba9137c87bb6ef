"""ImageNet fine-tuning batch mixing and classification losses of the official code.

mixup_batch: `utils/mixup.py: Mixup` (mode 'batch') as `run_finetuning_cls.py` builds it, applied
to a small NCHW batch, its np.random draws scripted and recorded: Mixup, CutMix with the box inside
the image, on a non-square image, clipped at a corner (the lam correction), with cutmix_minmax, a
missed `prob` (smoothing only) and the per-GPU mixing of two GPUs. cls_losses: the three criteria of
`run_finetuning_cls.py: main` (`utils/cross_entropy.py: SoftTargetCrossEntropy,
LabelSmoothingCrossEntropy`, torch.nn.CrossEntropyLoss), values and gradients, and
`utils/metrics.py: accuracy(topk=(1, 5))` for 10 and for 3 classes.
"""

from __future__ import annotations

import importlib

import numpy as np
import torch

from common import Fixture, trim_mantissa

NUM_CLASSES = 5
# run_finetuning_cls.py defaults: --mixup 0.8 --cutmix 1.0 --mixup_prob 1.0
# --mixup_switch_prob 0.5 --mixup_mode batch --smoothing 0.1
RECIPE = dict(mixup_alpha=0.8, cutmix_alpha=1.0, cutmix_minmax=None, prob=1.0, switch_prob=0.5,
              mode="batch", label_smoothing=0.1, num_classes=NUM_CLASSES)

# case -> (Mixup options that differ from RECIPE, image (H, W), scripted np.random values in call
# order: ('rand', value), ('beta', value), ('randint', value); groups: slices mixed separately).
MIXUP_CASES = {
    # rand < prob: mix; rand 0.7 >= switch_prob: Mixup; lam 0.3
    "mixup": ({}, (16, 16), [("rand", 0.2), ("rand", 0.7), ("beta", 0.3)], 1),
    # CutMix, lam 0.6: cut 10 x 10 (int(16 sqrt(0.4))), centre (6, 8): rows 1:11, cols 3:13,
    # odd side -> 100 px, lam corrected to 1 - 100 / 256
    "cutmix_inside": ({}, (16, 16), [("rand", 0.2), ("rand", 0.1), ("beta", 0.6),
                                     ("randint", 6), ("randint", 8)], 1),
    # H != W, lam 0.5: cut 7 x 11, centre (4, 11): rows 1:7, cols 6:16 (clipped at the right)
    "cutmix_rect": ({}, (10, 16), [("rand", 0.4), ("rand", 0.3), ("beta", 0.5),
                                   ("randint", 4), ("randint", 11)], 1),
    # lam 0.4: cut 12 x 12 centred at (2, 14), clipped to rows 0:8, cols 8:16: lam 0.75
    "cutmix_corner": ({}, (16, 16), [("rand", 0.2), ("rand", 0.1), ("beta", 0.4),
                                     ("randint", 2), ("randint", 14)], 1),
    # cutmix_minmax (0.3, 0.8): sides randint(4, 12) = 9, 6; corner randint(0, 7) = 3,
    # randint(0, 10) = 8 -> rows 3:12, cols 8:14; the Beta draw (alpha forced to 1) is unused
    "cutmix_minmax": ({"cutmix_minmax": [0.3, 0.8]}, (16, 16),
                      [("rand", 0.2), ("rand", 0.1), ("beta", 0.5), ("randint", 9),
                       ("randint", 6), ("randint", 3), ("randint", 8)], 1),
    # prob 0.5, rand 0.7: not mixed, lam 1, targets only smoothed
    "prob_miss": ({"prob": 0.5}, (16, 16), [("rand", 0.7)], 1),
    # two GPUs, each mixing its half of the batch (the same scripted CutMix draw on each)
    "groups2": ({}, (16, 16), [("rand", 0.2), ("rand", 0.1), ("beta", 0.6), ("randint", 6),
                               ("randint", 8)] * 2, 2),
}

MIXUP_WHAT = (
    "Layouts NCHW. x/<H>x<W>: float32 (4, 3, H, W) inputs (random uint8 pixels / 255, normalised "
    f"with the ImageNet mean and std), labels: int64 (4,), classes 0..{NUM_CLASSES - 1}; "
    f"<case>/x_mixed, <case>/targets (4, {NUM_CLASSES}): what utils/mixup.py: "
    "Mixup(**options)(x, labels) returns for the case's input x; <case>/lam: the lam the "
    "official _mix_batch returned (corrected for CutMix; one per group); <case>/box: (yl, yh, "
    "xl, xh) per group that cutmix_bbox_and_lam returned (absent when not CutMix). Meta: per "
    "case the Mixup options, its input's key, the np.random calls (function, arguments, the "
    "scripted value returned) in call order, groups (the batch split into that many equal "
    "slices, each given to Mixup separately, as that many GPUs would).")


class _ScriptedRandom:
    """Stands in for np.random.rand / beta / randint while the official Mixup runs: returns the
    scripted values in order, checks the function called, and records its arguments."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = []

    def _next(self, name, *args, **kwargs):
        if not self.script:
            raise AssertionError(f"unscripted np.random.{name}{args}")
        want, value = self.script.pop(0)
        if want != name:
            raise AssertionError(f"np.random.{name}{args} called where {want} was scripted")
        if kwargs.get("size") is not None:
            raise AssertionError(f"np.random.{name} with size={kwargs['size']}: not mode 'batch'")
        self.calls.append([name, [float(a) for a in args], value])
        return value

    def __enter__(self):
        self.saved = {n: getattr(np.random, n) for n in ("rand", "beta", "randint")}
        np.random.rand = lambda *a, **k: self._next("rand", *a, **k)
        np.random.beta = lambda *a, **k: self._next("beta", *a, **k)
        np.random.randint = lambda *a, **k: self._next("randint", *a, **k)
        return self

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(np.random, n, f)
        return False


def _normalised_pixels(rng, shape):
    """Random uint8 pixels normalised with the ImageNet mean and std, as the batches Mixup gets
    (256 values per channel: the fixture compresses well)."""
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    pixels = rng.integers(0, 256, shape).astype(np.float32) / np.float32(255.0)
    return ((pixels - mean) / std).astype(np.float32)


def mixup_batch(off, seed=21) -> Fixture:
    del off  # the official utils package is registered by official_code.load
    mixup = importlib.import_module("utils.mixup")
    rng = np.random.default_rng(seed)
    labels = np.array([3, 0, 4, 1])
    arrays, meta_cases = {"labels": labels}, {}
    bbox_and_lam = mixup.cutmix_bbox_and_lam
    for case, (options, (h, w), script, groups) in MIXUP_CASES.items():
        x_key = f"x/{h}x{w}"  # one input per image size: the fixture stays small
        if x_key not in arrays:
            arrays[x_key] = _normalised_pixels(rng, (4, 3, h, w))
        x = arrays[x_key]
        boxes, lams = [], []

        def recording_bbox(*args, **kwargs):
            (yl, yh, xl, xh), lam = bbox_and_lam(*args, **kwargs)
            boxes.append([int(yl), int(yh), int(xl), int(xh)])
            return (yl, yh, xl, xh), lam

        mixup.cutmix_bbox_and_lam = recording_bbox
        try:
            mix = mixup.Mixup(**{**RECIPE, **options})
            mix_batch = mix._mix_batch

            def recording_mix_batch(xt):
                lams.append(float(mix_batch(xt)))
                return lams[-1]

            mix._mix_batch = recording_mix_batch
            outs = []
            with _ScriptedRandom(script) as scripted:
                for xs, ys in zip(np.split(x, groups), np.split(labels, groups)):
                    out_x, out_t = mix(torch.from_numpy(xs.copy()), torch.from_numpy(ys))
                    outs.append((out_x.numpy(), out_t.numpy()))
            if scripted.script:
                raise AssertionError(f"{case}: scripted draws left unused: {scripted.script}")
        finally:
            mixup.cutmix_bbox_and_lam = bbox_and_lam
        arrays.update({f"{case}/x_mixed": np.concatenate([o[0] for o in outs]),
                       f"{case}/targets": np.concatenate([o[1] for o in outs]),
                       f"{case}/lam": np.array(lams)})
        if boxes:
            arrays[f"{case}/box"] = np.array(boxes, np.int64)
        meta_cases[case] = {"options": options, "input": x_key, "groups": groups,
                            "np_random_calls": scripted.calls}
    meta = {"what": MIXUP_WHAT, "recipe": RECIPE, "cases": meta_cases}
    return Fixture("mixup_batch", arrays, meta)



LOSSES_WHAT = (
    "logits (B, C) float32, labels (B,) int64, soft_targets (B, C) = utils/mixup.py: "
    "mixup_target(labels, C, lam=0.3, smoothing=0.1). <loss> / <loss>_grad (d loss / d logits) "
    "for soft_ce = SoftTargetCrossEntropy()(logits, soft_targets), ls_ce = "
    "LabelSmoothingCrossEntropy(smoothing=0.1)(logits, labels), ce = torch.nn.CrossEntropyLoss()("
    "logits, labels): the three criteria of run_finetuning_cls.py (Mixup on / smoothing > 0 / "
    "neither). acc<C>/logits (B, C), /labels (B,), /acc1, /acc5 = utils/metrics.py: accuracy("
    "logits, labels, topk=(1, 5)) (percent of B) for C = 10 and C = 3 (the official clamps k to "
    "C: acc5 of 3 classes is top-3, 100 %); labels are chosen at given ranks of their logits.")
ACC_RANKS = (0, 0, 1, 2, 4, 5, 7, 9)  # rank of each sample's label among its logits (0 = top-1)


def _loss_and_grad(criterion, logits, target):
    lt = torch.from_numpy(logits.copy()).requires_grad_(True)
    loss = criterion(lt, torch.from_numpy(target))
    loss.backward()
    return loss.detach().numpy(), lt.grad.numpy()


def cls_losses(off, seed=22) -> Fixture:
    del off  # the official utils package is registered by official_code.load
    mixup = importlib.import_module("utils.mixup")
    cross_entropy = importlib.import_module("utils.cross_entropy")
    metrics = importlib.import_module("utils.metrics")
    rng = np.random.default_rng(seed)
    b, c = 6, 10
    logits = trim_mantissa(2.0 * rng.standard_normal((b, c)).astype(np.float32))
    labels = rng.integers(0, c, b)
    soft = mixup.mixup_target(torch.from_numpy(labels), c, lam=0.3, smoothing=0.1,
                              device="cpu").numpy()
    arrays = {"logits": logits, "labels": labels, "soft_targets": soft}
    for name, criterion, target in (
            ("soft_ce", cross_entropy.SoftTargetCrossEntropy(), soft),
            ("ls_ce", cross_entropy.LabelSmoothingCrossEntropy(smoothing=0.1), labels),
            ("ce", torch.nn.CrossEntropyLoss(), labels)):
        arrays[name], arrays[f"{name}_grad"] = _loss_and_grad(criterion, logits, target)
    for classes in (10, 3):
        acc_logits = rng.standard_normal((len(ACC_RANKS), classes)).astype(np.float32)
        acc_logits = trim_mantissa(acc_logits)
        order = np.argsort(-acc_logits, axis=1)
        acc_labels = np.array([order[i, min(r, classes - 1)] for i, r in enumerate(ACC_RANKS)])
        acc1, acc5 = metrics.accuracy(torch.from_numpy(acc_logits), torch.from_numpy(acc_labels),
                                      topk=(1, 5))
        arrays.update({f"acc{classes}/logits": acc_logits, f"acc{classes}/labels": acc_labels,
                       f"acc{classes}/acc1": acc1.numpy(), f"acc{classes}/acc5": acc5.numpy()})
    return Fixture("cls_losses", arrays, {"what": LOSSES_WHAT, "smoothing": 0.1, "lam": 0.3})
