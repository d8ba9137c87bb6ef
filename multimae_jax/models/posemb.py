"""Fixed 2-D sin-cos positional embeddings with the official channel layout
(`multimae/multimae_utils.py: build_2d_sincos_posemb`)."""
import numpy as np


def build_2d_sincos_posemb(h: int, w: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
    """Returns the official `build_2d_sincos_posemb(h, w, dim)` as a channels-last (1, h, w, dim) array.

    For square grids channel blocks are [sin(row w), cos(row w), sin(col w), cos(col w)] with
    w_k = temperature^(-k / (dim / 4)). For non-square grids the official reshape scrambles
    positions; that is reproduced exactly so converted checkpoints behave identically.
    """
    if dim % 4:
        raise ValueError(f"sin-cos embedding dim must be divisible by 4, got {dim}")
    q = dim // 4
    omega = np.arange(q, dtype=np.float32) / np.float32(q)
    omega = (1.0 / np.power(np.float32(temperature), omega)).astype(np.float32)
    # The official meshgrid is 'ij' over (w, h): flat index m = iw * h + ih.
    iw, ih = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32), indexing="ij")
    out_a = iw.reshape(-1)[:, None] * omega[None]
    out_b = ih.reshape(-1)[:, None] * omega[None]
    emb = np.concatenate([np.sin(out_a), np.cos(out_a), np.sin(out_b), np.cos(out_b)], axis=1)
    return emb.reshape(1, h, w, dim).astype(np.float32)
