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

from multimae_jax import modalities
from multimae_jax.train.param_groups import finetune_optimizer_fields

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

    c = ml_collections.ConfigDict()
    c.objective = "finetune"
    c.seed = 0
    c.init = ""  # the pre-trained weights; empty: from scratch

    c.model = ml_collections.ConfigDict()
    c.model.size = "base"
    c.model.input_tasks = input_tasks
    c.model.image_size = size
    c.model.patch_size = 16
    c.model.num_global_tokens = 1
    c.model.drop_path_rate = 0.1
    c.model.overrides = ml_collections.ConfigDict()

    c.head = ml_collections.ConfigDict(dict(
        type="convnext", main_tasks=main_tasks, embed_dim=6144, preds_per_patch=16, depth=4,
        interpolate_mode="bilinear"))
    c.target = ml_collections.ConfigDict(dict(
        name="semseg", loss="cross_entropy", num_classes=num_classes, mask_valid=False))

    # depth arrives standardised by the data pipeline (`standardize_depth_map`, with mask_valid)
    c.modalities = ml_collections.ConfigDict(
        {n: m.to_dict() for n, m in modalities.MODALITIES.items()})
    c.modalities.depth.scale = 1.0
    c.modalities.depth.standardize = False
    c.modalities.semseg.num_classes = num_classes
    c.modalities.semseg.stride_level = 1
    c.modalities.mask_valid = modalities.Modality(
        "mask_valid", channels=1, storage="uint8", resample="nearest", draw="colormap").to_dict()

    c.data = ml_collections.ConfigDict()
    c.data.path = ""  # empty: the embedded synthetic scenes
    c.data.train_split = "train"
    c.data.val_split = "val"
    c.data.global_batch_size = batch
    c.data.eval_batch_size = batch
    c.data.num_workers = 8
    c.data.reduce_zero_label = True  # ADE 1..150, NYU / Hypersim 1..40 -> 0..C-1, 0 -> ignore
    c.data.depth_inputs = tuple(t for t in input_tasks if t == "depth")  # standardised on host
    c.data.mask = "" if inputs == "rgb" else "mask_valid"  # the depth configs' use_mask_valid
    c.data.standardize_depth = True
    # data.path empty: synthetic scenes, the first synthetic_samples for training, the next
    # synthetic_eval_samples for evaluation
    c.data.synthetic_samples = 1000
    c.data.synthetic_eval_samples = 200
    c.data.synthetic_classes = num_classes + 1  # class 0 is ignored (reduce_zero_label)

    c.optimizer = finetune_optimizer_fields()

    c.train = ml_collections.ConfigDict()
    c.train.epochs = epochs
    c.train.num_steps = -1
    c.train.compute_dtype = "bfloat16" if fp16 else "float32"
    c.train.residual_dtype = "float32"
    c.train.remat = False
    c.train.grad_accum_steps = 1
    c.train.fsdp_min_size = 2 ** 18
    c.train.max_nonfinite_steps = 20
    c.train.log_every = 50
    c.train.picture_every = 1000  # unused: fine-tuning draws through its evaluators
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 2
    c.train.checkpoint_fallback = True
    c.train.allow_batch_size_change = False

    c.evals = ml_collections.ConfigDict()
    c.evals.val = ml_collections.ConfigDict(dict(type="semseg", every_epochs=eval_epochs))

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})

    if tiny:
        c.model.size = "tiny"
        c.model.image_size = 64
        c.model.overrides = ml_collections.ConfigDict(dict(dim_tokens=96, depth=4, num_heads=3))
        c.model.drop_path_rate = 0.0
        c.head.embed_dim = 16 * 32
        c.head.depth = 1
        c.target.num_classes = 8
        c.modalities.semseg.num_classes = 8
        c.data.reduce_zero_label = False  # the scenes' background (class 0) is a class here
        c.data.synthetic_classes = 8
        c.data.global_batch_size = 16
        c.data.eval_batch_size = 16
        c.data.num_workers = 0
        c.data.synthetic_samples = 640
        c.data.synthetic_eval_samples = 64
        c.optimizer.lr = 1e-3
        c.train.epochs = 4
        c.train.compute_dtype = "float32"
        c.train.log_every = 20
        c.train.checkpoint_every = 40
        c.evals.val.every_epochs = 1
    return c
