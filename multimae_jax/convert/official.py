"""Official MultiMAE / MultiViT state_dict <-> Flax variables (the keys of `multimae/multimae.py:
MultiMAE, MultiViT` and of the adapters in `multimae/input_adapters.py`, `output_adapters.py`).

Flax module names mirror the official ones, so a key maps by rule rather than by table:
`a.b.c.weight` -> ('a', 'b', 'c', kernel | scale | embedding), `...bias` -> 'bias', and any other
leaf (pos_emb, mask_token, global_tokens, task_embeddings.<task>) keeps its name. Layouts:

| PyTorch                         | Flax                                      |
|---------------------------------|-------------------------------------------|
| Linear weight (out, in)         | Dense kernel (in, out)                    |
| Conv2d weight (out, in/g, kh, kw) | Conv kernel (kh, kw, in/g, out)         |
| ConvTranspose2d (in, out, kh, kw) | ConvTranspose(transpose_kernel=True) kernel (kh, kw, out, in) |
| pos_emb (1, D, h, w)            | pos_emb (1, h, w, D), collection 'buffers' unless learnable |

The DPT head stores each of its reassemble and `layer_rn` convs twice (`act_postprocess.i.*` and
`scratch.layer_rn.i.*` alias `act_{i+1}_postprocess.*` and `scratch.layer{i+1}_rn.*`); import
keeps one, export writes both so that the official `load_state_dict` finds every key.
"""
import re

import numpy as np
from flax import traverse_util

BUFFERS = "buffers"
_COLLECTIONS = ("params", BUFFERS)
_ALIASES = (  # (alias pattern, canonical replacement)
    (re.compile(r"(^|\.)act_postprocess\.(\d+)\."), lambda m: f"{m[1]}act_{int(m[2]) + 1}_postprocess."),
    (re.compile(r"(^|\.)scratch\.layer_rn\.(\d+)\."), lambda m: f"{m[1]}scratch.layer{int(m[2]) + 1}_rn."),
)
_CANONICAL_TO_ALIAS = (
    (re.compile(r"(^|\.)act_(\d+)_postprocess\."), lambda m: f"{m[1]}act_postprocess.{int(m[2]) - 1}."),
    (re.compile(r"(^|\.)scratch\.layer(\d+)_rn\."), lambda m: f"{m[1]}scratch.layer_rn.{int(m[2]) - 1}."),
)


def _canonical_key(key: str) -> str:
    for pattern, repl in _ALIASES:
        key = pattern.sub(repl, key)
    return key


def _candidates(key: str, value: np.ndarray):
    """(flax path without collection, converted value) pairs that `key` may map to."""
    *module, leaf = key.split(".")
    module = tuple(module)
    if leaf == "weight":
        if value.ndim == 2:
            return [(module + ("kernel",), value.T), (module + ("embedding",), value)]
        if value.ndim == 4:
            return [(module + ("kernel",), value.transpose(2, 3, 1, 0))]
        return [(module + ("scale",), value)]
    if leaf == "bias":
        return [(module + ("bias",), value)]
    if value.ndim == 4:  # channels-first positional embedding grids
        return [(module + (leaf,), value.transpose(0, 2, 3, 1))]
    return [(module + (leaf,), value)]


def official_to_flax(state_dict: dict, target: dict, source: str = "state_dict") -> dict:
    """Maps an official state_dict onto a Flax variables tree.

    Args:
      state_dict: official key -> numpy array (PyTorch layouts).
      target: the model's variables or their abstract shapes (`jax.eval_shape(model.init, ...)`),
        e.g. {'params': {...}, 'buffers': {...}}; only shapes are read.
      source: the file name used in error messages.
    Returns the variables as nested dicts of float32 numpy arrays.
    Raises ValueError listing missing, unexpected and wrongly shaped keys.
    """
    want = traverse_util.flatten_dict(target)
    got, unexpected, wrong_shape = {}, [], []
    canonical = {}
    for key, value in state_dict.items():
        ckey = _canonical_key(key)
        if ckey != key and ckey in state_dict:
            if not np.array_equal(state_dict[ckey], value):
                wrong_shape.append(f"{key}: differs from its alias {ckey}")
            continue
        canonical[ckey] = np.asarray(value)
    for key, value in canonical.items():
        for path, converted in _candidates(key, value):
            full = next(((c,) + path for c in _COLLECTIONS if (c,) + path in want), None)
            if full is None:
                continue
            if tuple(want[full].shape) != converted.shape:
                wrong_shape.append(f"{key}: {tuple(value.shape)} -> Flax {'/'.join(full)} "
                                   f"{converted.shape}, expected {tuple(want[full].shape)}")
            else:
                got[full] = converted.astype(np.float32)
            break
        else:
            unexpected.append(f"{key} {tuple(value.shape)}")
    missing = ["/".join(p) + f" {tuple(want[p].shape)}" for p in want if p not in got]
    if missing or unexpected or wrong_shape:
        raise ValueError(_mismatch_report(source, missing, unexpected, wrong_shape))
    return traverse_util.unflatten_dict(got)


def _mismatch_report(source, missing, unexpected, wrong_shape) -> str:
    lines = [f"{source} does not match the model:"]
    for title, items in (("missing (in the model, not in the file)", missing),
                         ("unexpected (in the file, not in the model)", unexpected),
                         ("wrong shape", wrong_shape)):
        if items:
            shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
            lines.append(f"  {title}: {len(items)}")
            lines.extend(f"    {item}" for item in shown)
    return "\n".join(lines)


def official_key(path) -> str:
    """A Flax variable path inside its collection, ('encoder', '0', 'attn', 'qkv', 'kernel'), ->
    its official state_dict key, 'encoder.0.attn.qkv.weight' (the canonical one of DPT aliases)."""
    *module, leaf = path
    return ".".join([*module, "weight" if leaf in ("kernel", "scale", "embedding") else leaf])


def flax_to_official(variables: dict) -> dict:
    """Flax variables -> official state_dict (numpy, PyTorch layouts), DPT aliases included."""
    out = {}
    for path, value in traverse_util.flatten_dict(dict(variables)).items():
        if path[0] not in _COLLECTIONS:
            continue
        leaf = path[-1]
        value = np.asarray(value, np.float32)
        if leaf == "kernel":
            value = value.T if value.ndim == 2 else value.transpose(3, 2, 0, 1)
        elif leaf not in ("scale", "embedding") and value.ndim == 4:
            value = value.transpose(0, 3, 1, 2)
        key = official_key(path[1:])
        out[key] = np.ascontiguousarray(value)
        for pattern, repl in _CANONICAL_TO_ALIAS:
            alias = pattern.sub(repl, key)
            if alias != key:
                out[alias] = out[key]
    return out
