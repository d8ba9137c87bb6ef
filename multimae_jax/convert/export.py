"""Write and read flat state_dicts (name -> array) as ``.safetensors`` or ``.npz``.

A ``.safetensors`` file written here loads straight into PyTorch::

    from safetensors.torch import load_file
    model.load_state_dict(load_file(p))
"""

from __future__ import annotations

import os
import secrets
import zipfile
import zlib
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from multimae_jax.convert.errors import CheckpointFileError

_FORMATS = (".safetensors", ".npz")
# What a truncated or corrupt file raises while being read: safetensors (bad header; TypeError for
# a dtype numpy lacks, e.g. BF16), zipfile / zlib (bad archive, CRC, deflate stream), numpy's .npy
# parser (ValueError, EOFError), the file system.
_READ_ERRORS = (SafetensorError, TypeError, zipfile.BadZipFile, zlib.error, EOFError, ValueError,
                OSError)


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
    """Read a ``.safetensors`` or ``.npz`` file written by :func:`save_state_dict`.

    Raises CheckpointFileError, one line naming the file, for an empty, truncated or corrupt file
    and for an .npz entry that is not a numeric array (pickled objects are never loaded).
    """
    path = Path(path)
    suffix = _check_format(path)
    if path.stat().st_size == 0:
        raise CheckpointFileError(f"{path}: empty file, expected a {suffix} file of arrays")
    try:
        return load_file(str(path)) if suffix == ".safetensors" else _read_npz(path)
    except CheckpointFileError:
        raise
    except _READ_ERRORS as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise CheckpointFileError(f"{path}: corrupt or not a {suffix} file of arrays "
                                  f"({reason})") from e


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """{name: array} of an .npz (a zip of .npy files). Not `np.load`: for a file that is no zip it
    tries to unpickle it, and its errors advise `allow_pickle`."""
    if not zipfile.is_zipfile(path):
        raise CheckpointFileError(f"{path}: not an .npz file (no zip archive: truncated, or "
                                  f"another format)")
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            name = member.removesuffix(".npy")
            if name == member:
                raise CheckpointFileError(f"{path}: entry '{member}' is not an .npy array")
            with archive.open(member) as f:
                version = np.lib.format.read_magic(f)
                # 2.0 and 3.0 share the header layout (3.0 only encodes it as utf-8)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                if read_header(f)[2].hasobject:
                    raise CheckpointFileError(f"{path}: '{name}' holds pickled Python objects, "
                                              f"which are never loaded; expected numeric arrays")
                f.seek(0)
                arrays[name] = np.lib.format.read_array(f, allow_pickle=False)
    return arrays
