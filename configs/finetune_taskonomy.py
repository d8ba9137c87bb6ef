"""Taskonomy transfer fine-tuning (official `run_finetuning_taskonomy.py` with
`cfgs/finetune/taskonomy/rgb2<task>-1k/*multimae-b.yaml`): a MultiViT-B on rgb from a pre-trained
MultiMAE, a DPT regression head for one task, masked L1 on the valid pixels (mask_valid, invalid
areas dilated to 4 x 4 blocks), AdamW lr 3e-4 (not scaled by the batch), weight decay 0.05,
layer decay 0.75, drop path 0.1, 5 warm-up epochs of 100, batch 8, input 384, evaluated every 5
epochs; fp16 autocast runs here as bfloat16. No augmentation; each domain is preprocessed as the
official loader does (data/taskonomy_transforms.py).

    python -m multimae_jax.main --config=configs/finetune_taskonomy.py:normal --workdir=W \\
        --config.init=PATH --config.data.path=ROOT \\
        --config.data.train_split=splits/tiny_train.csv --config.data.val_split=splits/tiny_val.csv
    python -m multimae_jax.evaluate --config=configs/finetune_taskonomy.py:normal \\
        --checkpoint=W/best_val --config.data.path=ROOT \\
        --config.data.val_split=splits/tiny_test.csv --config.data.max_val_images=-1
    python -m multimae_jax.main --config=configs/finetune_taskonomy.py:depth_tiny --workdir=W

ROOT/<domain>/<building>/point_<p>_view_<v>_domain_<domain>.png, with ROOT/mask_valid/ (files
named ..._domain_depth_zbuffer.png). The split CSVs (columns building, point, view) are the
official `utils/taskonomy/splits/tiny_*.csv`, which we cannot ship: give their paths. As the
official configs: the first 800 training and 200 validation rows; the test set is every row.

Variants (the official config folders): curvature, depth, edges, keypoints2d, keypoints3d,
normal, occlusion, reshading. The head is named as the official one (depth_zbuffer's is 'depth').
`depth_tiny` fine-tunes on the embedded synthetic scenes, whose only dense regression target is
their depth: it is read as a 16-bit map without the 2 m clamp of Taskonomy's depth units (the
scenes store 1/4000 m; Taskonomy 1/512 m). The other tasks have no synthetic data.
"""
import ml_collections

from multimae_jax import modalities
from multimae_jax.train.finetune_config import dpt_head, finetune_config, shrink_to_tiny

# variant -> (Taskonomy domain, the head's name, channels)
TASKS = {
    "curvature": ("principal_curvature", "principal_curvature", 2),
    "depth": ("depth_zbuffer", "depth", 1),
    "edges": ("edge_texture", "edge_texture", 1),
    "keypoints2d": ("keypoints2d", "keypoints2d", 1),
    "keypoints3d": ("keypoints3d", "keypoints3d", 1),
    "normal": ("normal", "normal", 3),
    "occlusion": ("edge_occlusion", "edge_occlusion", 1),
    "reshading": ("reshading", "reshading", 1),
}
TINY = ("depth",)


def get_config(variant: str = "normal") -> ml_collections.ConfigDict:
    tiny = variant.endswith("_tiny")
    name = variant.removesuffix("_tiny")
    if name not in TASKS or (tiny and name not in TINY):
        raise ValueError(f"configs/finetune_taskonomy.py: unknown variant '{variant}' (known: "
                         f"{', '.join(TASKS)}, and {', '.join(t + '_tiny' for t in TINY)})")
    domain, head_name, channels = TASKS[name]

    # the official eval batch is 1.5 x the batch
    c = finetune_config(input_tasks=("rgb",), image_size=384, batch=8, eval_batch=12,
                        epochs=100, compute_dtype="bfloat16", drop_path=0.1)
    c.head = dpt_head()
    c.target = ml_collections.ConfigDict(dict(
        name=head_name, loss="l1", num_classes=channels, mask_valid=True))
    if head_name not in c.modalities:  # a batch key the registry must know
        c.modalities[head_name] = modalities.Modality(
            head_name, channels=channels, storage="uint16", resample="nearest",
            draw="colormap").to_dict()

    c.data.recipe = "taskonomy"
    c.data.train_split = ""  # a split CSV (official utils/taskonomy/splits/tiny_train.csv)
    c.data.val_split = ""
    c.data.max_train_images = 800
    c.data.max_val_images = 200
    c.data.mask = "mask_valid"
    c.data.taskonomy_task = domain
    c.data.taskonomy_overrides = ml_collections.ConfigDict()  # TaskonomyTask fields

    c.optimizer.lr = 3e-4
    c.optimizer.warmup_epochs = 5.0
    c.train.log_every = 20

    c.evals.val = ml_collections.ConfigDict(dict(type="taskonomy", every_epochs=5))

    if tiny:
        shrink_to_tiny(c)
        c.data.max_train_images = -1
        c.data.max_val_images = -1
        c.data.taskonomy_overrides.clamp_max = 1.0  # depth / 65535 in [0, 1], kept whole
    return c
