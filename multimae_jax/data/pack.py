"""python -m multimae_jax.data.pack SRC OUT [--tasks rgb depth semseg] [--num_shards N]

Packs a dataset in the official folder layout into ArrayRecord shards for fast, scalable reading.
By default the original encoded files are stored (compact; decoding cost as for the folder);
--decoded stores decoded arrays instead (no decoding when reading, several times larger).
Restartable: finished shards are kept and only the missing ones are written; each shard is
written to a temporary name and renamed when complete. --num_workers packs shards in parallel.
"""
import argparse
import json
import multiprocessing
import os
import sys
from pathlib import Path

from array_record.python.array_record_module import ArrayRecordWriter
from tqdm import tqdm

from multimae_jax.data.folder import FolderSource
from multimae_jax.data.records import decode_record, pack_record
from multimae_jax.data.shards import META, shard_name
from multimae_jax.modalities import resolve


_SOURCE = None  # the FolderSource of a worker process, scanned once by the parent


def _set_source(source: FolderSource) -> None:
    global _SOURCE
    _SOURCE = source


def _write_shard(args) -> int:
    src_root, mods, out, index, count, decoded = args
    source = _SOURCE
    target = Path(out) / shard_name(index, count)
    tmp = target.with_suffix(".tmp")
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    n = 0
    # Contiguous ranges: the shards read back in the folder's order, so a pipeline over the
    # shards yields exactly the samples of the same pipeline over the folder.
    for i in range(index * len(source) // count, (index + 1) * len(source) // count):
        record = source[i]
        if decoded:
            record = {**decode_record(record, mods), "paths": record["paths"]}
        record["paths"] = {t: os.path.relpath(p, src_root) for t, p in record["paths"].items()}
        writer.write(pack_record(record))
        n += 1
    writer.close()
    os.replace(tmp, target)
    return n


def pack(src, out, modalities, num_shards: int, num_workers: int = 1,
         decoded: bool = False) -> dict:
    """Writes the shards and meta.json; returns the meta dict. `modalities`: Modality objects
    or default names (their decoding matters only with `decoded`)."""
    mods = resolve(modalities)
    source = FolderSource(src, tuple(mods))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / META
    meta = {"tasks": list(mods), "classes": source.classes, "num_shards": num_shards,
            "num_records": len(source), "decoded": decoded, "source": str(Path(src).absolute())}
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if {k: old.get(k) for k in meta} != meta:
            raise ValueError(f"{out} holds shards of another packing ({old}); use an empty folder")
    tmp = meta_path.with_suffix(".tmp")  # written first, so a restart can check it is the same job
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, meta_path)
    todo = [i for i in range(num_shards) if not (out / shard_name(i, num_shards)).exists()]
    jobs = [(str(src), tuple(mods.values()), str(out), i, num_shards, decoded) for i in todo]
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
    parser.add_argument("--decoded", action="store_true", help="store decoded arrays")
    args = parser.parse_args(argv)
    try:
        meta = pack(args.src, args.out, args.tasks, args.num_shards, args.num_workers, args.decoded)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"packed {meta['num_records']} samples of {meta['tasks']} into {meta['num_shards']} "
          f"shards in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
