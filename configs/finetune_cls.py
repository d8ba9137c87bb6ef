"""ImageNet-1K classification fine-tuning (official `run_finetuning_cls.py` with
cfgs/finetune/cls/ft_in1k_100e_multimae-b.yaml): a MultiViT-B on rgb from a pre-trained
MultiMAE, LinearOutputAdapter on the mean of all tokens, drop path 0.1, AdamW with layer decay
0.65, blr 5e-4 (lr = blr x 1024 / 256), weight decay 0.05, 100 epochs with 5 of warm-up, cosine
to 1e-6; RandomResizedCrop (0.08, 1) bicubic, flip, RandAugment rand-m9-mstd0.5-inc1, mixup
0.8 / cutmix 1.0 (switch 0.5, label smoothing 0.1, soft-target cross-entropy); evaluation:
resize 256 bicubic, centre crop 224, top-1 / top-5; the best epoch by top-1 is kept.

    python -m multimae_jax.main --config=configs/finetune_cls.py:in1k --workdir=W \\
        --config.init=PATH --config.data.path=IMAGENET   # IMAGENET/{train,val}/<wnid>/*.JPEG
        # or --config.data.path=tfds:imagenet2012 (manual download; val_split 'validation')
    python -m multimae_jax.main --config=configs/finetune_cls.py:in1k_tiny --workdir=W
        # 2-core CPU: the embedded synthetic scenes, classified by their largest shape

The official fp16 autocast runs as bfloat16 (parameters, optimizer and loss in float32). The
official code mixes each GPU's 128 samples with their own draw; here one draw mixes the global
batch unless mixup.groups says otherwise (groups = 8 mimics eight GPUs).
"""
import ml_collections

from multimae_jax.train.finetune_config import finetune_config, shrink_to_tiny

VARIANTS = ("in1k",)


def get_config(variant: str = "in1k") -> ml_collections.ConfigDict:
    tiny = variant.endswith("_tiny")
    if variant.removesuffix("_tiny") not in VARIANTS:
        raise ValueError(f"configs/finetune_cls.py: unknown variant '{variant}' (known: in1k, "
                         "in1k_tiny)")
    c = finetune_config(input_tasks=("rgb",), image_size=224, batch=1024, eval_batch=1536,
                        epochs=100, compute_dtype="bfloat16", drop_path=0.1)
    c.objective = "classify"
    # LinearOutputAdapter: init_scale 0.001 is passed officially but undone by MultiViT's xavier
    # re-init (apply_init_scale=False keeps that quirk)
    c.head = ml_collections.ConfigDict(dict(use_mean_pooling=True, init_scale=0.001,
                                            apply_init_scale=False))
    c.target = ml_collections.ConfigDict(dict(name="cls", num_classes=1000))

    del c.optimizer.lr  # scaled from blr by the global batch (train/optimizer.py: scaled_lr)
    c.optimizer.blr = 5e-4
    c.optimizer.min_lr = 1e-6
    c.optimizer.warmup_epochs = 5.0
    c.optimizer.weight_decay = 0.05
    c.optimizer.layer_decay = 0.65

    c.augment = ml_collections.ConfigDict(dict(
        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, randaugment="rand-m9-mstd0.5-inc1",
        crop_draw="torchvision", crop_pct=224 / 256,
        # random erasing (the official --reprob / --remode / --recount; reprob 0 = off)
        reprob=0.0, remode="pixel", recount=1))
    c.mixup = ml_collections.ConfigDict(dict(
        mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1,
        groups=1))

    del c.modalities.mask_valid
    c.data.skip_corrupt = False  # True: a corrupt image is logged and left out
    c.data.tfds_fields.update({"rgb": "image"})  # tfds:imagenet2012
    c.data.synthetic_classes = 8  # 7 shape classes
    c.data.synthetic_object_scale = 1.0  # the objects' size (SyntheticScenes.object_scale)

    c.evals.val = ml_collections.ConfigDict(dict(type="classification", every_epochs=1))

    if tiny:
        shrink_to_tiny(c)
        del c.optimizer.lr
        c.target.num_classes = c.data.synthetic_classes - 1
        c.modalities.semseg.num_classes = c.data.synthetic_classes  # a semseg input's classes
        c.optimizer.blr = 1e-3 * 256 / c.data.global_batch_size  # lr 1e-3, as the dense tiny runs
        c.train.epochs = 8
        # Within 320 steps at 64 px (4 x 4 tokens) a tiny ViT stays at chance on the scenes'
        # small objects and under the recipe's RandAugment, mixup and 8 % crops; with objects
        # twice as large and light augmentation it learns the shapes (README).
        c.data.synthetic_object_scale = 2.0
        c.data.synthetic_eval_samples = 256  # 64 would leave about 9 per class
        c.augment.scale = (0.35, 1.0)
        c.augment.randaugment = ""
        c.mixup.mixup_alpha = 0.0
        c.mixup.cutmix_alpha = 0.0
    return c
