"""timm ViT state_dict -> official MultiMAE keys, as the official converter does
(`tools/vit2multimae_converter.py: vit_to_multimae`)."""
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


def is_timm_state_dict(state_dict: dict) -> bool:
    return "pos_embed" in state_dict and "cls_token" in state_dict
