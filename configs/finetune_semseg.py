"""Semantic segmentation fine-tuning configs (official `run_finetuning_semseg.py` with
`cfgs/finetune/semseg/**`): a MultiViT-B from a pre-trained MultiMAE, ConvNeXt head, cross-entropy
(ignore 255) on full-resolution logits, layer decay 0.75, drop path 0.1, AdamW lr 1e-4 (not
scaled by the batch), one warm-up epoch, cosine to 0.

    python -m multimae_jax.main --config=configs/finetune_semseg.py:nyu_rgbd --workdir=W \\
        --config.init=PATH --config.data.path=DIR     # DIR/<split>/<modality>/..., as prepared
    python -m multimae_jax.main --config=configs/finetune_semseg.py:nyu_rgbd_tiny --workdir=W
                                                      # 2-core CPU: the embedded synthetic scenes

Variants: ade_rgb, hypersim_{rgb,depth,rgbd}, nyu_{rgb,depth,rgbd}, each with a `_tiny` sibling.
`init` reads an official .pth (MultiViT or timm layout), a pre-training workdir or checkpoint of
ours, or an exported file. The official fp16 autocast runs here as bfloat16 (parameters, the
optimizer and the loss stay float32); Hypersim trained in fp32 and stays float32.
"""
import ml_collections

from multimae_jax.train.finetune_config import finetune_config, shrink_to_tiny

# dataset -> (classes, input size, epochs, global batch, eval every N epochs, official fp16)
DATASETS = {
    "ade": (150, 512, 64, 16, 1, True),
    "hypersim": (40, 512, 25, 16, 1, False),
    "nyu": (40, 640, 200, 8, 20, True),
}
# inputs -> (input tasks, the head's main tasks)
INPUTS = {"rgb": (("rgb",), ("rgb",)), "depth": (("depth",), ("depth",)),
          "rgbd": (("rgb", "depth"), ("rgb",))}
VARIANTS = ("ade_rgb", "hypersim_rgb", "hypersim_depth", "hypersim_rgbd", "nyu_rgb",
            "nyu_depth", "nyu_rgbd")


def get_config(variant: str = "nyu_rgbd") -> ml_collections.ConfigDict:
    tiny = variant.endswith("_tiny")
    name = variant.removesuffix("_tiny")
    if name not in VARIANTS:
        raise ValueError(f"configs/finetune_semseg.py: unknown variant '{variant}' (known: "
                         f"{', '.join(VARIANTS)}, each also with _tiny)")
    dataset, inputs = name.split("_")
    num_classes, size, epochs, batch, eval_epochs, fp16 = DATASETS[dataset]
    input_tasks, main_tasks = INPUTS[inputs]

    c = finetune_config(input_tasks=input_tasks, image_size=size, batch=batch,
                        eval_batch=batch, epochs=epochs,
                        compute_dtype="bfloat16" if fp16 else "float32", drop_path=0.1)
    c.head = ml_collections.ConfigDict(dict(
        type="convnext", main_tasks=main_tasks, embed_dim=6144, preds_per_patch=16, depth=4,
        interpolate_mode="bilinear"))
    c.target = ml_collections.ConfigDict(dict(
        name="semseg", loss="cross_entropy", num_classes=num_classes, mask_valid=False))

    # depth arrives standardised by the data pipeline (`standardize_depth_map`, with mask_valid)
    c.modalities.depth.scale = 1.0
    c.modalities.depth.standardize = False
    c.modalities.semseg.num_classes = num_classes
    c.modalities.semseg.stride_level = 1

    c.data.recipe = "semseg"
    c.data.reduce_zero_label = True  # ADE 1..150, NYU / Hypersim 1..40 -> 0..C-1, 0 -> ignore
    c.data.depth_inputs = tuple(t for t in input_tasks if t == "depth")  # standardised on host
    c.data.mask = "" if inputs == "rgb" else "mask_valid"  # the depth configs' use_mask_valid
    c.data.standardize_depth = True
    c.data.scale_range = (0.1, 2.0)  # the `simple` augmentation's RandomScale factors
    c.data.synthetic_classes = num_classes + 1  # class 0 is ignored (reduce_zero_label)
    if dataset == "ade":  # --config.data.path=tfds:scene_parse150 --config.data.val_split=test
        c.data.tfds_fields.update({"rgb": "image", "semseg": "annotation"})

    c.evals.val = ml_collections.ConfigDict(dict(type="semseg", every_epochs=eval_epochs))

    if tiny:
        shrink_to_tiny(c)
        # background and 3 shapes: with more, no shape class outweighs the background at a
        # pixel within the tiny budget, and the argmax stays background everywhere
        c.target.num_classes = 4
        c.modalities.semseg.num_classes = 4
        c.data.reduce_zero_label = False  # the scenes' background (class 0) is a class here
        c.data.synthetic_classes = 4
        c.train.epochs = 8
    return c
