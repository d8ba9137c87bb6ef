"""What every fixture case shares: the Fixture record, weight perturbation, tensor <-> numpy."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

# Mantissa bits kept in the random weights and inputs (float32 has 23). Dropping the low 9 bits lets
# np.savez_compressed shrink those arrays by a quarter, while the values stay far from bfloat16
# (7 bits) or float16 (10 bits): a weight silently cast to half precision still fails parity.
MANTISSA_BITS = 12
PERTURB_STD = 0.05


@dataclass
class Fixture:
    """One fixture: arrays -> <name>.npz, meta -> <name>.json, checkpoint -> <name>.pth."""
    name: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    checkpoint: object = None


def trim_mantissa(x: np.ndarray, bits: int = MANTISSA_BITS) -> np.ndarray:
    """float32 `x` rounded (half up in magnitude) to `bits` explicit mantissa bits."""
    drop = 23 - bits
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    u = (u + np.uint32(1 << (drop - 1))) & np.uint32(~((1 << drop) - 1) & 0xFFFFFFFF)
    return u.view(np.float32).reshape(np.shape(x))


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Add N(0, PERTURB_STD) noise to every trainable parameter, in place, then trim its mantissa.

    The official init leaves LayerNorms at identity, biases and mask tokens at zero: with those, a
    swapped bias or a dropped LayerNorm scale would not change any output. Fixed buffers such as the
    sin-cos positional embeddings (requires_grad=False) are left exact.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                noisy = p + PERTURB_STD * torch.randn(p.shape, generator=gen)
                p.copy_(torch.from_numpy(trim_mantissa(noisy.numpy())))


def state_arrays(state_dict: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A state dict as npz entries 'param/<key>'."""
    return {f"param/{k}": v.detach().numpy() for k, v in state_dict.items()}


def numpy_tree(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in tensors.items()}


def random_images(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return trim_mantissa(rng.standard_normal(shape).astype(np.float32))
