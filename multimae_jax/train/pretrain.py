"""The pre-training objective: the MultiMAE of config.model, masked multi-task reconstruction with
the official losses and task balancing, the pre-training data pipeline and reconstruction
pictures. The generic `Trainer` (train/step.py) and loop (train/loop.py) run it.

An objective supplies: `model`, `batch_keys` (what a batch holds), `init_variables(key)`,
`init_extra()` (trainable state beside the model's parameters: here the task balancer),
`base_lr(config)` and `lr_note()` (how it was computed, for the log),
`make_optimizer(lr_schedule, wd_schedule)`, `start_from(state, state_sharding, verbose)` (the
state of a new run: e.g. pre-trained weights loaded into the initialised one),
`evaluators(trainer, steps_per_epoch)` -> ({name: evaluator}, {name: every N steps}),
`loss(trainable, buffers, batch, key)` -> (value to minimise, {'loss': logged loss, ...}),
`predict(params, buffers, batch, key)` and `picture(predicted)` (for pictures), and
`train_data(process_index, process_count)` -> (source, dataset).
"""
import jax
import numpy as np

from multimae_jax import losses, modalities
from multimae_jax.data.device_augment import (box_key, crop_resize_batch, device_modalities,
                                              random_canvas_batch)
from multimae_jax.data.pipeline import make_dataset, make_source
from multimae_jax.data.transforms import prepare_batch, random_stored_batch
from multimae_jax.models.presets import pretrain_multimae
from multimae_jax.models.spec import example_inputs
from multimae_jax.train import task_balancing
from multimae_jax.train.features import knn_evaluators
from multimae_jax.train.optimizer import make_optimizer, scaled_lr
from multimae_jax.train.step import DTYPES, Trainer
from multimae_jax.viz import reconstruction_grid


def config_modalities(config) -> tuple[dict, dict, dict]:
    """({name: Modality} of the encoder inputs, of the decoder outputs, of the data read from
    disk (inputs, then output-only modalities)), with config.modalities applied."""
    registry = modalities.with_overrides(config.modalities.to_dict())
    ins = modalities.resolve(config.model.input_tasks, registry)
    outs = modalities.resolve(config.model.output_tasks, registry)
    return ins, outs, modalities.data_modalities(outs.values(), ins.values())


def build_model(config):
    """The MultiMAE of config.model, in config.train.compute_dtype."""
    mc = config.model
    ins, outs, _ = config_modalities(config)
    return pretrain_multimae(
        mc.size, tuple(ins.values()), tuple(outs.values()), mc.image_size, mc.patch_size,
        mc.decoder_dim, mc.decoder_depth, mc.decoder_num_heads,
        num_global_tokens=mc.num_global_tokens,
        fp32_output_adapters=tuple(config.train.fp32_output_adapters),
        dtype=DTYPES[config.train.compute_dtype], remat=config.train.remat,
        residual_dtype=DTYPES[config.train.residual_dtype],
        drop_path_rate=mc.drop_path_rate, attention=mc.attention, scan_blocks=mc.scan_blocks,
        gather_grad=mc.gather_grad, **mc.overrides.to_dict())


class PretrainObjective:
    """Masked multi-modal reconstruction (official `run_pretraining_multimae.py:
    train_one_epoch`): masks drawn from the step's key, per-task losses in float32, weighted by
    config.train.task_balancer; the logged 'loss' is their unweighted sum, as the official
    loss_value."""
    training_pictures = True  # reconstructions of a training batch every train.picture_every

    def __init__(self, config):
        self.config = config
        self.model = build_model(config)
        _, self.output_modalities, self.data_modalities = config_modalities(config)
        self.device_augment = config.data.get("augment", "host") == "device"
        self.batch_keys = tuple(self.data_modalities) + (tuple(
            box_key(m.name) for m in device_modalities(self.data_modalities.values()))
            if self.device_augment else ())
        self.tasks = tuple(config.model.output_tasks)  # the order of the balancer's log_vars

    def init_variables(self, key) -> dict:
        return self.model.init(key, example_inputs(self.model), mask_inputs=False)

    def init_extra(self) -> dict:
        balancer = task_balancing.init_balancer(self.config.train.task_balancer, len(self.tasks))
        return {"balancer": balancer} if balancer else {}

    #: The official linear scaling: lr = blr x global batch / 256.
    base_lr = staticmethod(scaled_lr)

    def lr_note(self) -> str:
        return f" (blr {self.config.optimizer.blr} x {self.config.data.global_batch_size} / 256)"

    def make_optimizer(self, lr_schedule, wd_schedule):
        return make_optimizer(self.config.optimizer, lr_schedule, wd_schedule)

    def start_from(self, state, state_sharding, verbose: bool):
        """The state a new run starts from: pre-training starts from its initialisation."""
        del state_sharding, verbose
        return state

    def evaluators(self, trainer, steps_per_epoch: int):
        """The k-NN evaluators of config.evals on the encoder's rgb features, if any
        (train/features.py): ({name: evaluator}, {name: every N steps})."""
        if not self.config.get("evals"):
            return {}, {}
        return knn_evaluators(self.config, trainer, steps_per_epoch)

    def forward(self, params, buffers, batch, key, train: bool):
        """Model inputs, predictions, masks and per-task losses of one (micro-)batch; with
        data.augment='device' the batch's canvases are cropped and resized first
        (`device_augment.crop_resize_batch`)."""
        mc = self.config.masking
        batch = {t: batch[t] for t in self.batch_keys}
        if self.device_augment:
            batch = crop_resize_batch(batch, self.data_modalities.values(),
                                      self.config.model.image_size)
        inputs = prepare_batch(batch, self.data_modalities)
        mask_key, drop_key = jax.random.split(key)
        preds, masks = self.model.apply(
            {"params": params, "buffers": buffers}, inputs,
            rngs={"masking": mask_key, "dropout": drop_key},
            num_encoded_tokens=mc.num_encoded_tokens, alphas=tuple(mc.alphas)
            if isinstance(mc.alphas, (tuple, list)) else mc.alphas,
            sample_tasks_uniformly=mc.sample_tasks_uniformly, train=train)
        task_losses = losses.pretraining_losses(preds, inputs, masks, self.output_modalities,
                                                self.config.model.patch_size,
                                                self.config.train.loss_on_unmasked)
        return inputs, preds, masks, task_losses

    def loss(self, trainable, buffers, batch, key):
        *_, task_losses = self.forward(trainable["params"], buffers, batch, key, train=True)
        weighted = task_balancing.weigh(trainable.get("balancer"), task_losses, self.tasks)
        logged = {"loss": sum(task_losses.values()),
                  **{f"loss/{t}": v for t, v in task_losses.items()}}
        if "balancer" in trainable:
            logged.update({f"loss_weighted/{t}": v for t, v in weighted.items()})
        return sum(weighted.values()), logged

    def predict(self, params, buffers, batch, key):
        """(inputs, predictions, masks) of `batch`, for pictures."""
        inputs, preds, masks, _ = self.forward(params, buffers, batch, key, train=False)
        return inputs, preds, masks

    def picture(self, predicted) -> np.ndarray:
        """Masked input | prediction | target rows of the predicted samples: (H, W, 3) uint8."""
        return reconstruction_grid(*predicted, self.output_modalities,
                                   patch_size=self.config.model.patch_size)

    def random_batch(self, key, batch_size: int) -> dict:
        """Random arrays in the layout and dtypes of the data pipeline's batches (for the
        benchmark; `transforms.random_stored_batch`, or with data.augment='device'
        `device_augment.random_canvas_batch`, so the step times the device augmentation)."""
        if self.device_augment:
            return random_canvas_batch(key, self.data_modalities.values(), batch_size,
                                       self.config.model.image_size,
                                       self.config.data.device_canvas)
        return random_stored_batch(key, self.data_modalities.values(), batch_size,
                                   self.config.model.image_size)

    def train_data(self, process_index: int, process_count: int):
        """(source, dataset): the config's data, augmented as in the official pre-training,
        batched per process, repeated forever."""
        c = self.config
        mods = tuple(self.data_modalities.values())
        source = make_source(c.data.path, mods, synthetic_samples=c.data.synthetic_samples,
                             synthetic_size=c.model.image_size, seed=c.seed,
                             allow_incomplete=c.data.allow_incomplete,
                             tfds_fields=c.data.tfds_fields.to_dict())
        dataset = make_dataset(source, mods, image_size=c.model.image_size,
                               local_batch_size=c.data.global_batch_size // process_count,
                               seed=c.seed, process_index=process_index,
                               process_count=process_count, num_workers=c.data.num_workers,
                               skip_corrupt=c.data.skip_corrupt, hflip=c.data.hflip,
                               augment=c.data.get("augment", "host"),
                               device_canvas=c.data.get("device_canvas", 384),
                               worker_mode=c.data.get("worker_mode", "process"),
                               jpeg_draft=c.data.get("jpeg_draft", False))
        return source, dataset


def pretrain_trainer(config, mesh, total_steps: int, warmup_steps: int, base_lr: float) -> Trainer:
    """The Trainer of the pre-training objective of `config` on `mesh`."""
    return Trainer(PretrainObjective(config), config, mesh, total_steps, warmup_steps, base_lr)
