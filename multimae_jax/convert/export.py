"""Write and read flat state_dicts (name -> array) as ``.safetensors`` or ``.npz``.

A ``.safetensors`` file written here loads straight into PyTorch::

    from safetensors.torch import load_file
    model.load_state_dict(load_file(p))
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

_FORMATS = (".safetensors", ".npz")


def _check_format(path: Path) -> str:
    if path.suffix not in _FORMATS:
        raise ValueError(f"{path}: unsupported extension {path.suffix!r}; use one of {_FORMATS}")
    return path.suffix


def save_state_dict(state_dict: dict[str, np.ndarray], path) -> None:
    """Save ``state_dict`` to ``path``, format chosen by its extension.

    The file is written next to ``path`` under a temporary name, then renamed
    over it, so ``path`` never holds a partial file.
    """
    path = Path(path)
    suffix = _check_format(path)
    arrays = {name: np.ascontiguousarray(value) for name, value in state_dict.items()}
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}")
    try:
        if suffix == ".safetensors":
            save_file(arrays, str(tmp))
        else:
            np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_exported(path) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` or ``.npz`` file written by :func:`save_state_dict`."""
    path = Path(path)
    if _check_format(path) == ".safetensors":
        return load_file(str(path))
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}
