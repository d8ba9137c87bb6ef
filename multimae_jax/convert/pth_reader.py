"""Read PyTorch ``torch.save`` checkpoints with numpy only (no torch import).

A ``torch.save`` file (PyTorch >= 1.6) is a zip archive::

    <prefix>/data.pkl      pickle of the saved object; tensors refer to storages
    <prefix>/data/<key>    raw bytes of each storage
    <prefix>/byteorder     "little" or "big" (absent in old files: little)

``data.pkl`` is unpickled by :class:`_RestrictedUnpickler`, whose ``find_class``
resolves only an allow-list of globals (tensor/storage rebuilding, OrderedDict,
argparse.Namespace, numpy scalars); any other global is refused, so loading a
file never runs code from it. Every tensor comes back as a fresh numpy array
(strides and storage offsets honoured, storages shared by several tensors
handled), whatever device it was saved from. bfloat16 tensors become float32
(exact).
"""

from __future__ import annotations

import _codecs
import collections
import io
import pickle
import types
import zipfile
from pathlib import Path

import numpy as np

from multimae_jax.convert.errors import CheckpointFileError

# Storage class name -> numpy dtype of its elements ("bfloat16" is special-cased).
_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "UntypedStorage": "uint8",
}

# torch dtype globals (e.g. a dtype stored in training args) load as plain strings.
_TORCH_DTYPE_NAMES = (
    "float32 float float64 double float16 half bfloat16 int64 long int32 int "
    "int16 short int8 uint8 bool"
).split()

# Magic number that starts a legacy (pre-1.6, non-zip) torch.save file.
_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:-1]


class _StorageType(str):
    """Stand-in for a torch storage class; its value is the numpy dtype name."""


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused):
    """Materialise a tensor as a view of ``storage`` (1-D array), then copy it.

    ``_unused`` swallows ``requires_grad``, ``backward_hooks`` and ``metadata``
    of ``torch._utils._rebuild_tensor_v2``.
    """
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or min(size + stride, default=0) < 0 or storage_offset < 0:
        raise ValueError(f"invalid tensor layout: size {size}, stride {stride}")
    if 0 not in size:  # an empty tensor touches no element
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.size:
            raise ValueError(
                f"tensor of size {size}, stride {stride}, offset {storage_offset} "
                f"exceeds its storage of {storage.size} elements"
            )
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:],
        shape=size,
        strides=tuple(s * storage.itemsize for s in stride),
        writeable=False,
    )
    return np.array(view)


def _rebuild_parameter(data, *_unused):
    """``nn.Parameter`` (with or without extra state) -> its data array."""
    return data


def _numpy_scalar(dtype, data):
    """Rebuild a pickled numpy scalar (e.g. an ``epoch`` or a metric)."""
    return np.frombuffer(data, dtype=dtype)[0]


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "UntypedStorage"): _StorageType("uint8"),
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{("torch", name): f"torch.{name}" for name in _TORCH_DTYPE_NAMES},
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("argparse", "Namespace"): types.SimpleNamespace,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): np.dtype,
    # Protocol-2 pickles encode bytes objects (e.g. numpy scalar data) this way.
    ("_codecs", "encode"): _codecs.encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl``, resolving only allow-listed globals and reading
    storages from the zip archive."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(archive.read(f"{prefix}/data.pkl")))
        self._archive, self._prefix = archive, prefix
        order_file = f"{prefix}/byteorder"
        names = set(archive.namelist())
        self._byteorder = (
            archive.read(order_file).decode().strip() if order_file in names else "little"
        )
        if self._byteorder not in ("little", "big"):
            raise ValueError(f"unknown byteorder {self._byteorder!r}")

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ValueError(
                f"refusing to load disallowed global '{module}.{name}' "
                "(only tensors, storages, OrderedDict, argparse.Namespace and numpy "
                "scalars are allowed)"
            ) from None

    def persistent_load(self, pid):
        """Resolve ``('storage', storage_type, key, location, numel)`` to a 1-D array."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise ValueError(f"unsupported storage type {storage_type!r}")
        raw = self._archive.read(f"{self._prefix}/data/{key}")
        is_bf16 = storage_type == "bfloat16"
        dtype = np.dtype("uint16" if is_bf16 else str(storage_type))
        dtype = dtype.newbyteorder("<" if self._byteorder == "little" else ">")
        if len(raw) < numel * dtype.itemsize:
            raise ValueError(f"storage {key} is truncated")
        data = np.frombuffer(raw, dtype=dtype, count=numel)
        if is_bf16:  # bfloat16 is the upper half of a float32
            return (data.astype(np.uint32) << 16).view(np.float32)
        return data.astype(dtype.newbyteorder("="), copy=False)


def read_pth(path) -> object:
    """Load the object saved by ``torch.save`` at ``path``, tensors as numpy arrays.

    ``argparse.Namespace`` entries (e.g. a checkpoint's ``args``) load as
    ``types.SimpleNamespace``. Raises ``CheckpointFileError`` (one line naming the
    file) for an empty, truncated or corrupt file, a legacy (pre-1.6) torch file
    (never unpickled), a non-checkpoint file, or a disallowed global.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise CheckpointFileError(f"{path}: empty file, expected a PyTorch checkpoint")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_MAGIC))
        if head == _LEGACY_MAGIC:
            raise CheckpointFileError(
                f"{path}: legacy (pre-1.6, non-zip) torch checkpoint; re-save it with "
                "torch >= 1.6: torch.save(torch.load(p), p2)"
            )
        raise CheckpointFileError(
            f"{path}: not a PyTorch checkpoint (no zip archive: truncated, or another format)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist()
                       if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise CheckpointFileError(
                    f"{path}: not a PyTorch checkpoint (no <prefix>/data.pkl)"
                )
            return _RestrictedUnpickler(archive, pickles[0].split("/")[0]).load()
    except CheckpointFileError:
        raise
    except ValueError as e:  # raised by the unpickler: add the file name
        raise CheckpointFileError(f"{path}: {e}") from None
    except Exception as e:  # truncated archive or pickle, missing storage, malformed calls
        raise CheckpointFileError(f"{path}: corrupt PyTorch checkpoint: {e!r}") from e


def extract_state_dict(obj, path) -> dict[str, np.ndarray]:
    """Pick the state_dict out of a loaded checkpoint.

    Uses ``obj['model']`` (or ``'state_dict'`` / ``'module'``) when present,
    else ``obj`` itself, and strips a ``module.`` prefix shared by all keys
    (DistributedDataParallel). ``path`` is only used in error messages.
    """
    state = obj
    if isinstance(obj, dict):
        for wrapper in ("model", "state_dict", "module"):
            if isinstance(obj.get(wrapper), dict):
                state = obj[wrapper]
                break
    if not (
        isinstance(state, dict)
        and state
        and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items())
    ):
        found = list(obj) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointFileError(
            f"{path}: no state_dict (flat mapping of names to tensors) found; "
            f"top-level keys: {found}"
        )
    if all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def load_state_dict(path) -> dict[str, np.ndarray]:
    """``read_pth`` then ``extract_state_dict``: the model weights of a checkpoint."""
    return extract_state_dict(read_pth(path), path)
