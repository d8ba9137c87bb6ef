"""python -m multimae_jax.data.pack SRC OUT [--tasks rgb depth semseg] [--num_shards N]
       [--max_size S [--jpeg_quality Q]] [--decoded [TASK ...]]

Packs a dataset in the official folder layout into ArrayRecord shards for fast, scalable reading.
By default the original encoded files are stored (compact; decoding cost as for the folder);
--decoded stores decoded arrays instead (no decoding when reading, several times larger);
--decoded TASK ... only those tasks' (e.g. the 16-bit depth, whose PNG decodes slowest).
--max_size S stores every sample with its shorter side at most S (FFCV's approach; a FAST
PATH, not the official data): a larger sample is resized once, every modality to the same
size by its `resample` (`resize.py`: bicubic rgb and 16-bit depth, nearest labels), and
re-encoded (a JPEG as JPEG at --jpeg_quality, 4:2:0; PNGs losslessly); smaller samples keep
their original files. Reading and decoding then cost less, but a small crop is upsampled from
fewer pixels: a 0.2-scale square crop of a 375 x 500 image stored at 256 x 341 covers 132 x 132
stored pixels, upsampled 1.7x to 224, where the original gave 194 x 194, upsampled 1.15x
(docs/benchmarks.md gives the pixel differences).
Restartable: finished shards are kept and only the missing ones are written; each shard is
written to a temporary name and renamed when complete. --num_workers packs shards in parallel.
"""
import argparse
import json
import multiprocessing
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from array_record.python.array_record_module import ArrayRecordWriter
from tqdm import tqdm

from multimae_jax.data.codecs import encode
from multimae_jax.data.folder import FolderSource
from multimae_jax.data.records import decode_record, pack_record
from multimae_jax.data.resize import resize_image, shorter_side_at_most
from multimae_jax.data.shards import META, shard_name
from multimae_jax.modalities import resolve


_SOURCE = None  # the FolderSource of a worker process, scanned once by the parent


def _set_source(source: FolderSource) -> None:
    global _SOURCE
    _SOURCE = source


def shrink_record(record: dict, mods, max_size: int, jpeg_quality: int) -> dict:
    """A raw record of encoded files with its shorter side at most max_size: resized and
    re-encoded in the files' formats (JPEG at jpeg_quality, 4:2:0), or unchanged when small
    enough (no re-encoding loss)."""
    sample = decode_record(record, mods)
    height, width = sample[mods[0].name].shape[:2]
    size = shorter_side_at_most(height, width, max_size)
    if size == (height, width):
        return record
    return {**record, **{m.name: encode(m, resize_image(m, sample[m.name], size),
                                        os.path.splitext(record["paths"][m.name])[1],
                                        jpeg_quality, jpeg_subsampling=2) for m in mods}}


def _write_shard(args) -> int:
    src_root, mods, out, index, count, decoded, max_size, jpeg_quality = args
    source = _SOURCE
    target = Path(out) / shard_name(index, count)
    tmp = target.with_suffix(".tmp")
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    n = 0
    # Contiguous ranges: the shards read back in the folder's order, so a pipeline over the
    # shards yields exactly the samples of the same pipeline over the folder.
    for i in range(index * len(source) // count, (index + 1) * len(source) // count):
        record = source[i]
        if max_size:
            record = shrink_record(record, mods, max_size, jpeg_quality)
        if decoded:
            arrays = decode_record(record, mods)
            record = {**record, **{m.name: arrays[m.name] for m in mods if m.name in decoded}}
        record["paths"] = {t: os.path.relpath(p, src_root) for t, p in record["paths"].items()}
        writer.write(pack_record(record))
        n += 1
    writer.close()
    os.replace(tmp, target)
    return n


def pack(src, out, modalities, num_shards: int, num_workers: int = 1,
         decoded: bool | Sequence[str] = False, max_size: int | None = None,
         jpeg_quality: int = 90) -> dict:
    """Writes the shards and meta.json; returns the meta dict. `modalities`: Modality objects
    or default names (their decoding matters with `decoded` and `max_size`). decoded: True
    stores every task decoded, a sequence of task names those tasks. max_size: the largest
    shorter side stored (see the module docstring); None keeps the original sizes."""
    mods = resolve(modalities)
    if decoded is True:
        decoded = list(mods)
    decoded = sorted(decoded or [])
    unknown = sorted(set(decoded) - set(mods))
    if unknown:
        raise ValueError(f"--decoded {unknown}: not among the packed tasks {list(mods)}")
    if max_size is not None and max_size < 1:
        raise ValueError(f"--max_size must be >= 1, got {max_size}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"--jpeg_quality must be in 1..100, got {jpeg_quality}")
    source = FolderSource(src, tuple(mods))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / META
    meta = {"tasks": list(mods), "classes": source.classes, "num_shards": num_shards,
            "num_records": len(source), "source": str(Path(src).absolute()),
            # True / False as before per-task decoding existed, else the decoded tasks
            "decoded": decoded == sorted(mods) or (decoded or False),
            "max_size": max_size, "jpeg_quality": jpeg_quality if max_size else None}
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if {k: old.get(k) for k in meta} != meta:
            raise ValueError(f"{out} holds shards of another packing ({old}); use an empty folder")
    tmp = meta_path.with_suffix(".tmp")  # written first, so a restart can check it is the same job
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, meta_path)
    todo = [i for i in range(num_shards) if not (out / shard_name(i, num_shards)).exists()]
    jobs = [(str(src), tuple(mods.values()), str(out), i, num_shards, decoded, max_size,
             jpeg_quality) for i in todo]
    bar = tqdm(total=num_shards, initial=num_shards - len(todo), desc="packing", unit="shard")
    _set_source(source)
    if num_workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(num_workers, _set_source,
                                                       (source,)) as pool:
            for _ in pool.imap_unordered(_write_shard, jobs):
                bar.update()
    else:
        for job in jobs:
            _write_shard(job)
            bar.update()
    bar.close()
    return meta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m multimae_jax.data.pack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src")
    parser.add_argument("out")
    parser.add_argument("--tasks", nargs="+", default=["rgb", "depth", "semseg"])
    parser.add_argument("--num_shards", type=int, default=16)
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--decoded", nargs="*", metavar="TASK", default=None,
                        help="store decoded arrays (of every task, or of the tasks named)")
    parser.add_argument("--max_size", type=int, default=None,
                        help="resize samples whose shorter side is larger to this")
    parser.add_argument("--jpeg_quality", type=int, default=90,
                        help="quality of the JPEGs re-encoded by --max_size")
    args = parser.parse_args(argv)
    try:
        decoded = args.decoded if args.decoded else args.decoded == []  # bare flag: all
        meta = pack(args.src, args.out, args.tasks, args.num_shards, args.num_workers, decoded,
                    args.max_size, args.jpeg_quality)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"packed {meta['num_records']} samples of {meta['tasks']} into {meta['num_shards']} "
          f"shards in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
