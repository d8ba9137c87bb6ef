"""timm ViT state_dict <-> official MultiMAE keys, as the official converters do
(`tools/vit2multimae_converter.py: vit_to_multimae`, `tools/multimae2vit_converter.py:
multimae_to_vit`)."""
import numpy as np


def timm_to_official(state_dict: dict, source: str = "state_dict") -> dict:
    """Returns the MultiViT rgb-encoder state_dict for a timm ViT state_dict.

    global_tokens = cls_token + pos_embed[:, 0] (MultiMAE global tokens carry no position);
    pos_embed[:, 1:] -> input_adapters.rgb.pos_emb (1, D, n, n); patch_embed.proj -> rgb proj;
    blocks.* -> encoder.*; the ViT's final norm, fc_norm and head are dropped (MultiViT has none).
    """
    for required in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if required not in state_dict:
            raise ValueError(f"{source}: not a timm ViT state_dict, '{required}' is missing")
    cls = np.asarray(state_dict["cls_token"])
    pos = np.asarray(state_dict["pos_embed"])
    num_cls = cls.shape[1]
    grid = pos[:, num_cls:]
    n = int(round(np.sqrt(grid.shape[1])))
    if n * n != grid.shape[1]:
        raise ValueError(f"{source}: pos_embed has {grid.shape[1]} patch positions, not a square grid")
    out = {
        "global_tokens": cls + pos[:, :num_cls],
        "input_adapters.rgb.pos_emb": grid.reshape(1, n, n, -1).transpose(0, 3, 1, 2),
    }
    for key, value in state_dict.items():
        if key.startswith("patch_embed.proj."):
            out["input_adapters.rgb.proj." + key.split(".")[-1]] = np.asarray(value)
        elif key.startswith("blocks."):
            out["encoder." + key[len("blocks."):]] = np.asarray(value)
    return out


def official_to_timm(state_dict: dict, source: str = "state_dict") -> dict:
    """Returns the timm `VisionTransformer` state_dict of an official MultiMAE / MultiViT one, as
    `multimae_to_vit` writes it (numpy in, numpy out, PyTorch layouts).

    global_tokens (1, 1, D) -> cls_token; input_adapters.rgb.pos_emb (1, D, h, w) -> pos_embed
    (1, 1 + h*w, D), its first row (the cls slot) zero as MultiMAE's global tokens carry no
    position; input_adapters.rgb.proj -> patch_embed.proj; encoder.* -> blocks.*; everything
    else (other adapters, heads, decoder) is dropped. No final norm or head: timm initialises
    those.
    """
    num_global = state_dict["global_tokens"].shape[1] if "global_tokens" in state_dict else 0
    if num_global != 1:
        raise ValueError(f"{source}: has {num_global} global tokens, but a timm VisionTransformer "
                         f"has exactly one cls_token; export this checkpoint in the official "
                         f"layout instead (without --format timm)")
    if "input_adapters.rgb.pos_emb" not in state_dict:
        raise ValueError(f"{source}: has no rgb input adapter (input_adapters.rgb.*), the timm "
                         f"ViT's patch_embed / pos_embed; export a checkpoint with an rgb input "
                         f"adapter, or use the official layout (without --format timm)")
    out = {}
    for key, value in state_dict.items():
        value = np.asarray(value)
        if key == "global_tokens":
            out["cls_token"] = value
        elif key == "input_adapters.rgb.pos_emb":
            tokens = value.reshape(*value.shape[:2], -1).transpose(0, 2, 1)
            out["pos_embed"] = np.pad(tokens, ((0, 0), (1, 0), (0, 0)))
        elif key.startswith("input_adapters.rgb.proj."):
            out["patch_embed.proj." + key.split(".")[-1]] = value
        elif "encoder" in key:  # as the official converter matches it: anywhere in the key
            out[key.replace("encoder", "blocks")] = value
    return out


def is_timm_state_dict(state_dict: dict) -> bool:
    return "pos_embed" in state_dict and "cls_token" in state_dict
