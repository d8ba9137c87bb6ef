"""python -m multimae_jax.data.check ROOT [--config FILE[:VARIANT]] [--tasks ...] [--quick]

Validates a dataset in the official layout ROOT/<modality>/<class>/<file> (or packed shards):
counts per modality and class, samples missing a modality, duplicate files, and (unless --quick)
every sample decoded as training decodes it (`records.decode_record`): unreadable files, wrong
dtypes (an 8-bit depth PNG where 16-bit is expected), sizes that differ between a sample's
modalities, labels >= their modality's classes. The modalities and their classes are those of
--config (with its config.modalities changes), else the registry entries; --num_classes
overrides. Exits 1 when it finds a problem, 2 on a usage error.
"""
import argparse
import collections
import importlib.util
import multiprocessing
import os
import sys

import numpy as np
from tqdm import tqdm

from multimae_jax.data.codecs import CorruptFileError
from multimae_jax.data.folder import FolderSource
from multimae_jax.data.records import decode_record
from multimae_jax.data.shards import ShardSource, is_shard_dir
from multimae_jax.modalities import resolve, with_overrides
from multimae_jax.train.pretrain import config_modalities

_SOURCE = None  # the source of a worker process, built once by the parent


def _set_source(source) -> None:
    global _SOURCE
    _SOURCE = source


def _check_one(args):
    index, mods = args
    try:
        decode_record(_SOURCE[index], mods)  # raises for a file, size or label problem
    except (CorruptFileError, OSError) as e:
        return [str(e)]
    return []


def check(root, modalities, quick: bool = False, num_workers: int = 2, out=None) -> list[str]:
    """Prints a report (to `out`, default stdout); returns the list of problems.
    `modalities`: Modality objects or default names (their storage and classes are checked)."""
    out = out or sys.stdout
    mods = resolve(modalities)
    tasks = tuple(mods)
    problems = []
    if is_shard_dir(root):
        source = ShardSource(root, tasks)
        print(f"{root}: packed shards, {len(source)} records, tasks {source.meta['tasks']}", file=out)
    else:
        source = FolderSource(root, tasks, allow_incomplete=True)
        scan = source.scan
        print(f"{root}: {len(scan.samples)} complete samples in {len(scan.classes)} classes",
              file=out)
        for task in tasks:
            print(f"  {task:>8}: {len(scan.files[task])} files", file=out)
        per_class = collections.Counter(s.split("/", 1)[0] for s in scan.samples)
        shown = sorted(per_class.items())
        for cls, n in shown[:20]:
            print(f"  {cls}: {n}", file=out)
        if len(shown) > 20:
            counts = np.array([n for _, n in shown])
            print(f"  ... {len(shown) - 20} more classes (per class: min {counts.min()}, "
                  f"median {int(np.median(counts))}, max {counts.max()})", file=out)
        for task, items in scan.missing.items():
            problems += [f"{s}: no {task} file" for s in items]
        for task, items in scan.duplicates.items():
            problems += [f"{s}: several {task} files" for s in items]
    if not quick:
        _set_source(source)
        n = len(source)
        jobs = [(i, mods) for i in range(n)]
        if num_workers > 1:
            with multiprocessing.get_context("spawn").Pool(num_workers, _set_source,
                                                           (source,)) as pool:
                results = list(tqdm(pool.imap(_check_one, jobs, chunksize=64), total=n,
                                    desc="decoding", unit="sample"))
        else:
            results = [_check_one(j) for j in tqdm(jobs, desc="decoding", unit="sample")]
        problems += [p for r in results for p in r]
    if problems:
        print(f"{len(problems)} problem(s):", file=out)
        for p in problems[:50]:
            print(f"  {p}", file=out)
        if len(problems) > 50:
            print(f"  ... and {len(problems) - 50} more", file=out)
    else:
        print("no problems found", file=out)
    return problems


def load_config(spec: str):
    """The ConfigDict of 'PATH[:VARIANT]' as the main job's --config reads it: the file's
    get_config(VARIANT)."""
    path, _, variant = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config: no file {path}")
    module_spec = importlib.util.spec_from_file_location("_checked_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m multimae_jax.data.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root")
    parser.add_argument("--config", metavar="PATH[:VARIANT]",
                        help="the run's config (e.g. configs/pretrain.py:tiny): its modalities, "
                             "with config.modalities applied, and its data tasks by default")
    parser.add_argument("--tasks", nargs="+",
                        help="modalities to check (default: the config's, else rgb depth semseg)")
    parser.add_argument("--quick", action="store_true", help="list files only, decode nothing")
    parser.add_argument("--num_classes", type=int,
                        help="classes of the label modalities (default: the config's, else their "
                             "registry entry)")
    parser.add_argument("--num_workers", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        if args.config:
            config = load_config(args.config)
            registry = with_overrides(config.modalities.to_dict())
            mods = resolve(args.tasks, registry) if args.tasks else config_modalities(config)[2]
        else:
            mods = resolve(args.tasks or ["rgb", "depth", "semseg"])
        if args.num_classes:
            mods = {t: m.replace(num_classes=args.num_classes) if m.kind == "labels" else m
                    for t, m in mods.items()}
        problems = check(args.root, tuple(mods.values()), args.quick, args.num_workers)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
