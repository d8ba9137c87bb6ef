"""The dense fine-tuning objective: a MultiViT (input adapters of config.model.input_tasks, the
encoder) with one dense head, trained on one target with the official loss of its script
(`run_finetuning_semseg.py`: cross-entropy, ignore index 255, on full-resolution logits;
`run_finetuning_depth.py`: berHu on the valid pixels; `run_finetuning_taskonomy.py`: masked L1),
and the official fine-tuning optimizer (layer-wise lr decay, no decay for 1-D / bias / the
model's no_weight_decay names: train/param_groups.py). The generic Trainer and loop run it.

Config (configs/finetune_*.py):
  model:  size, input_tasks, image_size, patch_size, num_global_tokens, drop_path_rate,
          overrides (encoder fields)
  head:   type ('convnext' | 'dpt') and that head's fields (main_tasks, ...)
  target: name (the batch key of the target and the head's output), loss
          ('cross_entropy' | 'berhu' | 'l1' | 'mse'), num_classes (channels of a regression
          target), mask_valid (bool: a 'mask_valid' (B, S, S, 1) entry limits the loss),
          mean / std (recipe 'depth': the target is (depth - mean) / std; metrics invert it)
  data:   recipe ('semseg' | 'depth' | 'taskonomy': `RECIPES`), path + train_split /
          val_split (a split folder each, a split CSV for Taskonomy; path '' = the embedded
          synthetic scenes), max_train_images / max_val_images (> 0: the official selection:
          a folder's random subset, Taskonomy's first rows), mask (the validity mask's
          modality, '' = none); recipe 'semseg': depth_inputs (inputs standardised on the
          host), reduce_zero_label, standardize_depth, scale_range (RandomScale's factors);
          'depth': color_augs; 'taskonomy': taskonomy_task (the target's Taskonomy domain:
          its folder and preprocessing), taskonomy_overrides (TaskonomyTask fields)
  evals:  {name: {type, every | every_epochs, ...}} (train/evaluators)
Inputs arrive as the dense pipeline stores them (an image modality's stored values, normalised
on the device as the modality says; depth already standardised on the host: its modality entry
has standardize False and scale 1).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from multimae_jax import losses, modalities, pretrained
from multimae_jax.convert.official import official_key
from multimae_jax.data.dense_pipeline import eval_dataset, train_dataset
from multimae_jax.data.dense_recipes import DepthRecipe, SemsegRecipe, TaskonomyRecipe
from multimae_jax.data.dense_sources import make_dense_source
from multimae_jax.data.dense_transforms import NyuAugment, SemsegAugment
from multimae_jax.data.synthetic import SyntheticScenes
from multimae_jax.data.taskonomy_transforms import TASKONOMY_TASKS
from multimae_jax.data.transforms import prepare_batch
from multimae_jax.models.dense_heads import ConvNeXtAdapter, DPTOutputAdapter
from multimae_jax.models.presets import multivit
from multimae_jax.models.spec import example_inputs
from multimae_jax.train.evaluators import eval_every, make_evaluators
from multimae_jax.train.param_groups import finetune_optimizer
from multimae_jax.train.step import DTYPES

HEADS = {"convnext": ConvNeXtAdapter, "dpt": DPTOutputAdapter}
#: config.data.recipe -> the official script whose data path it follows
RECIPES = {"semseg": "run_finetuning_semseg.py", "depth": "run_finetuning_depth.py",
           "taskonomy": "run_finetuning_taskonomy.py"}
#: loss name -> (loss(pred, target, mask_valid), whether the target is a label map)
LOSSES = {
    "cross_entropy": (lambda pred, target, _: losses.dense_cross_entropy(pred, target), True),
    "berhu": (losses.dense_berhu, False),
    "l1": (losses.dense_l1, False),
    "mse": (losses.dense_mse, False),
}


def input_modalities(config) -> dict:
    """{name: Modality} of the encoder inputs, with config.modalities applied."""
    registry = modalities.with_overrides(config.modalities.to_dict())
    return modalities.resolve(config.model.input_tasks, registry)


def model_with_head(config, head):
    """The MultiViT of config.model with `head` named config.target.name, in
    config.train.compute_dtype (config.train.residual_dtype, remat, model.attention,
    model.scan_blocks: as in pre-training; MultiViT gathers no tokens)."""
    mc = config.model
    return multivit(mc.size, tuple(input_modalities(config).values()),
                    heads={config.target.name: head}, image_size=mc.image_size,
                    patch_size=mc.patch_size, num_global_tokens=mc.num_global_tokens,
                    dtype=DTYPES[config.train.compute_dtype],
                    residual_dtype=DTYPES[config.train.residual_dtype],
                    remat=config.train.remat, drop_path_rate=mc.drop_path_rate,
                    attention=mc.attention, scan_blocks=mc.scan_blocks,
                    **mc.overrides.to_dict())


def build_model(config):
    """`model_with_head` of config.head (a dense head of `HEADS`)."""
    hc = config.head.to_dict()
    head_type = hc.pop("type")
    return model_with_head(config, HEADS[head_type](
        num_classes=config.target.num_classes, patch_size=config.model.patch_size,
        dtype=DTYPES[config.train.compute_dtype], **hc))


class FinetuneObjective:
    """Dense fine-tuning of one target (see the module docstring)."""
    training_pictures = False  # its evaluators draw input | prediction | ground truth

    def __init__(self, config):
        self.config = config
        self.model = build_model(config)
        self.inputs = input_modalities(config)
        t = config.target
        if t.loss not in LOSSES:
            raise ValueError(f"config.target.loss={t.loss!r}: choose one of {sorted(LOSSES)}")
        self.loss_fn, self.label_target = LOSSES[t.loss]
        self.batch_keys = (tuple(self.inputs) + (t.name,)
                           + (("mask_valid",) if t.mask_valid else ()))

    def init_variables(self, key) -> dict:
        return self.model.init(key, example_inputs(self.model))

    def init_extra(self) -> dict:
        return {}

    @staticmethod
    def base_lr(config) -> float:
        """The fine-tuning scripts take the lr as given (no batch scaling)."""
        return config.optimizer.lr

    def lr_note(self) -> str:
        return ""

    def start_from(self, state, state_sharding, verbose: bool):
        """The initialised state with config.init's weights (an official .pth, a pre-training
        workdir or checkpoint, an exported file) loaded as the official fine-tuning scripts
        load them (`pretrained.finetune_init`: decoders dropped, positional embeddings resized,
        ...); parameters the file lacks (the head) keep their initialisation. Every process
        reads the file and places its own shards."""
        if not self.config.init:
            return state
        zeros = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), state["params"])
        merged, report = pretrained.finetune_init({"params": zeros}, self.config.init)
        loaded = set(report["loaded"])
        params = jax.tree_util.tree_map_with_path(
            lambda path, new, old, sharding: (
                jax.device_put(new.astype(old.dtype), sharding)
                if official_key([p.key for p in path]) in loaded else old),
            merged["params"], state["params"], state_sharding["params"])
        if verbose:
            print(f"init: {self.config.init}: {len(loaded)} tensors loaded, "
                  f"{len(report['kept_init'])} kept their initialisation (the head, "
                  f"{', '.join(report['kept_init'][:3])}{', ...' if len(report['kept_init']) > 3 else ''}), "
                  f"{len(report['ignored'])} in the file unused", flush=True)
        return {**state, "params": params}

    def make_optimizer(self, lr_schedule, wd_schedule):
        return finetune_optimizer(self.config.optimizer, self.model, lr_schedule, wd_schedule)

    def _predict(self, params, buffers, batch, key, train: bool):
        inputs = prepare_batch({t: batch[t] for t in self.inputs}, self.inputs)
        out = self.model.apply({"params": params, "buffers": buffers}, inputs, train=train,
                               rngs={"dropout": key})
        return inputs, out[self.config.target.name]

    def loss(self, trainable, buffers, batch, key):
        """(loss, {'loss': loss}) of one (micro-)batch; the loss in float32."""
        _, pred = self._predict(trainable["params"], buffers, batch, key, train=True)
        target = batch[self.config.target.name]
        mask = batch["mask_valid"] if self.config.target.mask_valid else None
        loss = self.loss_fn(pred.astype(np.float32), target, mask)
        return loss, {"loss": loss}

    def predict(self, params, buffers, batch, key):
        """(model inputs, the head's output) of `batch`."""
        return self._predict(params, buffers, batch, key, train=False)

    def random_batch(self, key, batch_size: int) -> dict:
        """Random arrays in the layout and dtypes of the data pipeline's batches
        (data/dense_recipes.py; for the benchmark): image inputs uint8 (B, S, S, 3), other
        inputs float32 (B, S, S, C); a label target int32 (B, S, S) below num_classes, a
        regression target float32 (B, S, S, C); the validity mask bool (B, S, S, 1), mostly
        valid."""
        s, t = self.config.model.image_size, self.config.target
        keys = iter(jax.random.split(key, len(self.inputs) + 2))
        out = {}
        for name, mod in self.inputs.items():
            shape = (batch_size, s, s, mod.channels)
            out[name] = (jax.random.randint(next(keys), shape, 0, 256).astype(jnp.uint8)
                         if mod.storage == "rgb8" else jax.random.normal(next(keys), shape))
        out[t.name] = (jax.random.randint(next(keys), (batch_size, s, s), 0, t.num_classes)
                       if self.label_target else
                       jax.random.normal(next(keys), (batch_size, s, s, t.num_classes)))
        if t.mask_valid:
            out["mask_valid"] = jax.random.uniform(next(keys), (batch_size, s, s, 1)) < 0.9
        return out

    # --- data ---------------------------------------------------------------------------------

    def _source(self, split: str, start: int, count: int, max_images: int = -1):
        """The split's samples: the folder data.path/<split> (Taskonomy: the rows of the split
        CSV `split` under data.path; 'tfds:NAME': NAME's split `split`), or synthetic scenes
        start.. + count (a disjoint range per split) when data.path is empty; of these, the
        official selection of `max_images` (config.data.max_*_images: > 0; -1 keeps all;
        `dense_sources.make_dense_source`)."""
        c, d = self.config, self.config.data
        registry = modalities.with_overrides(c.modalities.to_dict())
        keys = (*self.inputs, c.target.name) + ((d.mask,) if d.mask else ())
        mods = tuple(modalities.resolve(keys, registry).values())
        limit = max_images if max_images > 0 else None
        if not d.path:
            scenes = SyntheticScenes(start + count, c.model.image_size, d.synthetic_classes,
                                     d.synthetic_seed)
            return make_dense_source("", mods, mask=d.mask or None, synthetic_scenes=scenes,
                                     synthetic_start=start, synthetic_samples=count,
                                     max_images=limit)
        if d.recipe == "taskonomy":
            return make_dense_source(d.path, mods, split_csv=split, max_images=limit,
                                     taskonomy_folders={c.target.name: d.taskonomy_task})
        if d.path.startswith("tfds:"):  # the split is TFDS's own (e.g. val_split='test')
            return make_dense_source(f"{d.path}:{split}", mods, mask=d.mask or None,
                                     max_images=limit, tfds_fields=d.tfds_fields.to_dict(),
                                     tfds_scales=d.tfds_scales.to_dict())
        return make_dense_source(f"{d.path}/{split}", mods, mask=d.mask or None,
                                 max_images=limit)

    def _recipe(self, train: bool):
        """The host-side sample -> batch row mapping of config.data.recipe."""
        return getattr(self, f"_{self.config.data.recipe}_recipe")(train)

    def _semseg_recipe(self, train: bool) -> SemsegRecipe:
        c, d = self.config, self.config.data
        images = tuple(t for t in self.inputs if t not in d.depth_inputs)
        masks = (c.target.name, *d.depth_inputs) + ((d.mask,) if d.mask else ())
        augment = SemsegAugment(images, masks, input_size=c.model.image_size, train=train,
                                scale=tuple(d.scale_range))
        return SemsegRecipe(augment, c.target.name, c.target.num_classes,
                            reduce_zero_label=d.reduce_zero_label,
                            depth_inputs=tuple(d.depth_inputs), mask=d.mask or None,
                            standardize_depth=d.standardize_depth)

    def _depth_recipe(self, train: bool) -> DepthRecipe:
        c, d = self.config, self.config.data
        augment = NyuAugment(tuple(self.inputs), (c.target.name, d.mask),
                             input_size=c.model.image_size, train=train,
                             **({} if d.color_augs else {"jitter": None, "gray_p": 0.0}))
        return DepthRecipe(augment, c.target.name, d.mask, c.target.mean, c.target.std)

    def _taskonomy_recipe(self, train: bool) -> TaskonomyRecipe:
        """No augmentation (train and eval alike). The inputs and the target are preprocessed
        as their Taskonomy domains (the target's: data.taskonomy_task, with the
        TaskonomyTask fields of data.taskonomy_overrides)."""
        del train
        c, d = self.config, self.config.data
        target = dataclasses.replace(TASKONOMY_TASKS[d.taskonomy_task],
                                     **d.taskonomy_overrides.to_dict())
        tasks = {t: TASKONOMY_TASKS[t] for t in self.inputs} | {c.target.name: target}
        return TaskonomyRecipe(tasks, tuple(self.inputs), d.mask, c.model.image_size)

    def train_data(self, process_index: int, process_count: int):
        """(source, endless dataset of this process's training batches)."""
        d = self.config.data
        source = self._source(d.train_split, 0, d.synthetic_samples, d.max_train_images)
        dataset = train_dataset(source, self._recipe(train=True),
                                local_batch_size=d.global_batch_size // process_count,
                                seed=self.config.seed, process_index=process_index,
                                process_count=process_count, num_workers=d.num_workers)
        return source, dataset

    def evaluators(self, trainer, steps_per_epoch: int):
        """({name: evaluator of config.evals}, {name: every N steps}); each reads one pass
        of data.val_split (synthetic: the scenes after the training ones)."""
        c, d = self.config, self.config.data
        source = self._source(d.val_split, d.synthetic_samples, d.synthetic_eval_samples,
                              d.max_val_images)

        def batches(name, section):
            dataset = eval_dataset(source, self._recipe(train=False),
                                   local_batch_size=d.eval_batch_size // jax.process_count(),
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count(),
                                   num_workers=d.num_workers)
            return lambda: iter(dataset)

        key = jax.random.key(0)  # evaluation draws nothing (no dropout or drop path)

        def predict_fn(params, buffers, batch):
            with trainer.on_mesh():
                return self.predict(params, buffers, batch, key)[1]

        evaluators = make_evaluators(c.evals, predict_fn, trainer.mesh, batches,
                                     **self._evaluator_defaults())
        return evaluators, eval_every(c.evals, steps_per_epoch)

    def _evaluator_defaults(self) -> dict:
        """The evaluators' fields this config fixes (`make_evaluators`' defaults)."""
        t = self.config.target
        return dict(target=t.name, num_classes=t.num_classes,
                    picture_input=next(iter(self.inputs)), loss=t.loss,
                    **{k: t[k] for k in ("mean", "std") if k in t})

