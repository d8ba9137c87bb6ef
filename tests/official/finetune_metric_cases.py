"""Fine-tuning losses and evaluation metrics of the official scripts, on fixed random arrays.

dense_losses: `run_finetuning_depth.py: masked_l1_loss, masked_mse_loss, masked_berhu_loss` and the
semseg criterion `torch.nn.CrossEntropyLoss(ignore_index=255)` of `run_finetuning_semseg.py: main`,
values and gradients. finetune_metrics: `run_finetuning_semseg.py: compute_metrics_distributed`
(mmseg mIoU), `run_finetuning_depth.py: masked_nyu_metrics` and the Taskonomy validation loss
(`run_finetuning_taskonomy.py: masked_l1_loss`), over several batches, averaged over batches by the
official `utils/logger.py: MetricLogger` as the `evaluate` functions do.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from common import Fixture

IGNORE = 255
SEG_CLASSES = 6  # class 4 never in the ground truth (IoU 0), class 5 never anywhere (NaN)
SEG_SHAPE = (2, 9, 11)
SEG_BATCHES = 3
DEPTH_BATCH_SIZES = (2, 2, 1)  # the official val loader keeps a smaller last batch (no drop_last)
DEPTH_SHAPE = (8, 6)
TASKONOMY_SHAPE = (2, 3, 6, 5)

LOSSES_WHAT = (
    "Layouts NCHW. <case>/pred, /target: float32; <case>/mask: bool mask_valid (absent: None). "
    "<case>/<loss>: official run_finetuning_depth.py masked_l1_loss / masked_mse_loss / "
    "masked_berhu_loss(pred, target, mask_valid=mask); <case>/<loss>_grad: d loss / d pred. Cases: "
    "1ch (1-channel mask), 3ch (1-channel mask repeated over 3 channels), 3ch_mask3 (one mask per "
    "channel), nomask (mask None), tiny (|diff| < 5e-5, so berHu's c is clamped to 1e-5). "
    "ce/logits (B, C, H, W), ce/labels (B, H, W) with 255: ce/loss = torch.nn.CrossEntropyLoss("
    "ignore_index=255) as run_finetuning_semseg.py builds it, ce/grad = d loss / d logits; "
    "ce/loss_all_ignored: the same with every label 255 (NaN).")
METRICS_WHAT = (
    "Layouts NCHW. semseg: logits<i> (B, num_classes + 1 (void), H, W), labels<i> (B, H, W) int64"
    " with 255 (ignore) and num_classes (void) pixels, for batches i = 0..2; pred<i> = logits[:, "
    ":num_classes].argmax(1) as run_finetuning_semseg.py: evaluate does; pixel_accuracy, "
    "mean_accuracy, mean_iou = compute_metrics_distributed(preds, labels, ...) (percent, rounded "
    "to 2 decimals; run in a 1-process gloo group); all_acc, acc, iou = utils/semseg_metrics.py: "
    "mean_iou of the same maps after the void -> 255 mapping; area_* = total_intersect_and_union."
    " depth: batch<i>/pred, /target (B, 1, H, W) normalised with NYU mean/std, /mask bool; "
    "per_batch/<metric> = masked_nyu_metrics of each batch; mean/<metric> = "
    "MetricLogger.global_avg over batches. taskonomy: batch<i>/pred, /target (B, 3, H, W), /mask "
    "(B, 1, H, W); per_batch = run_finetuning_taskonomy.py: masked_l1_loss of each batch, mean = "
    "MetricLogger.global_avg.")


def _tensors(*arrays):
    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]


def _regression_case(off, pred, target, mask) -> dict[str, np.ndarray]:
    depth = off.finetuning_depth
    losses = {"l1": depth.masked_l1_loss, "mse": depth.masked_mse_loss,
              "berhu": depth.masked_berhu_loss}
    out = {"pred": pred, "target": target}
    if mask is not None:
        out["mask"] = mask
    for name, fn in losses.items():
        p, t = _tensors(pred, target)
        p.requires_grad_(True)
        loss = fn(p, t, mask_valid=None if mask is None else torch.from_numpy(mask))
        loss.backward()
        out[name] = loss.detach().numpy()
        out[f"{name}_grad"] = p.grad.numpy()
    return out


def dense_losses(off, seed=11) -> Fixture:
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    def mask(*shape):
        return rng.random(shape) < 0.6

    cases = {
        "1ch": (normal(2, 1, 6, 5), normal(2, 1, 6, 5), mask(2, 1, 6, 5)),
        "3ch": (normal(2, 3, 6, 5), normal(2, 3, 6, 5), mask(2, 1, 6, 5)),
        "3ch_mask3": (normal(2, 3, 6, 5), normal(2, 3, 6, 5), mask(2, 3, 6, 5)),
        "nomask": (normal(2, 3, 6, 5), normal(2, 3, 6, 5), None),
    }
    target = normal(2, 1, 6, 5)
    cases["tiny"] = (target + normal(2, 1, 6, 5, scale=1e-5), target, mask(2, 1, 6, 5))
    arrays = {}
    for name, (pred, tgt, m) in cases.items():
        arrays.update({f"{name}/{k}": v for k, v in _regression_case(off, pred, tgt, m).items()})

    logits = normal(2, 5, 6, 7, scale=2.0)
    labels = rng.integers(0, 5, (2, 6, 7))
    labels[rng.random(labels.shape) < 0.25] = IGNORE
    criterion = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    lt, yt = _tensors(logits, labels)
    lt.requires_grad_(True)
    loss = criterion(lt, yt)
    loss.backward()
    all_ignored = criterion(torch.from_numpy(logits), torch.full_like(yt, IGNORE))
    arrays.update({"ce/logits": logits, "ce/labels": labels, "ce/loss": loss.detach().numpy(),
                   "ce/grad": lt.grad.numpy(), "ce/loss_all_ignored": all_ignored.numpy()})
    return Fixture("dense_losses", arrays, {"what": LOSSES_WHAT, "ignore_index": IGNORE})


def _segmentation(off, rng) -> dict[str, np.ndarray]:
    semseg = off.finetuning_semseg
    arrays, preds, gts = {}, [], []
    for i in range(SEG_BATCHES):
        b, h, w = SEG_SHAPE
        logits = (2.0 * rng.standard_normal((b, SEG_CLASSES + 1, h, w))).astype(np.float32)
        logits[:, 5] -= 100.0  # class 5 is never predicted
        logits[:, SEG_CLASSES] += 1.0  # the void logit often wins: evaluate() must skip it
        labels = rng.choice([0, 1, 2, 3], size=(b, h, w)).astype(np.int64)
        labels[rng.random(labels.shape) < 0.15] = IGNORE
        labels[rng.random(labels.shape) < 0.05] = SEG_CLASSES  # void
        pred = torch.from_numpy(logits)[:, :SEG_CLASSES].argmax(dim=1)  # as evaluate() does
        preds.extend(list(pred.numpy()))
        gts.extend(list(labels.copy()))
        arrays.update({f"semseg/logits{i}": logits, f"semseg/labels{i}": labels,
                       f"semseg/pred{i}": pred.numpy()})
    # compute_metrics_distributed gathers and broadcasts through torch.distributed: one process.
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    with np.errstate(invalid="ignore"):  # class 5's 0 / 0: NaN by design
        try:
            scores = semseg.compute_metrics_distributed(preds, gts, size=len(preds),
                                                        num_classes=SEG_CLASSES, device="cpu",
                                                        dist_on="gpu")
        finally:
            dist.destroy_process_group()
        # `gts` now has void replaced by 255, as mean_iou saw it.
        metrics = off.semseg_metrics
        all_acc, acc, iou = metrics.mean_iou(preds, gts, SEG_CLASSES, IGNORE)
        totals = metrics.total_intersect_and_union(preds, gts, SEG_CLASSES, IGNORE)
    arrays.update({f"semseg/{k}": np.asarray(v.item()) for k, v in scores.items()})
    arrays.update({"semseg/all_acc": np.asarray(all_acc), "semseg/acc": acc, "semseg/iou": iou})
    names = ("area_intersect", "area_union", "area_pred_label", "area_label")
    arrays.update({f"semseg/{k}": v for k, v in zip(names, totals)})
    return arrays


def _logged(off, values: list[dict]) -> tuple[dict, dict]:
    logger = off.logger.MetricLogger(delimiter="  ")
    for v in values:
        logger.update(**v)
    per_batch = {k: np.asarray([float(v[k]) for v in values]) for k in values[0]}
    mean = {k: np.asarray(meter.global_avg) for k, meter in logger.meters.items()}
    return per_batch, mean


def _depth(off, rng) -> dict[str, np.ndarray]:
    arrays, values = {}, []
    for i, b in enumerate(DEPTH_BATCH_SIZES):
        shape = (b, 1) + DEPTH_SHAPE
        target = (0.8 * rng.standard_normal(shape)).astype(np.float32)
        pred = (target + 0.3 * rng.standard_normal(shape)).astype(np.float32)
        pred.reshape(-1)[:2] = -3.0  # below -NYU_MEAN / NYU_STD: negative depth, clamped to 1e-6
        mask = rng.random(shape) < 0.7
        p, t, m = _tensors(pred, target, mask)
        values.append(off.finetuning_depth.masked_nyu_metrics(p, t, mask_valid=m))
        arrays.update({f"depth/batch{i}/pred": pred, f"depth/batch{i}/target": target,
                       f"depth/batch{i}/mask": mask})
    per_batch, mean = _logged(off, values)
    arrays.update({f"depth/per_batch/{k}": v for k, v in per_batch.items()})
    arrays.update({f"depth/mean/{k}": v for k, v in mean.items()})
    return arrays


def _taskonomy(off, rng) -> dict[str, np.ndarray]:
    arrays, values = {}, []
    b, c, h, w = TASKONOMY_SHAPE
    for i in range(3):
        pred = rng.standard_normal((b, c, h, w)).astype(np.float32)
        target = rng.standard_normal((b, c, h, w)).astype(np.float32)
        mask = rng.random((b, 1, h, w)) < 0.6
        p, t, m = _tensors(pred, target, mask)
        values.append({"loss": off.finetuning_taskonomy.masked_l1_loss(p, t, mask_valid=m)})
        arrays.update({f"taskonomy/batch{i}/pred": pred, f"taskonomy/batch{i}/target": target,
                       f"taskonomy/batch{i}/mask": mask})
    per_batch, mean = _logged(off, values)
    arrays.update({"taskonomy/per_batch": per_batch["loss"], "taskonomy/mean": mean["loss"]})
    return arrays


def finetune_metrics(off, seed=12) -> Fixture:
    rng = np.random.default_rng(seed)
    arrays = {**_segmentation(off, rng), **_depth(off, rng), **_taskonomy(off, rng)}
    consts = off.data_constants
    meta = {"what": METRICS_WHAT, "num_classes": SEG_CLASSES, "ignore_index": IGNORE,
            "nyu_mean": consts.NYU_MEAN, "nyu_std": consts.NYU_STD}
    return Fixture("finetune_metrics", arrays, meta)
