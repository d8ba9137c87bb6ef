"""Configuration checks that run before anything is compiled; each error is one line naming
the config field."""
import os
import re

from multimae_jax import modalities
from multimae_jax.models.input_adapters import patch_dims
from multimae_jax.train.step import DTYPES, config_modalities
from multimae_jax.train.task_balancing import BALANCERS


class ConfigError(ValueError):
    pass


def validate(config, num_devices: int, num_processes: int) -> None:
    mc = config.model
    try:
        registry = modalities.with_overrides(config.modalities.to_dict())
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for field in ("input_tasks", "output_tasks"):
        for task in mc[field]:
            if task not in registry:
                raise ConfigError(f"config.model.{field}: unknown modality '{task}' (known: "
                                  f"{sorted(registry)}; define new ones in config.modalities)")
    try:
        config_modalities(config)
    except ValueError as e:
        raise ConfigError(f"config.model.output_tasks: {e}") from None
    ph, pw = patch_dims(mc.patch_size, 1)
    if mc.image_size % ph or mc.image_size % pw:
        raise ConfigError(f"config.model.image_size={mc.image_size}: not a multiple of the "
                          f"patch size {mc.patch_size}")
    total = len(mc.input_tasks) * (mc.image_size // ph) * (mc.image_size // pw)  # every task alike
    k = config.masking.num_encoded_tokens
    if not 0 < k <= total:
        raise ConfigError(f"config.masking.num_encoded_tokens={k}: must be in [1, {total}] (the "
                          f"tokens of {list(mc.input_tasks)} at {mc.image_size}px)")
    gb, accum = config.data.global_batch_size, config.train.grad_accum_steps
    if gb % num_devices:
        raise ConfigError(f"config.data.global_batch_size={gb}: not divisible by the "
                          f"{num_devices} data-parallel devices")
    if gb % (accum * num_processes) or (gb // accum) % num_devices:
        raise ConfigError(f"config.train.grad_accum_steps={accum}: the global batch {gb} must split "
                          f"into {accum} micro-batches divisible by {num_devices} devices")
    path = config.data.path
    if path and not path.startswith("tfds:") and not os.path.exists(path):
        raise ConfigError(f"config.data.path={path}: does not exist")
    for field in ("compute_dtype", "residual_dtype"):
        if config.train[field] not in DTYPES:
            raise ConfigError(f"config.train.{field}={config.train[field]}: "
                              f"expected one of {sorted(DTYPES)}")
    _validate_optimizer(config)


def _validate_optimizer(config) -> None:
    o = config.optimizer
    if o.warmup_steps > 0 and o.warmup_epochs <= 0:
        # utils/native_scaler.py: cosine_scheduler drops the warm-up ramp when warmup_epochs is 0
        # but still shortens the cosine by warmup_steps, and fails its length assert
        raise ConfigError(f"config.optimizer.warmup_steps={o.warmup_steps}: needs "
                          f"config.optimizer.warmup_epochs > 0 (the official cosine_scheduler "
                          f"fails otherwise); set warmup_epochs to any positive value")
    for field in ("clip_grad", "skip_grad"):
        if o[field] is not None and not o[field] > 0:
            raise ConfigError(f"config.optimizer.{field}={o[field]}: must be > 0 or None (off)")
    if o.weight_decay_end is not None and o.weight_decay == 0 and o.weight_decay_end != 0:
        # run_pretraining_multimae.py schedules only param groups whose weight_decay is > 0
        raise ConfigError(f"config.optimizer.weight_decay_end={o.weight_decay_end}: has no "
                          f"effect with config.optimizer.weight_decay=0 (official); set it to None")
    if config.train.task_balancer not in BALANCERS:
        raise ConfigError(f"config.train.task_balancer={config.train.task_balancer}: expected "
                          f"one of {list(BALANCERS)}")
    for rule in o.lr_mults:
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
                and isinstance(rule[1], (int, float))):
            raise ConfigError(f"config.optimizer.lr_mults: {rule!r} is not a (regex, "
                              f"multiplier) pair")
        try:
            re.compile(rule[0])
        except re.error as e:
            raise ConfigError(f"config.optimizer.lr_mults: bad regex {rule[0]!r} ({e})") from None
