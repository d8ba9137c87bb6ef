"""Masked reconstruction losses (`multimae/criterion.py: MaskedMSELoss`, `MaskedL1Loss`,
`MaskedCrossEntropyLoss`), NHWC, reduced as the official criteria; the fine-tuning losses
(`dense_*`, at the end) are reduced over valid pixels instead.

The official reduction: per-pixel loss averaged over channels, then per sample the mean over the
pixels of masked patches, then the mean over the samples that have any masked patch; 0 when
nothing in the batch is masked. `mask` is (B, N) with 1 = masked; None averages over everything.
Working per patch is exact here because a patch's pixels share one mask value.
"""
import jax
import jax.numpy as jnp

from multimae_jax.modalities import resolve


def _patch_means(pixel_loss: jax.Array, s: int) -> jax.Array:
    """(B, H, W) -> (B, (H/s) * (W/s)) mean loss of each s x s patch, row-major."""
    b, h, w = pixel_loss.shape
    return pixel_loss.reshape(b, h // s, s, w // s, s).mean(axis=(2, 4)).reshape(b, -1)


def reduce_masked(pixel_loss: jax.Array, mask: jax.Array | None, s: int) -> jax.Array:
    """Official reduction of a (B, H, W) loss map with a (B, N) patch mask of patch size s."""
    if mask is None:
        return pixel_loss.mean()
    mask = mask.astype(jnp.float32)
    per_patch = _patch_means(pixel_loss, s)
    if per_patch.shape != mask.shape:
        raise ValueError(f"mask shape {mask.shape} does not match the {per_patch.shape[1]} "
                         f"patches of a {pixel_loss.shape[1:]} prediction with patch size {s}")
    count = mask.sum(axis=1)
    per_sample = (per_patch * mask).sum(axis=1) / jnp.maximum(count, 1.0)
    has_masked = (count > 0).astype(jnp.float32)
    return (per_sample * has_masked).sum() / jnp.maximum(has_masked.sum(), 1.0)


def normalize_patches(target: jax.Array, s: int, eps: float = 1e-6) -> jax.Array:
    """norm_pix targets: each s x s patch standardised by its mean and *unbiased* variance over
    all its pixels and channels. (B, H, W, C) -> same shape."""
    b, h, w, c = target.shape
    p = target.reshape(b, h // s, s, w // s, s, c)
    mean = p.mean(axis=(2, 4, 5), keepdims=True)
    var = p.var(axis=(2, 4, 5), keepdims=True, ddof=1)
    return ((p - mean) / jnp.sqrt(var + eps)).reshape(b, h, w, c)


def _patch_size(patch_size: int, stride: int) -> int:
    return max(1, patch_size // stride)


def _masked_regression(error_fn, pred, target, mask, patch_size, stride, norm_pix):
    s = _patch_size(patch_size, stride)
    pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
    if norm_pix:
        target = normalize_patches(target, s)
    return reduce_masked(error_fn(pred - target).mean(axis=-1), mask, s)


def masked_mse(pred, target, mask=None, patch_size: int = 16, stride: int = 1,
               norm_pix: bool = False) -> jax.Array:
    """MaskedMSELoss. pred, target: (B, H, W, C); mask: (B, N) or None."""
    return _masked_regression(jnp.square, pred, target, mask, patch_size, stride, norm_pix)


def masked_l1(pred, target, mask=None, patch_size: int = 16, stride: int = 1,
              norm_pix: bool = False) -> jax.Array:
    """MaskedL1Loss. pred, target: (B, H, W, C); mask: (B, N) or None."""
    return _masked_regression(jnp.abs, pred, target, mask, patch_size, stride, norm_pix)


def _log_probs_nll(logits, labels, ignore_index):
    """fp32 log-probabilities (B, h, w, C), the per-pixel negative log-likelihood of `labels`
    (B, h, w) (an arbitrary finite value where ignored) and the not-ignored mask (B, h, w)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0)
    # a one-hot product, not take_along_axis: the same values, and its gradient is element-wise
    # (take_along_axis differentiates into a scatter-add, atomics on GPUs)
    # (take_along_axis differentiates into a scatter-add, atomics on GPUs); a label out of
    # range gives NaN, as take_along_axis's fill
    classes = logp.shape[-1]
    nll = -jnp.sum(logp * jax.nn.one_hot(safe, classes, dtype=logp.dtype), axis=-1)
    return logp, jnp.where((safe >= 0) & (safe < classes), nll, jnp.nan), valid


def masked_cross_entropy(logits, labels, mask=None, patch_size: int = 16, stride: int = 1,
                         label_smoothing: float = 0.0, ignore_index: int = -100) -> jax.Array:
    """MaskedCrossEntropyLoss. logits (B, h, w, C) at 1/stride resolution, labels (B, h, w) int.

    Pixels labelled `ignore_index` contribute 0 (PyTorch reduction='none'), as in the official code.
    """
    s = _patch_size(patch_size, stride)
    logp, nll, valid = _log_probs_nll(logits, labels, ignore_index)
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(axis=-1)
    return reduce_masked(jnp.where(valid, nll, 0.0), mask, s)


def pretraining_losses(preds: dict, targets: dict, masks: dict, modalities,
                       patch_size: int = 16, loss_on_unmasked: bool = False) -> dict:
    """Loss of every decoder output, as `run_pretraining_multimae.py: train_one_epoch` does.

    preds: {task: decoder output}; targets: {modality: prepared data} (inputs and output-only
    modalities); masks: {input task: (B, N)}; modalities: Modality objects or default names
    covering every predicted task. Each output's target and mask are those of its modality's
    `source` (norm_rgb: the rgb data and mask). An output with no mask (not an encoder input,
    or with `loss_on_unmasked`) is averaged over the whole image. Returns {task: scalar}; their
    plain sum is the official training loss.
    """
    mods = resolve(modalities)
    out = {}
    for task, pred in preds.items():
        if task not in mods:
            raise ValueError(f"no modality given for the prediction '{task}'; have {sorted(mods)}")
        m = mods[task]
        mask = None if loss_on_unmasked else masks.get(m.source)
        target = targets[m.source]
        if m.loss == "cross_entropy":
            out[task] = masked_cross_entropy(pred, target, mask, patch_size, m.stride_level)
        else:
            fn = masked_mse if m.loss == "mse" else masked_l1
            out[task] = fn(pred, target, mask, patch_size, m.stride_level, m.norm_pix)
    return out


# --- Fine-tuning losses: `run_finetuning_depth.py: masked_l1_loss, masked_mse_loss,
# masked_berhu_loss` (the Taskonomy script's masked_l1_loss / masked_mse_loss are the same code)
# and the segmentation criterion of `run_finetuning_semseg.py: main`. Each is a mean over the valid
# elements of the whole batch, so 0 / 0 = NaN when nothing is valid, as in the official code.
# Padded evaluation samples: zero their mask_valid (segmentation: label them ignore_index).


def valid_elements(mask_valid: jax.Array | None, shape: tuple[int, ...]) -> jax.Array:
    """bool (B, H, W, C) of the elements a dense loss counts. mask_valid: bool (B, H, W, 1),
    repeated over the channels as the official `mask_valid.repeat_interleave(C, 1)`, or
    (B, H, W, C); None: every element."""
    if mask_valid is None:
        return jnp.ones(shape, bool)
    if mask_valid.shape[:-1] != tuple(shape[:-1]) or mask_valid.shape[-1] not in (1, shape[-1]):
        raise ValueError(f"mask_valid of shape {mask_valid.shape} does not fit a prediction of "
                         f"shape {tuple(shape)}: expected (B, H, W, 1) or (B, H, W, C)")
    return jnp.broadcast_to(mask_valid.astype(bool), shape)


def dense_sums(error: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of `error` over the `valid` elements, their number); both (B, H, W, C)."""
    # where, not a product: invalid elements get zero gradient and a NaN there stays out, as with
    # the official `loss[~mask_valid] = 0`.
    return jnp.where(valid, error, 0.0).sum(), valid.sum()


def _dense_mean(error, mask_valid):
    total, count = dense_sums(error, valid_elements(mask_valid, error.shape))
    return total / count


def dense_l1(pred, target, mask_valid=None) -> jax.Array:
    """masked_l1_loss: mean |pred - target| over valid elements. pred, target: (B, H, W, C)."""
    return _dense_mean(jnp.abs(pred.astype(jnp.float32) - target), mask_valid)


def dense_mse(pred, target, mask_valid=None) -> jax.Array:
    """masked_mse_loss: mean (pred - target)^2 over valid elements. pred, target: (B, H, W, C)."""
    return _dense_mean(jnp.square(pred.astype(jnp.float32) - target), mask_valid)


def dense_berhu(pred, target, mask_valid=None) -> jax.Array:
    """masked_berhu_loss: reverse Huber over valid elements, (B, H, W, C) inputs.

    d = pred - target, 0 at invalid elements; c = max(0.2 max|d|, 1e-5) over the whole batch,
    without gradient; |d| where |d| < c, else (d^2 + c^2) / (2c); summed, / #valid elements.
    """
    diff = pred.astype(jnp.float32) - target
    valid = valid_elements(mask_valid, diff.shape)
    diff = jnp.where(valid, diff, 0.0)
    c = jax.lax.stop_gradient(jnp.maximum(jnp.abs(diff).max() * 0.2, 1e-5))
    berhu = jnp.where(jnp.abs(diff) < c, jnp.abs(diff), (jnp.square(diff) + c ** 2) / 2.0 / c)
    total, count = dense_sums(berhu, valid)
    return total / count


def dense_cross_entropy(logits, labels, ignore_index: int = 255) -> jax.Array:
    """torch.nn.CrossEntropyLoss(ignore_index=255) at full resolution: the mean negative
    log-likelihood over the pixels not labelled `ignore_index`. logits (B, H, W, C), labels
    (B, H, W) int in [0, C) or ignore_index."""
    _, nll, valid = _log_probs_nll(logits, labels, ignore_index)
    return jnp.where(valid, nll, 0.0).sum() / valid.sum()


# --- Classification losses of `run_finetuning_cls.py: main` (timm's `utils/cross_entropy.py`):
# SoftTargetCrossEntropy with Mixup / CutMix targets (`multimae_jax/mixup.py`), else
# LabelSmoothingCrossEntropy when smoothing > 0, else torch.nn.CrossEntropyLoss (smoothing 0 here).


def soft_target_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """SoftTargetCrossEntropy: mean over samples of sum_c -targets * log_softmax(logits), in fp32.
    logits, targets: (B, C) (targets rows are distributions, e.g. from mixup.mix_batch)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.sum(-targets.astype(jnp.float32) * logp, axis=-1).mean()


def label_smoothing_cross_entropy(logits: jax.Array, labels: jax.Array,
                                  smoothing: float = 0.1) -> jax.Array:
    """LabelSmoothingCrossEntropy(smoothing): mean over samples of (1 - smoothing) * nll +
    smoothing * mean_c(-log_softmax), in fp32; smoothing 0 is torch.nn.CrossEntropyLoss.
    logits (B, C), labels (B,) int in [0, C)."""
    if not smoothing < 1.0:
        raise ValueError(f"label smoothing must be < 1 (the official asserts it), got {smoothing}")
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return ((1.0 - smoothing) * nll - smoothing * logp.mean(axis=-1)).mean()
