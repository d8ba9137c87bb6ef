"""The classification fine-tuning objective (official `run_finetuning_cls.py` with
cfgs/finetune/cls/ft_in1k_100e_multimae-b.yaml): a MultiViT on the rgb input (or any set of
input modalities, config.model.input_tasks: their crop and flip shared, mixed with one draw) with
`LinearOutputAdapter` (mean pooling; the official init_scale quirk kept), random erasing and
mixup / cutmix on the device, soft-target cross-entropy, and the fine-tuning optimizer of the
dense objective with the lr scaled by the batch (lr = blr x global batch / 256). The generic
Trainer and loop run it.

Config (configs/finetune_cls.py), besides the fine-tuning sections (train/finetune_config.py):
  head:   use_mean_pooling, init_scale, apply_init_scale (LinearOutputAdapter's fields)
  target: name (the head's name, 'cls' as the official key), num_classes
  augment: randaugment (a timm policy string, '' = none), scale, ratio, hflip, crop_draw
          ('torchvision': 10 tries as timm; 'mae': MAE's one-draw crop), crop_pct
          (evaluation: resize to image_size / crop_pct, centre crop), reprob / remode / recount
          (the official --reprob 0 / --remode pixel / --recount 1: random erasing's probability,
          fill 'pixel' | 'rand' | 'const', most boxes; boxes drawn on the host, filled after
          normalisation and before mixup, `multimae_jax/erasing.py`)
  mixup:  mixup_alpha, cutmix_alpha, prob, switch_prob, label_smoothing, groups (the batch is
          mixed within that many equal slices, each with its partner the slice reversed; the
          official mixes each GPU's batch: groups = the number of GPUs)
  data:   path ('' = the synthetic scenes labelled by shape; 'tfds:imagenet2012'; shards; an
          ImageNet folder with train_split / val_split class folders), skip_corrupt
  evals:  {name: {type: 'classification', every_epochs}}
Batches: each input as pre-training stores it (rgb uint8 (B, S, S, 3)) and 'label' int32 (B,);
with reprob > 0 also 'erase' int32 (B, recount, 4), the boxes (top, left, h, w) to erase
(h = w = 0: none; erasing and RandAugment need a single rgb input).
"""
import jax
import jax.numpy as jnp

from multimae_jax import erasing, losses, mixup
from multimae_jax.data.classify_sources import ImageFolder, check_classes, make_classify_source
from multimae_jax.data.classify_transforms import ClassifyRecipe, ClassifyTrainAugment
from multimae_jax.data.dense_sources import Subset, official_subset
from multimae_jax.data.synthetic import SyntheticScenes
from multimae_jax.data.transforms import prepare_batch, random_stored_batch
from multimae_jax.models.output_adapters import LinearOutputAdapter
from multimae_jax.train.finetune import FinetuneObjective, input_modalities, model_with_head
from multimae_jax.train.optimizer import scaled_lr
from multimae_jax.train.step import DTYPES


class ClassifyObjective(FinetuneObjective):
    """Image classification (see the module docstring)."""

    def __init__(self, config):
        self.config = config
        self.model = model_with_head(config, self.head(config))
        self.inputs = input_modalities(config)
        self.image = next(iter(self.inputs))  # the pictures' input
        self.erasing = config.augment.reprob > 0
        self.batch_keys = (*self.inputs, "label") + (("erase",) if self.erasing else ())

    @staticmethod
    def head(config):
        """LinearOutputAdapter with config.head's fields."""
        return LinearOutputAdapter(config.target.num_classes,
                                   dtype=DTYPES[config.train.compute_dtype],
                                   **config.head.to_dict())

    base_lr = staticmethod(scaled_lr)

    def lr_note(self) -> str:
        c = self.config
        return (f" (blr {c.optimizer.blr:g} x batch {c.data.global_batch_size} / 256)")

    @property
    def mixing(self) -> bool:
        """The official `mixup_active`: either alpha > 0."""
        m = self.config.mixup
        return m.mixup_alpha > 0 or m.cutmix_alpha > 0

    def loss(self, trainable, buffers, batch, key):
        """(loss, {'loss': loss}) of one (micro-)batch: random erasing of batch['erase'] (when
        augment.reprob > 0) on the normalised images, then mixup / cutmix with soft targets (the
        official SoftTargetCrossEntropy) when mixing, else label smoothing or plain
        cross-entropy; float32."""
        m, num_classes = self.config.mixup, self.config.target.num_classes
        mix_key, key = jax.random.split(key)
        x = self.model_inputs(batch)
        if self.erasing:  # the official order: each image erased, then the batch mixed
            erase_key, key = jax.random.split(key)
            x[self.image] = erasing.erase_boxes(x[self.image], batch["erase"], erase_key,
                                                self.config.augment.remode)
        labels = batch["label"]
        if self.mixing:  # one draw for every input: the box lies at the same place in each
            draw = mixup.draw_mixup(mix_key, mixup_alpha=m.mixup_alpha,
                                    cutmix_alpha=m.cutmix_alpha, prob=m.prob,
                                    switch_prob=m.switch_prob,
                                    image_hw=x[self.image].shape[1:3])
            for name in x:
                x[name], targets = mixup.mix_batch(x[name], labels, draw, num_classes,
                                                   m.label_smoothing, groups=m.groups)
        logits = self._logits(trainable["params"], buffers, x, key, train=True)
        if self.mixing:
            loss = losses.soft_target_cross_entropy(logits, targets)
        else:  # smoothing 0: plain cross-entropy, as the official CrossEntropyLoss
            loss = losses.label_smoothing_cross_entropy(logits, labels, m.label_smoothing)
        return loss, {"loss": loss}

    def model_inputs(self, batch: dict) -> dict:
        """{input: float32 (B, S, S, C) normalised, or labels int32} of a batch."""
        return prepare_batch({name: batch[name] for name in self.inputs}, self.inputs)

    def _logits(self, params, buffers, x, key, train: bool):
        out = self.model.apply({"params": params, "buffers": buffers}, x,
                               train=train, rngs={"dropout": key})
        return out[self.config.target.name].astype(jnp.float32)

    def random_batch(self, key, batch_size: int) -> dict:
        """Random arrays in the pipeline's layout: each input as `random_stored_batch` makes it,
        'label' int32 (B,) below num_classes, with reprob > 0 'erase' int32 (B, recount, 4): one
        S/2 x S/2 box per image at a random corner inside it, no others (for the benchmark)."""
        s, k1, k2, k3 = self.config.model.image_size, *jax.random.split(key, 3)
        batch = {**random_stored_batch(k1, self.inputs.values(), batch_size, s),
                 "label": jax.random.randint(k2, (batch_size,), 0,
                                             self.config.target.num_classes)}
        if self.erasing:
            corner = jax.random.randint(k3, (batch_size, 2), 0, s - s // 2 + 1)
            box = jnp.concatenate([corner, jnp.full((batch_size, 2), s // 2)], axis=1)
            erase = jnp.zeros((batch_size, self.config.augment.recount, 4), jnp.int32)
            batch["erase"] = erase.at[:, 0].set(box.astype(jnp.int32))
        return batch

    # --- data ---------------------------------------------------------------------------------

    def _source(self, split: str, start: int, count: int, max_images: int = -1):
        """The split's images (see the module docstring); the training split replaces a corrupt
        image with data.skip_corrupt, the others leave it uncounted. A class list that is not
        training's (a folder's) or not target.num_classes long is an error."""
        c, d = self.config, self.config.data
        train = split == d.train_split
        scenes = (SyntheticScenes(start + count, c.model.image_size, d.synthetic_classes,
                                  d.synthetic_seed, single_class=True,
                                  object_scale=d.synthetic_object_scale) if not d.path else None)
        source = make_classify_source(d.path, split, self.inputs.values(), train=train,
                                      skip_corrupt=d.skip_corrupt,
                                      tfds_fields=d.tfds_fields.to_dict(),
                                      synthetic_scenes=scenes, synthetic_start=start,
                                      synthetic_count=count)
        if isinstance(source.raw, ImageFolder) and not train:
            check_classes(ImageFolder.class_folders(f"{d.path}/{d.train_split}",
                                                    tuple(self.inputs)),
                          source.classes, f"{d.path}/{split}")
        if source.classes is not None and len(source.classes) != c.target.num_classes:
            raise ValueError(f"{source.raw!r}: {len(source.classes)} classes, but "
                             f"config.target.num_classes = {c.target.num_classes}")
        if max_images > 0:
            return Subset(source, official_subset(len(source), max_images))
        return source

    def _recipe(self, train: bool) -> ClassifyRecipe:
        c, a = self.config, self.config.augment
        augment = None
        if train:
            augment = ClassifyTrainAugment(tuple(self.inputs.values()), c.model.image_size,
                                           tuple(a.scale), tuple(a.ratio), a.hflip,
                                           a.randaugment, a.reprob, a.recount, a.crop_draw)
        return ClassifyRecipe(tuple(self.inputs.values()), c.model.image_size, augment,
                              a.crop_pct)

    def _evaluator_defaults(self) -> dict:
        return {"target": "label", "num_classes": self.config.target.num_classes,
                "picture_input": self.image}
