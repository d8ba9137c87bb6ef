"""Linear probing of a pre-trained encoder, the MAE protocol (facebookresearch/mae
`main_linprobe.py`; the official MultiMAE code has none): the encoder frozen, its rgb features
pooled, BatchNorm without affine parameters, a linear layer; LARS (momentum 0.9, trust 0.001,
no weight decay), blr 0.1 at batch 16384 (lr 6.4), 90 epochs with 10 of warm-up, MAE's
schedule; RandomResizedCrop and flip, cross-entropy; top-1 / top-5 after resize 256 and centre
crop 224, the best epoch kept.

    python -m multimae_jax.main --config=configs/linear_probe.py:in1k --workdir=W \\
        --config.init=PATH --config.data.path=IMAGENET   # IMAGENET/{train,val}/<wnid>/*.JPEG
    python -m multimae_jax.main --config=configs/linear_probe.py:in1k_tiny --workdir=W \\
        --config.init=PRETRAINING_WORKDIR                # 2-core CPU: the synthetic scenes

Features: head.pool 'mean' (all tokens, the global one included) or 'global' (the global token).
MAE reads its cls token (or the mean of the patch tokens) after the encoder's final LayerNorm;
MultiViT has no final LayerNorm, so the BatchNorm sees the last block's tokens. MAE's BatchNorm
statistics are per GPU; here they are the global batch's, or per slice with head.bn_groups.
The crop is MAE's (util/crop.py: one draw of area and aspect, each side clamped to the image;
augment.crop_draw='mae').

Inputs: rgb by default; any subset of the pre-training modalities with
--config.model.input_tasks='("rgb","depth")' (each input adapter loaded from the checkpoint and
frozen with the encoder). A folder dataset then needs the official pre-training layout
IMAGENET/<split>/<modality>/<class>/<file> (the pseudo-labelled ImageNet); the synthetic scenes
have rgb, depth and semseg.
"""
import ml_collections

from configs import finetune_cls


def get_config(variant: str = "in1k") -> ml_collections.ConfigDict:
    c = finetune_cls.get_config(variant)
    c.objective = "linear_probe"
    # bn_groups: the BatchNorm's statistics per that many equal slices of the batch, the running
    # ones from the first (MAE's per-GPU BatchNorm on 32 GPUs: 32); 1: the global batch's
    c.head = ml_collections.ConfigDict(dict(pool="mean", bn_groups=1))
    c.model.drop_path_rate = 0.0
    c.train.compute_dtype = "float32"
    o = c.optimizer
    o.schedule = "mae"
    o.blr = 0.1
    o.min_lr = 0.0
    o.weight_decay = 0.0
    o.momentum = 0.9
    o.trust_coefficient = 1e-3
    o.warmup_epochs = 10.0
    c.train.epochs = 90
    c.data.global_batch_size = 16384
    c.data.eval_batch_size = 1024
    c.augment.randaugment = ""
    c.augment.crop_draw = "mae"  # util/crop.py: one draw of area and aspect, clamped
    c.mixup.mixup_alpha = 0.0
    c.mixup.cutmix_alpha = 0.0
    c.mixup.label_smoothing = 0.0
    if variant.endswith("_tiny"):
        c.data.global_batch_size = 64
        c.data.eval_batch_size = 64
        o.blr = 6.4 * 256 / c.data.global_batch_size  # MAE's lr 6.4 (LARS scales the steps)
        o.warmup_epochs = 1.0
        c.train.epochs = 10
    return c
