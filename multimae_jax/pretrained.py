"""Load official, timm or our own checkpoints (`multimae_jax.checkpoint_format`).

    model, variables = multimae_jax.load_pretrained("multimae-b_98_rgb+-depth-semseg_1600e_multivit-afff3f8c.pth")
    preds, masks = model.apply(variables, inputs, rngs={"masking": key}, num_encoded_tokens=98)
"""
from pathlib import Path

import jax
import numpy as np

from multimae_jax import checkpoint_format
from multimae_jax.convert import export, finetune, infer, official, pth_reader, timm
from multimae_jax.models import presets, spec


def official_state_dict(path) -> tuple[dict, dict]:
    """(official-format state_dict, model hints) of a .pth (official or timm), .safetensors or
    .npz file. Hints come from the training `args` stored in official checkpoints."""
    path = Path(path)
    if path.suffix in (".safetensors", ".npz"):
        sd, hints = export.load_exported(path), {}
    else:
        obj = pth_reader.read_pth(path)
        sd = pth_reader.extract_state_dict(obj, path)
        hints = _hints_from_args(obj.get("args") if isinstance(obj, dict) else None, sd)
    if timm.is_timm_state_dict(sd):
        sd = timm.timm_to_official(sd, str(path))
    return sd, hints


def _hints_from_args(args, sd) -> dict:
    """What the official training arguments say about the architecture (heads, patch size)."""
    if args is None:
        return {}
    hints = {}
    size = str(getattr(args, "model", "")).rsplit("_", 1)[-1]
    width = sd["global_tokens"].shape[-1] if "global_tokens" in sd else None
    if size in presets.VIT_PRESETS and presets.VIT_PRESETS[size]["dim_tokens"] == width:
        hints["num_heads"] = presets.VIT_PRESETS[size]["num_heads"]
    for arg, key in (("decoder_num_heads", "decoder_num_heads"), ("patch_size", "patch_size")):
        if isinstance(getattr(args, arg, None), int):
            hints[key] = getattr(args, arg)
    return hints


def _existing(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    return path


def load_pretrained(path, **model_overrides):
    """Returns (model, variables) for an official MultiMAE/MultiViT or timm ViT checkpoint
    (.pth, or an exported .safetensors / .npz), or a multimae_jax checkpoint folder, training
    workdir or checkpoint root (its latest step).

    `model_overrides` (num_heads, decoder_num_heads, patch_size, emb_padding_idx, main_tasks,
    hooks) fix what weights do not record; see `multimae_jax.convert.infer.infer_model`.
    A file that cannot be read raises `CheckpointFileError` (a ValueError) naming it; pickled
    code in a .pth is refused, never run.
    """
    path = _existing(path)
    if path.is_dir():
        return checkpoint_format.load_checkpoint(path)
    sd, hints = official_state_dict(path)
    try:
        model = infer.infer_model(sd, **(hints | model_overrides))
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: cannot build a model from its weights: {e}") from e
    variables = official.official_to_flax(sd, spec.abstract_variables(model), str(path))
    return model, jax.tree.map(np.asarray, variables)


def any_state_dict(path) -> dict:
    """The official-format state_dict of a checkpoint in any format that `load_pretrained`
    reads: a file's own, or a multimae_jax checkpoint's (a folder, workdir or checkpoint root:
    its latest step) under the official names."""
    path = _existing(path)
    if path.is_dir():
        return official.flax_to_official(checkpoint_format.load_checkpoint(path)[1])
    return official_state_dict(path)[0]


def finetune_init(variables: dict, path):
    """The new model's `variables` with the pre-trained checkpoint at `path` (any format that
    `load_pretrained` reads) loaded as the official fine-tuning scripts do; see
    `multimae_jax.convert.finetune`. Returns (variables, report)."""
    return finetune.load_for_finetuning(variables, any_state_dict(path), str(path))
