"""Configuration checks that run before anything is compiled; each error is one line naming
the config field."""
import os

from multimae_jax import modalities
from multimae_jax.models.input_adapters import patch_dims
from multimae_jax.train.step import DTYPES


class ConfigError(ValueError):
    pass


def validate(config, num_devices: int, num_processes: int) -> None:
    mc = config.model
    for field in ("input_tasks", "output_tasks"):
        for task in mc[field]:
            if task not in modalities.MODALITIES:
                raise ConfigError(f"config.model.{field}: unknown modality '{task}' (known: "
                                  f"{sorted(modalities.MODALITIES)})")
    for task in mc.output_tasks:
        target = modalities.get(task).target
        if target not in mc.input_tasks:
            raise ConfigError(f"config.model.output_tasks: '{task}' needs input '{target}' as target")
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
    if config.train.compute_dtype not in DTYPES:
        raise ConfigError(f"config.train.compute_dtype={config.train.compute_dtype}: "
                          f"expected one of {sorted(DTYPES)}")
