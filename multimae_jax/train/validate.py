"""Configuration checks that run before anything is compiled; each error is one line naming
the config field."""
import dataclasses
import functools
import math
import os
import re

import jax

from multimae_jax import modalities
from multimae_jax.masking import GATHER_GRADS
from multimae_jax.data.pipeline import AUGMENTS, WORKER_MODES
from multimae_jax.data.taskonomy_transforms import TASKONOMY_TASKS, TaskonomyTask
from multimae_jax.models import presets
from multimae_jax.models.input_adapters import patch_dims
from multimae_jax.models.layers import ATTENTION
from multimae_jax.train import sharding
from multimae_jax.train.pretrain import config_modalities
from multimae_jax.train.step import DTYPES
from multimae_jax.train.task_balancing import BALANCERS
from multimae_jax.train.validate_classify import CLASSIFY_RANGES, validate_classify


class ConfigError(ValueError):
    pass


# (test, rule) pairs for single numeric fields; NaN fails every test.
_AT_LEAST_ONE = (lambda v: v >= 1, ">= 1")
_NON_NEGATIVE = (lambda v: math.isfinite(v) and v >= 0, "finite and >= 0")
_POSITIVE = (lambda v: math.isfinite(v) and v > 0, "finite and > 0")
_BELOW_ONE = (lambda v: 0 <= v < 1, "in [0, 1)")
_RANGES = {  # every objective's
    "model.image_size": _AT_LEAST_ONE,
    "model.patch_size": _AT_LEAST_ONE,
    "model.num_global_tokens": _NON_NEGATIVE,
    "model.drop_path_rate": _BELOW_ONE,
    "data.global_batch_size": _AT_LEAST_ONE,
    "data.num_workers": _NON_NEGATIVE,
    "train.grad_accum_steps": _AT_LEAST_ONE,
    "train.log_every": _AT_LEAST_ONE,
    "train.picture_every": _AT_LEAST_ONE,
    "train.checkpoint_every": _AT_LEAST_ONE,
    "train.keep_checkpoints": (lambda v: v >= 1,
                               ">= 1 (Orbax's max_to_keep; 0 would keep nothing)"),
    "train.max_nonfinite_steps": _AT_LEAST_ONE,
    "optimizer.min_lr": _NON_NEGATIVE,
    "optimizer.warmup_epochs": _NON_NEGATIVE,
    "optimizer.b1": _BELOW_ONE,
    "optimizer.b2": _BELOW_ONE,
    "optimizer.eps": _POSITIVE,
    "optimizer.weight_decay": _NON_NEGATIVE,
}
_PRETRAIN_RANGES = {
    "data.hflip": (lambda v: 0 <= v <= 1, "in [0, 1] (a flip probability)"),
    "model.decoder_dim": _AT_LEAST_ONE,
    "model.decoder_depth": _NON_NEGATIVE,
    "model.decoder_num_heads": _AT_LEAST_ONE,
    "optimizer.blr": _POSITIVE,
}
_FINETUNE_RANGES = {
    "optimizer.lr": _POSITIVE,
    "optimizer.layer_decay": (lambda v: 0 < v <= 1, "in (0, 1] (1 = no layer decay)"),
    "data.eval_batch_size": _AT_LEAST_ONE,
}


def validate(config, num_devices: int, num_processes: int) -> None:
    objective = config.get("objective", "pretrain")
    if objective in ("pretrain", "features"):  # 'features' evaluates a pre-training config
        ins, outs = _validate_tasks(config, ("input_tasks", "output_tasks"))
        _validate_ranges(config, {**_RANGES, **_PRETRAIN_RANGES})
        _validate_patches(config, {**ins, **outs})
        _validate_decoder(config)
        _validate_masking(config)
    elif objective == "finetune":
        _validate_ranges(config, {**_RANGES, **_FINETUNE_RANGES})
        _validate_patches(config, _validate_tasks(config, ("input_tasks",))[0])
        _validate_finetune(config)
        _validate_max_images(config)
    elif objective in ("classify", "linear_probe"):
        _validate_ranges(config, {**_RANGES, **CLASSIFY_RANGES})
        _validate_patches(config, _validate_tasks(config, ("input_tasks",))[0])
        validate_classify(config, ConfigError)
        _validate_max_images(config)
    else:
        raise ConfigError(f"config.objective={objective!r}: expected one of 'pretrain', "
                          "'finetune', 'classify', 'linear_probe', 'features'")
    _validate_encoder(config)
    _validate_compute(config)
    _validate_mesh(config, num_devices)
    _validate_batch(config, num_devices, num_processes)
    _validate_data(config)
    _validate_train(config)
    _validate_optimizer(config)


def _validate_tasks(config, fields) -> tuple[dict, dict]:
    """({name: Modality} of the inputs, of the outputs (pre-training)), every name known."""
    mc = config.model
    try:
        registry = modalities.with_overrides(config.modalities.to_dict())
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for field in fields:
        for task in mc[field]:
            if task not in registry:
                raise ConfigError(f"config.model.{field}: unknown modality '{task}' (known: "
                                  f"{sorted(registry)}; define new ones in config.modalities)")
    if "output_tasks" not in fields:
        return modalities.resolve(mc.input_tasks, registry), {}
    try:
        ins, outs, _ = config_modalities(config)
    except ValueError as e:
        raise ConfigError(f"config.model.output_tasks: {e}") from None
    return ins, outs


def _validate_ranges(config, ranges: dict) -> None:
    for field, (test, rule) in ranges.items():
        value = functools.reduce(lambda c, key: c[key], field.split("."), config)
        if not test(value):
            raise ConfigError(f"config.{field}={value}: must be {rule}")


def _validate_patches(config, mods: dict) -> None:
    """Every task's tokens must tile the same (image_size / patch_size)^2 grid: the encoder
    concatenates them and each decoder reads them on that grid. A task at 1/s resolution uses
    patches of patch_size // s (input_adapters.patch_dims), so s must divide the patch size (and
    then divides the image size too)."""
    mc = config.model
    if mc.image_size % mc.patch_size:
        raise ConfigError(f"config.model.image_size={mc.image_size}: not a multiple of the "
                          f"patch size {mc.patch_size}")
    for name, m in mods.items():
        s = m.stride_level
        if s < 1 or s * patch_dims(mc.patch_size, s)[0] != mc.patch_size:
            raise ConfigError(f"config.modalities.{name}.stride_level={s}: must divide "
                              f"config.model.patch_size={mc.patch_size}, so that a {name} token "
                              f"covers the same {mc.patch_size}px patch as the other tasks'")


def _validate_decoder(config) -> None:
    mc = config.model
    if mc.decoder_dim % mc.decoder_num_heads:
        raise ConfigError(f"config.model.decoder_num_heads={mc.decoder_num_heads}: must divide "
                          f"config.model.decoder_dim={mc.decoder_dim}")


def _validate_finetune(config) -> None:
    """The data recipe, the head, the target and its loss (train/finetune.py)."""
    from multimae_jax.train.finetune import HEADS, LOSSES, RECIPES  # the objective's tables
    d, t = config.data, config.target
    if d.recipe not in RECIPES:
        raise ConfigError(f"config.data.recipe={d.recipe!r}: expected one of {sorted(RECIPES)}")
    if t.mask_valid and d.mask != "mask_valid":
        raise ConfigError(f"config.target.mask_valid=True needs config.data.mask='mask_valid' "
                          f"(the loss reads that batch entry), not {d.mask!r}")
    if d.recipe in ("depth", "taskonomy") and not d.mask:
        raise ConfigError(f"config.data.recipe={d.recipe!r} needs a validity mask: set "
                          "config.data.mask='mask_valid' and config.target.mask_valid=True")
    if d.recipe == "taskonomy":
        _validate_taskonomy(config)
    if d.recipe == "depth" and (t.get("std", 0) <= 0 or "mean" not in t):
        raise ConfigError(f"config.target.mean / std: the depth recipe standardises the target "
                          f"with them; std must be > 0, got {t.get('std')}")
    if config.head.type not in HEADS:
        raise ConfigError(f"config.head.type={config.head.type!r}: expected one of {sorted(HEADS)}")
    if config.target.loss not in LOSSES:
        raise ConfigError(f"config.target.loss={config.target.loss!r}: expected one of "
                          f"{sorted(LOSSES)}")
    if config.target.num_classes < 1:
        raise ConfigError(f"config.target.num_classes={config.target.num_classes}: must be >= 1")
    unknown = [t for t in config.head.get("main_tasks", ()) if t not in config.model.input_tasks]
    if unknown:
        raise ConfigError(f"config.head.main_tasks: {unknown} are not input tasks "
                          f"{list(config.model.input_tasks)}")
    if config.head.type == "dpt":
        _validate_dpt(config)


def _validate_max_images(config) -> None:
    """The fine-tuning objectives' official subset sizes."""
    for field in ("max_train_images", "max_val_images"):
        value = config.data[field]
        if value != -1 and value < 1:
            raise ConfigError(f"config.data.{field}={value}: must be -1 (every image) or a "
                              "positive count")


def _validate_taskonomy(config) -> None:
    """The Taskonomy domains of the inputs and the target, and the preprocessing overrides."""
    d = config.data
    domains = (*config.model.input_tasks, d.taskonomy_task)
    unknown = [t for t in domains if t not in TASKONOMY_TASKS]
    if unknown:
        raise ConfigError(f"config.data.taskonomy_task / config.model.input_tasks: {unknown} are "
                          f"not Taskonomy domains (known: {sorted(TASKONOMY_TASKS)})")
    fields = {f.name for f in dataclasses.fields(TaskonomyTask)}
    bad = sorted(set(d.taskonomy_overrides) - fields)
    if bad:
        raise ConfigError(f"config.data.taskonomy_overrides: {bad} are not TaskonomyTask fields "
                          f"{sorted(fields)}")


def _validate_dpt(config) -> None:
    """DPT reads four encoder blocks and fuses token grids halved and doubled in size."""
    mc = config.model
    try:
        depth = (presets.vit_preset(mc.size) | mc.overrides.to_dict())["depth"]
    except ValueError as e:
        raise ConfigError(f"config.model.size={mc.size}: {e}") from None
    hooks = tuple(config.head.hooks)
    if len(hooks) != 4 or not all(0 <= h < depth for h in hooks):
        raise ConfigError(f"config.head.hooks={hooks}: DPT needs four encoder block indices in "
                          f"0..{depth - 1} (the encoder has {depth} blocks)")
    if (mc.image_size // mc.patch_size) % 2:
        raise ConfigError(f"config.model.image_size={mc.image_size}: the DPT head needs an even "
                          f"number of patches per side (a multiple of {2 * mc.patch_size})")


def _validate_encoder(config) -> None:
    mc = config.model
    try:
        encoder = presets.vit_preset(mc.size) | mc.overrides.to_dict()
    except ValueError as e:
        raise ConfigError(f"config.model.size={mc.size}: {e}") from None
    dim, heads = encoder["dim_tokens"], encoder["num_heads"]
    if heads < 1 or dim % heads:
        raise ConfigError(f"config.model.overrides: num_heads={heads} must divide "
                          f"dim_tokens={dim} (model.size={mc.size} and its overrides)")


def _validate_compute(config) -> None:
    """How the model computes: model.attention, model.scan_blocks, model.gather_grad."""
    mc = config.model
    for field, allowed in (("attention", ATTENTION), ("gather_grad", GATHER_GRADS),
                           ("scan_blocks", (False, True))):
        if mc[field] not in allowed or not isinstance(mc[field], type(allowed[0])):
            raise ConfigError(f"config.model.{field}={mc[field]!r}: expected one of {allowed}")
    if mc.attention != "cudnn":
        return
    # jax.nn.dot_product_attention(implementation='cudnn') and the checks it makes
    bad = "config.model.attention='cudnn': "
    if (backend := jax.default_backend()) != "gpu":
        raise ConfigError(f"{bad}cuDNN attention needs an NVIDIA GPU; this backend is {backend}")
    if config.train.compute_dtype != "bfloat16":
        raise ConfigError(f"{bad}cuDNN attention takes bf16 (or fp16) inputs; set "
                          f"config.train.compute_dtype='bfloat16', not "
                          f"{config.train.compute_dtype!r}")
    encoder = presets.vit_preset(mc.size) | mc.overrides.to_dict()
    if encoder.get("attn_drop_rate", 0) > 0:
        raise ConfigError(f"{bad}cuDNN attention has no attention dropout; "
                          f"config.model.overrides.attn_drop_rate={encoder['attn_drop_rate']} "
                          f"must be 0")
    capability = getattr(jax.devices()[0], "compute_capability", "0")
    most = 256 if float(capability) >= 9 else 128  # Hopper on: 256
    heads = {"config.model.overrides (encoder)": (encoder["dim_tokens"], encoder["num_heads"])}
    if "decoder_dim" in mc:
        heads["config.model.decoder_dim / decoder_num_heads"] = (mc.decoder_dim,
                                                                 mc.decoder_num_heads)
    for where, (dim, num_heads) in heads.items():
        head_dim = dim // num_heads
        if head_dim % 8 or head_dim > most:
            raise ConfigError(f"{bad}cuDNN attention needs a head dimension that is a multiple "
                              f"of 8 and at most {most} on this GPU; {where} give {dim} / "
                              f"{num_heads} = {head_dim}")


def _validate_masking(config) -> None:
    mc, masking = config.model, config.masking
    tokens_per_task = (mc.image_size // mc.patch_size) ** 2
    total = len(mc.input_tasks) * tokens_per_task
    k = masking.num_encoded_tokens
    if not 0 < k <= total:
        raise ConfigError(f"config.masking.num_encoded_tokens={k}: must be in [1, {total}] (the "
                          f"tokens of {list(mc.input_tasks)} at {mc.image_size}px)")
    alphas = masking.alphas
    values = tuple(alphas) if isinstance(alphas, (tuple, list)) else (alphas,)
    if isinstance(alphas, (tuple, list)) and len(values) != len(mc.input_tasks):
        raise ConfigError(f"config.masking.alphas={alphas}: expected one value, or one per "
                          f"input task {list(mc.input_tasks)}")
    if not all(isinstance(a, (int, float)) and math.isfinite(a) and a > 0 for a in values):
        raise ConfigError(f"config.masking.alphas={alphas}: must be finite and > 0 (Dirichlet "
                          f"concentrations of the per-task token shares)")


def _validate_mesh(config, num_devices: int) -> None:
    spec = config.mesh.to_dict()
    for axis, size in spec.items():
        if axis not in sharding.AXES:
            raise ConfigError(f"config.mesh.{axis}: unknown axis (known: {list(sharding.AXES)})")
        if not (size == -1 or size >= 1):
            raise ConfigError(f"config.mesh.{axis}={size}: must be >= 1, or -1 for the "
                              f"remaining devices")
    try:
        sharding.mesh_shape(spec, num_devices)
    except ValueError as e:  # messages start with "config.mesh:" and give the device count
        raise ConfigError(str(e)) from None


def _validate_batch(config, num_devices: int, num_processes: int) -> None:
    gb, accum = config.data.global_batch_size, config.train.grad_accum_steps
    if gb % num_devices:
        raise ConfigError(f"config.data.global_batch_size={gb}: not divisible by the "
                          f"{num_devices} data-parallel devices")
    if gb % (accum * num_processes) or (gb // accum) % num_devices:
        raise ConfigError(f"config.train.grad_accum_steps={accum}: the global batch {gb} must split "
                          f"into {accum} micro-batches divisible by {num_devices} devices")


def _validate_data(config) -> None:
    d = config.data
    for field, allowed in (("augment", AUGMENTS), ("worker_mode", WORKER_MODES)):
        if d.get(field, allowed[0]) not in allowed:
            raise ConfigError(f"config.data.{field}={d[field]!r}: expected one of {allowed}")
    if d.get("augment") == "device" and not d.device_canvas >= config.model.image_size:
        raise ConfigError(f"config.data.device_canvas={d.device_canvas}: must be >= "
                          f"config.model.image_size={config.model.image_size} (each image "
                          f"travels in a canvas of this side)")
    path = config.data.path
    if not path and config.data.synthetic_samples < 1:
        raise ConfigError(f"config.data.synthetic_samples={config.data.synthetic_samples}: must "
                          f"be >= 1 when config.data.path is empty (synthetic scenes)")
    if path and not path.startswith("tfds:") and not os.path.exists(path):
        raise ConfigError(f"config.data.path={path}: does not exist")


def _validate_train(config) -> None:
    t = config.train
    if t.num_steps <= 0 and t.epochs <= 0:
        raise ConfigError(f"config.train.num_steps={t.num_steps}: with config.train.epochs="
                          f"{t.epochs} there is nothing to train; set one of them > 0 "
                          f"(num_steps > 0 overrides epochs)")
    for field in ("compute_dtype", "residual_dtype"):
        if t[field] not in DTYPES:
            raise ConfigError(f"config.train.{field}={t[field]}: "
                              f"expected one of {sorted(DTYPES)}")
    if t.get("task_balancer", "none") not in BALANCERS:
        raise ConfigError(f"config.train.task_balancer={t.task_balancer}: expected "
                          f"one of {list(BALANCERS)}")


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
    for rule in o.lr_mults:
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
                and isinstance(rule[1], (int, float))):
            raise ConfigError(f"config.optimizer.lr_mults: {rule!r} is not a (regex, "
                              f"multiplier) pair")
        try:
            re.compile(rule[0])
        except re.error as e:
            raise ConfigError(f"config.optimizer.lr_mults: bad regex {rule[0]!r} ({e})") from None
