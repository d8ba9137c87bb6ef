"""NYUv2 depth fine-tuning (official `run_finetuning_depth.py` with
`cfgs/finetune/depth/ft_nyu_2000e_multimae-b.yaml`): a MultiViT-B on rgb from a pre-trained
MultiMAE, DPT head (hooks 2, 5, 8, 11) regressing depth standardised with the NYU mean and std,
berHu loss on the valid pixels (mask_valid, 255 = valid), AdamW lr 1e-4 (not scaled by the
batch), weight decay 1e-4, layer decay 0.75, no drop path, 100 warm-up epochs of 2000, global
batch 128 (64 x 2 GPUs), input 256, float32 as the official run (autocast off).

    python -m multimae_jax.main --config=configs/finetune_depth.py:nyu --workdir=W \\
        --config.init=PATH --config.data.path=DIR     # DIR/<split>/{rgb,depth,mask_valid}/...
    python -m multimae_jax.main --config=configs/finetune_depth.py:nyu --workdir=W \
        --config.init=PATH --config.data.path=tfds:nyu_depth_v2 --config.data.val_split=validation
    python -m multimae_jax.main --config=configs/finetune_depth.py:nyu_tiny --workdir=W
                                                      # 2-core CPU: the embedded synthetic scenes

TFDS's nyu_depth_v2 is FastDepth's version: 47,584 training frames of the raw videos (the
official recipe trains on the 795 labelled ones) and the 654 labelled test images as
'validation' (the official eval split), in another order, so the 100-image subset differs.

Training: SmallestMaxSize 256, flip, colour jitter + ToGray, RandomCrop 256. Evaluation: the
official validation set is a random 100-image subset (numpy seed 0) of the eval split, each
image's central 256 x 256 crop after SmallestMaxSize; `--config.data.max_val_images=-1`
evaluates every image instead. Metrics: delta_1..3, rmse, rel, srel, log10 per batch averaged
over batches (official) and over the whole set (`*_dataset`); the best checkpoint has the
smallest val loss.
"""
import ml_collections

from multimae_jax.train.finetune_config import dpt_head, finetune_config, shrink_to_tiny
from multimae_jax.modalities import NYU_DEPTH_MEAN, NYU_DEPTH_STD

VARIANTS = ("nyu",)
# The synthetic scenes' depth (1/4000 m) over 64 scenes: mean 26266, std 12980.
SYNTHETIC_DEPTH_MEAN, SYNTHETIC_DEPTH_STD = 26000.0, 13000.0


def get_config(variant: str = "nyu") -> ml_collections.ConfigDict:
    tiny = variant.endswith("_tiny")
    if variant.removesuffix("_tiny") not in VARIANTS:
        raise ValueError(f"configs/finetune_depth.py: unknown variant '{variant}' (known: "
                         f"{', '.join(VARIANTS)}, each also with _tiny)")
    # the official eval batch is 1.5 x the per-GPU batch of 64
    c = finetune_config(input_tasks=("rgb",), image_size=256, batch=128, eval_batch=96,
                        epochs=2000, compute_dtype="float32", drop_path=0.0)
    c.head = dpt_head()
    # target.mean / std: the depth standardisation (data) and its inverse (metrics)
    c.target = ml_collections.ConfigDict(dict(
        name="depth", loss="berhu", num_classes=1, mask_valid=True, mean=NYU_DEPTH_MEAN,
        std=NYU_DEPTH_STD))

    c.data.recipe = "depth"
    c.data.mask = "mask_valid"
    c.data.max_val_images = 100
    c.data.color_augs = True
    # --config.data.path=tfds:nyu_depth_v2 --config.data.val_split=validation: TFDS's depth is
    # float metres (0 = unknown), here in the 16-bit units of the official tools/prepare_nyuv2.py
    c.data.tfds_fields.update({"rgb": "image", "mask_valid": "depth"})
    c.data.tfds_scales.depth = 2 ** 16 / 10

    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_epochs = 100.0
    c.train.log_every = 20

    c.evals.val = ml_collections.ConfigDict(dict(type="depth", every_epochs=250))

    if tiny:
        shrink_to_tiny(c)
        c.target.mean, c.target.std = SYNTHETIC_DEPTH_MEAN, SYNTHETIC_DEPTH_STD
    return c
