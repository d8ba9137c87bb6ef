"""posemb_resize: the official sin-cos embedding and the PyTorch resizes the official code applies
to positional embeddings and feature maps."""

from __future__ import annotations

import types

import numpy as np
import torch
import torch.nn.functional as F

from common import Fixture, random_images

SINCOS = [(4, 4, 64), (14, 14, 768), (14, 14, 256)]
SIZES = [16, 24, 32, 40]
WHAT = ("sincos/<h>x<w>x<D>: official build_2d_sincos_posemb(h, w, D), (1, D, h, w). bicubic14to<n>: the "
        "14x14x64 sin-cos resized to n x n by utils/pos_embed.py: interpolate_pos_embed_multimae "
        "(bicubic, align_corners=False, as fine-tuning at another resolution does); bilinear14to<n>: "
        "F.interpolate bilinear, align_corners=False, as the semseg input adapter and the decoders "
        "resize their embeddings. ac_true_x2: ac_true_in upsampled x2 by the official Interpolate "
        "module (bilinear, align_corners=True) of the DPT head.")


def resized(off, grid: torch.Tensor, n: int) -> dict[str, np.ndarray]:
    target = types.SimpleNamespace(input_adapters=types.SimpleNamespace(
        rgb=types.SimpleNamespace(pos_emb=torch.zeros(1, grid.shape[1], n, n))))
    checkpoint = {"input_adapters.rgb.pos_emb": grid}
    off.pos_embed.interpolate_pos_embed_multimae(target, checkpoint)
    bilinear = F.interpolate(grid, size=(n, n), mode="bilinear", align_corners=False)
    return {f"bicubic14to{n}/d64": checkpoint["input_adapters.rgb.pos_emb"].numpy(),
            f"bilinear14to{n}/d64": bilinear.numpy()}


def posemb_outputs(off, ac_true_in: np.ndarray) -> dict[str, np.ndarray]:
    build = off.multimae_utils.build_2d_sincos_posemb
    out = {f"sincos/{h}x{w}x{d}": build(h, w, d).numpy() for h, w, d in SINCOS}
    grid = build(14, 14, 64)
    for n in SIZES:
        out.update(resized(off, grid, n))
    upsample = off.output_adapter_utils.Interpolate(scale_factor=2, mode="bilinear", align_corners=True)
    out["ac_true_x2"] = upsample(torch.from_numpy(ac_true_in)).numpy()
    return out


def posemb_resize(off, seed=4) -> Fixture:
    ac_true_in = random_images(np.random.default_rng(seed), (1, 5, 8, 8))
    arrays = {"ac_true_in": ac_true_in, **posemb_outputs(off, ac_true_in)}
    return Fixture("posemb_resize", arrays, {"what": WHAT})
