"""Linear probing, the MAE protocol (facebookresearch/mae `main_linprobe.py`): the encoder frozen,
a head of BatchNorm (no affine, torch's statistics) and a linear layer on its pooled features of
rgb (or of any subset of the pre-training modalities: config.model.input_tasks), trained with
LARS (`train/lars.py`) at lr = blr x batch / 256 (blr 0.1, batch 16384), 90 epochs with 10 of
warm-up under MAE's schedule, cross-entropy, RandomResizedCrop and flip only; evaluation:
top-1 / top-5 after resize 256 and centre crop 224.

Config (configs/linear_probe.py): the classification sections (train/classify.py) with
head.pool ('mean': all tokens, the global one included; 'global': the global token) and
optimizer.momentum / trust_coefficient. The encoder's forward runs without gradient (only the
head's are computed) and it never changes; the BatchNorm's running statistics update every
step (the objective's `updates_buffers`).
"""
import jax
import jax.numpy as jnp
import optax

from multimae_jax import losses
from multimae_jax.models.probe import LinearProbeHead
from multimae_jax.train.classify import ClassifyObjective
from multimae_jax.train.features import encoder_variables, feature_model
from multimae_jax.train.lars import lars
from multimae_jax.train.step import DTYPES

HEAD_KEY = "output_adapters"  # the only trained parameters (and their buffers)


class LinearProbeObjective(ClassifyObjective):
    """A frozen encoder and a trained LinearProbeHead (see the module docstring)."""
    updates_buffers = True

    def __init__(self, config):
        super().__init__(config)
        self.encoder = feature_model(config, tuple(self.inputs.values()))
        self.probe = self.head(config)

    @staticmethod
    def head(config):
        return LinearProbeHead(config.target.num_classes, pool=config.head.pool,
                               bn_groups=config.head.bn_groups,
                               dtype=DTYPES[config.train.compute_dtype])

    @property
    def mixing(self) -> bool:
        return False

    def make_optimizer(self, lr_schedule, wd_schedule):
        """LARS on the head; no update (and no optimizer state) for the rest."""
        del wd_schedule  # LARS decays with the constant optimizer.weight_decay (MAE: 0)
        o = self.config.optimizer
        labels = lambda trainable: {"params": {k: "probe" if k == HEAD_KEY else "frozen"
                                               for k in trainable["params"]}}
        return optax.multi_transform(
            {"probe": lars(lr_schedule, o.momentum, o.trust_coefficient, o.weight_decay),
             "frozen": optax.set_to_zero()}, labels)

    def loss(self, trainable, buffers, batch, key):
        """(loss, ({'loss': loss}, buffers with the head's new running statistics)): the
        frozen encoder's tokens without gradient, the head in train mode, cross-entropy."""
        del key  # nothing random: no drop path in the frozen encoder, no dropout in the head
        params, name = trainable["params"], self.config.target.name
        x = self.model_inputs(batch)
        variables = {"params": encoder_variables(params, self.inputs)}
        if buffers.get("input_adapters"):  # fixed positional embeddings
            variables["buffers"] = encoder_variables(buffers, self.inputs)
        tokens = jax.lax.stop_gradient(self.encoder.apply(variables, x, train=False))
        logits, updated = self.probe.apply(
            {"params": params[HEAD_KEY][name], "buffers": buffers[HEAD_KEY][name]}, tokens,
            train=True, mutable=["buffers"])
        loss = losses.label_smoothing_cross_entropy(logits.astype(jnp.float32), batch["label"],
                                                    0.0)
        new = {**buffers, HEAD_KEY: {**buffers[HEAD_KEY], name: updated["buffers"]}}
        return loss, ({"loss": loss}, new)
