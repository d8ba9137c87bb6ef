"""Start fine-tuning from a pre-trained checkpoint, as the official fine-tuning scripts load one
(`run_finetuning_semseg.py` / `_depth.py` / `_taskonomy.py: main`, with `utils/pos_embed.py:
interpolate_pos_embed_multimae`): drop the pre-training decoders, zero-pad the semseg class
embedding when the new model has a padding row, resize the input positional embeddings
bicubically (PyTorch A = -0.75) to the new grid, and keep the new model's own initialisation for
everything the file lacks (heads).

The resized embeddings are the *upsampled 14x14 sin-cos*, not a fresh sin-cos at the new size,
exactly as in the official code.
"""
import numpy as np
import jax.numpy as jnp

from multimae_jax.convert.official import flax_to_official, official_to_flax
from multimae_jax.models.resize import resize_bicubic


def _resize_pos_emb(value: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(1, D, h, w) -> (1, D, grid[0], grid[1]) with PyTorch bicubic, align_corners=False."""
    nhwc = jnp.asarray(value.transpose(0, 2, 3, 1))
    return np.asarray(resize_bicubic(nhwc, grid)).transpose(0, 3, 1, 2)


def load_for_finetuning(variables: dict, state_dict: dict, source: str = "checkpoint"):
    """Returns (variables, report): the new model's `variables` with every compatible entry of the
    official `state_dict` loaded. report = {'loaded', 'kept_init', 'ignored'} lists of keys
    (ignored: in the file but not in the model, e.g. another modality's adapter)."""
    target = flax_to_official(variables)
    merged, report = dict(target), {"loaded": [], "kept_init": [], "ignored": []}
    for key, value in state_dict.items():
        if key.startswith("output_adapters."):
            continue
        if key not in target:
            report["ignored"].append(key)
            continue
        want = target[key].shape
        if key.endswith("class_emb.weight") and want[0] == value.shape[0] + 1:
            value = np.pad(value, ((0, 1), (0, 0)))  # the padding row starts at zero
        if key.startswith("input_adapters.") and key.endswith(".pos_emb") and value.shape != want:
            value = _resize_pos_emb(value, want[2:4])
        merged[key] = value
        report["loaded"].append(key)
    report["kept_init"] = sorted(k for k in target if k not in report["loaded"])
    return official_to_flax(merged, variables, source), report
