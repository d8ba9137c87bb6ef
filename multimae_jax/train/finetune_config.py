"""The sections every fine-tuning config shares (configs/finetune_semseg.py, finetune_depth.py;
here in the package so that a config file loads from any working directory):
a MultiViT from a pre-trained MultiMAE, one dense head, the official fine-tuning optimizer
(train/param_groups.py) and the generic training loop; and the shrinking of a recipe to its
`_tiny` sibling, which fine-tunes on the embedded synthetic scenes in a few CPU minutes."""
import ml_collections

from multimae_jax import modalities
from multimae_jax.train.config_fields import encoder_fields, loop_fields
from multimae_jax.train.param_groups import finetune_optimizer_fields


def finetune_config(*, input_tasks, image_size: int, batch: int, eval_batch: int,
                    epochs: int, compute_dtype: str, drop_path: float) -> ml_collections.ConfigDict:
    """Everything but the head, the target, the data recipe and the evaluators."""
    c = ml_collections.ConfigDict()
    c.objective = "finetune"
    c.seed = 0
    c.init = ""  # the pre-trained weights (.pth, workdir, checkpoint, export); empty: scratch

    c.model = encoder_fields(input_tasks, image_size, drop_path)

    # every modality's fields (multimae_jax/modalities.py); the validity mask is one more
    c.modalities = ml_collections.ConfigDict(
        {n: m.to_dict() for n, m in modalities.MODALITIES.items()})
    c.modalities.mask_valid = modalities.Modality(
        "mask_valid", channels=1, storage="uint8", resample="nearest", draw="colormap").to_dict()

    c.data = ml_collections.ConfigDict()
    c.data.path = ""  # empty: the embedded synthetic scenes
    c.data.train_split = "train"
    c.data.val_split = "val"
    # > 0: the official selection of that many (a folder's random subset, Taskonomy's first
    # rows); -1: every sample
    c.data.max_train_images = -1
    c.data.max_val_images = -1
    c.data.global_batch_size = batch
    c.data.eval_batch_size = eval_batch
    c.data.num_workers = 8
    c.data.mask = ""  # the validity mask's modality ('' = none)
    # data.path 'tfds:NAME' (the splits are TFDS's): {modality: feature} where the names differ,
    # {modality: factor} for float features read as 16-bit (data/tfds_source.py)
    c.data.tfds_fields = ml_collections.ConfigDict()
    c.data.tfds_scales = ml_collections.ConfigDict()
    # data.path empty: synthetic scenes, the first synthetic_samples for training, the next
    # synthetic_eval_samples for evaluation
    c.data.synthetic_samples = 1000
    c.data.synthetic_eval_samples = 200
    c.data.synthetic_classes = 41
    # other scenes than pre-training's (configs/pretrain.py renders seed 0), so that a tiny
    # pre-trained MultiMAE has never seen the fine-tuning validation scenes
    c.data.synthetic_seed = 1

    c.optimizer = finetune_optimizer_fields()

    c.train = loop_fields(epochs=epochs, compute_dtype=compute_dtype,
                          picture_every=1000,  # unused: fine-tuning draws through its evaluators
                          checkpoint_every=1000, keep_checkpoints=2)

    c.evals = ml_collections.ConfigDict()
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    return c


def dpt_head(main_tasks=("rgb",)) -> ml_collections.ConfigDict:
    """config.head of the regression recipes: DPTOutputAdapter as the official depth and
    Taskonomy scripts build it for ViT-B (hooks 2, 5, 8, 11)."""
    return ml_collections.ConfigDict(dict(
        type="dpt", main_tasks=tuple(main_tasks), hooks=(2, 5, 8, 11),
        layer_dims=(96, 192, 384, 768), feature_dim=256, head_type="regression"))


#: config.head fields of a _tiny sibling, per head type
TINY_HEADS = {
    "convnext": dict(embed_dim=16 * 32, depth=1),
    "dpt": dict(hooks=(0, 1, 2, 3), layer_dims=(24, 48, 96, 96), feature_dim=32),
}


def shrink_to_tiny(c: ml_collections.ConfigDict) -> None:
    """The `_tiny` sibling of a recipe, in place: a 4-block 96-wide encoder at 64 px with a
    head of that size (`TINY_HEADS`), on 640 synthetic training scenes (64 for evaluation), 4
    epochs at lr 1e-3 after one warm-up epoch, float32, evaluated every epoch. The target keeps
    its kind; configs shrink it themselves."""
    c.model.size = "tiny"
    c.model.image_size = 64
    c.model.overrides = ml_collections.ConfigDict(dict(dim_tokens=96, depth=4, num_heads=3))
    c.model.drop_path_rate = 0.0
    c.head.update(TINY_HEADS.get(c.head.get("type"), {}))  # a linear head has no size fields
    c.data.global_batch_size = 16
    c.data.eval_batch_size = 16
    c.data.num_workers = 0
    c.data.synthetic_samples = 640
    c.data.synthetic_eval_samples = 64
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_epochs = 1.0
    c.train.epochs = 4
    c.train.compute_dtype = "float32"
    c.train.log_every = 20
    c.train.checkpoint_every = 40
    for section in c.evals.values():
        section.every_epochs = 1
