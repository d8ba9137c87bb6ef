"""Records shared by every source, and their decoding (HOST side).

A raw record is {'key': str, 'label': int, 'paths': {task: where}, <task>: bytes | array}: bytes
are encoded files (folder, packed shards), arrays are already decoded (synthetic scenes, shards
packed with --decoded). `decode_record` turns it into native arrays.
"""
import io
import logging

import msgpack
import numpy as np

from multimae_jax.modalities import resolve
from multimae_jax.data.codecs import CorruptFileError, decode


def decode_record(record: dict, modalities, skip_corrupt: bool = False) -> dict | None:
    """{task: native array, 'label': int, 'key': str} of `modalities` (Modality objects or
    default names), or None for a corrupt sample when `skip_corrupt` (it is logged); otherwise
    CorruptFileError naming the file."""
    out = {"key": record["key"], "label": record["label"]}
    paths = record.get("paths", {})
    for task, mod in resolve(modalities).items():
        value = record[task]
        where = paths.get(task, f"{record['key']} ({task})")
        try:
            out[task] = decode(mod, value, where) if isinstance(value, bytes) else value
        except CorruptFileError as e:
            if not skip_corrupt:
                raise
            logging.warning("skipping corrupt sample: %s", e)
            return None
    return out


def pack_record(record: dict) -> bytes:
    """Serialises a raw record (bytes or arrays) for an ArrayRecord shard."""
    def encode(value):
        if isinstance(value, np.ndarray):
            buf = io.BytesIO()
            np.save(buf, value, allow_pickle=False)
            return {"__npy__": buf.getvalue()}
        return value
    return msgpack.packb({k: encode(v) for k, v in record.items()}, use_bin_type=True)


def unpack_record(data: bytes, where: str) -> dict:
    """Inverse of `pack_record`; `where` (shard and index) is recorded for error messages."""
    def decode_value(value):
        if isinstance(value, dict) and "__npy__" in value:
            return np.load(io.BytesIO(value["__npy__"]), allow_pickle=False)
        return value
    record = {k: decode_value(v) for k, v in msgpack.unpackb(data, raw=False).items()}
    record["paths"] = {t: f"{where} ({p})" for t, p in record.get("paths", {}).items()}
    return record
