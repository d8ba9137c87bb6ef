"""Load official, timm or our own checkpoints; save ours (Orbax + the model spec as JSON).

    model, variables = multimae_jax.load_pretrained("multimae-b_98_rgb+-depth-semseg_1600e_multivit-afff3f8c.pth")
    preds, masks = model.apply(variables, inputs, rngs={"masking": key}, num_encoded_tokens=98)
"""
import json
import os
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from multimae_jax.convert import export, finetune, infer, official, pth_reader, timm
from multimae_jax.models import presets, spec
from multimae_jax.train import checkpoint

MODEL_FILE = "model.json"
VARIABLES_DIR = "variables"


def save_checkpoint(model, variables, out_dir) -> Path:
    """Writes `out_dir/model.json` (the model spec) and `out_dir/variables` (Orbax).

    Both are written under temporary names and renamed when complete, so an interrupted save
    never leaves a half-written checkpoint behind.
    """
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / VARIABLES_DIR
    if target.exists():
        raise FileExistsError(f"{target} exists; choose an empty output directory")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(target, variables)  # Orbax writes to a temporary dir and renames on commit
    tmp = out_dir / (MODEL_FILE + ".tmp")
    tmp.write_text(json.dumps(spec.to_spec(model), indent=1))
    os.replace(tmp, out_dir / MODEL_FILE)
    return out_dir


def _load_workdir(path: Path):
    """The latest checkpoint of a pre-training workdir (run_info.json holds the model spec)."""
    model = spec.from_spec(json.loads((path / checkpoint.RUN_INFO).read_text())["model"])
    found = checkpoint.restore_state_only(path)
    if found is None:
        raise ValueError(f"{path}: a training workdir without any checkpoint yet")
    _, state = found
    return model, {"params": state["params"], "buffers": state["buffers"]}


def _load_own(path: Path):
    if (path / checkpoint.CHECKPOINTS).is_dir() and (path / checkpoint.RUN_INFO).is_file():
        return _load_workdir(path)
    model_file = path / MODEL_FILE
    if not model_file.exists():
        raise ValueError(f"{path}: not a multimae_jax checkpoint ({MODEL_FILE} is missing) nor "
                         f"a training workdir ({checkpoint.CHECKPOINTS}/ and {checkpoint.RUN_INFO})")
    model = spec.from_spec(json.loads(model_file.read_text()))
    abstract = spec.abstract_variables(model)
    with ocp.StandardCheckpointer() as ckptr:
        variables = ckptr.restore(path / VARIABLES_DIR, abstract)
    return model, variables


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


def load_pretrained(path, **model_overrides):
    """Returns (model, variables) for an official MultiMAE/MultiViT or timm ViT checkpoint
    (.pth, or an exported .safetensors / .npz), a multimae_jax checkpoint directory, or a
    pre-training workdir (its latest checkpoint).

    `model_overrides` (num_heads, decoder_num_heads, patch_size, emb_padding_idx, main_tasks,
    hooks) fix what weights do not record; see `multimae_jax.convert.infer.infer_model`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if path.is_dir():
        return _load_own(path)
    sd, hints = official_state_dict(path)
    try:
        model = infer.infer_model(sd, **(hints | model_overrides))
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: cannot build a model from its weights: {e}") from e
    variables = official.official_to_flax(sd, spec.abstract_variables(model), str(path))
    return model, jax.tree.map(np.asarray, variables)


def finetune_init(variables: dict, path):
    """The new model's `variables` with the pre-trained checkpoint at `path` (any format that
    `load_pretrained` reads) loaded as the official fine-tuning scripts do; see
    `multimae_jax.convert.finetune`. Returns (variables, report)."""
    path = Path(path)
    if path.is_dir():
        _, own = _load_own(path)
        sd = official.flax_to_official(own)
    else:
        sd, _ = official_state_dict(path)
    return finetune.finetune_init(variables, sd, str(path))
