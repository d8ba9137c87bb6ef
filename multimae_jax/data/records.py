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
from multimae_jax.data.codecs import CorruptFileError, decode_draft


def decode_record(record: dict, modalities, skip_corrupt: bool = False,
                  check_labels: bool = True, draft: dict | None = None) -> dict | None:
    """{task: native array, 'label': int, 'key': str} of `modalities` (Modality objects or
    default names), or None for a corrupt sample when `skip_corrupt` (it is logged); otherwise
    CorruptFileError naming the file. Corrupt: a file that does not decode as its modality's
    storage, modalities of different H x W, or (with `check_labels`; fine-tuning labels have
    their own rules, `dense_transforms.adapt_labels`) a label outside its modality's classes.

    draft: {task: k} decodes those tasks' JPEG files at 1/k in the DCT domain
    (`codecs.decode_draft`); the sample then holds 'drafted': {task: k applied} (tasks whose
    file was no JPEG are left out) and sizes are compared at full resolution."""
    mods = resolve(modalities)
    paths = record.get("paths", {})
    where = {t: paths.get(t, f"{record['key']} ({t})") for t in mods}
    out = {"key": record["key"], "label": record["label"]}
    draft, drafted, full = draft or {}, {}, {}
    try:
        for task, mod in mods.items():
            value = record[task]
            if not isinstance(value, bytes):
                out[task] = value
                continue
            out[task], factor, full[task] = decode_draft(mod, value, where[task],
                                                         draft.get(task, 1))
            if factor > 1:
                drafted[task] = factor
        _check_sample(out, mods, where, check_labels,
                      {t: full[t] if t in drafted else out[t].shape[:2] for t in mods})
        if draft:
            out["drafted"] = drafted
    except CorruptFileError as e:
        if not skip_corrupt:
            raise
        logging.warning("skipping corrupt sample: %s", e)
        return None
    return out


def check_same_size(key: str, arrays: dict, where: dict, sizes: dict | None = None) -> None:
    """CorruptFileError naming every file (where[task]) and its H x W unless the arrays
    {task: (H, W, ...)} of sample `key` (or the given `sizes` {task: (H, W)}) share one H x W."""
    sizes = sizes or {t: a.shape[:2] for t, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise CorruptFileError(f"{key}: modalities differ in size: " + ", ".join(
            f"{where[t]} {h}x{w}" for t, (h, w) in sizes.items()))


def _check_sample(sample: dict, mods: dict, where: dict, check_labels: bool,
                  sizes: dict) -> None:
    """CorruptFileError unless the decoded modalities' full-resolution `sizes` {task: (H, W)}
    agree and every label lies in 0..num_classes-1 (one max per label map).

    There is no 'ignore' label (such as 255) in pre-training: the official semseg input is an
    nn.Embedding of exactly num_classes rows (multimae/input_adapters.py: SemSegInputAdapter;
    run_pretraining_multimae.py: DOMAIN_CONF sets no emb_padding_idx) and its loss keeps
    F.cross_entropy's ignore_index -100 (multimae/criterion.py: MaskedCrossEntropyLoss), which
    no uint8 label reaches; a larger label crashes the official run without naming the file."""
    check_same_size(sample["key"], {t: sample[t] for t in mods}, where, sizes)
    for t, m in mods.items():
        if not check_labels or m.kind != "labels" or not sample[t].size:
            continue
        high = int(sample[t].max())
        if high >= m.num_classes:
            raise CorruptFileError(f"{where[t]}: {t} label {high} >= {m.num_classes} classes "
                                   f"(num_classes of modality '{t}')")


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
