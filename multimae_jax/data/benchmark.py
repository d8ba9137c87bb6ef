"""python -m multimae_jax.data.benchmark [--image_size 224] [--source_size 320] [--num_workers 2]
       [--realistic [--max_size 256] [--canvas 384]]

Host input-pipeline throughput, decode and augmentation included, for every source: the
synthetic scenes (rendered on the fly), the official folder layout (JPEG rgb, 16-bit PNG depth,
PNG semseg), packed shards of the original files and packed decoded shards. Prints samples/s of
one worker (in-process) and of the whole pipeline with --num_workers processes, next to an
emulation of the official loader's decode + augment path (PIL crops and resizes per modality,
float conversion and normalisation on the host) as the baseline.

--realistic: ImageNet-like files instead, every path and fast-path switch in samples per
CPU-second per core with its pixel differences from the official path
(`benchmark_realistic.py`).
"""
import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from multimae_jax.data import benchmark_realistic
from multimae_jax.data.folder import FolderSource
from multimae_jax.data.pack import pack
from multimae_jax.data.pipeline import make_dataset, make_source
from multimae_jax.data.synthetic import SyntheticScenes
from multimae_jax.data.transforms import PretrainAugment

TASKS = SyntheticScenes.MODALITIES


def official_style(record: dict, augment: PretrainAugment, rng: np.random.Generator) -> dict:
    """The official path per sample (`utils/datasets.py: DataAugmentationForMultiMAE`): PIL
    decode (labels as mode 'P'), crop and PIL's default-filter resize of every modality, flip,
    float conversion and normalisation on the host, labels resized again to 1/stride."""
    convert = {"rgb8": "RGB", "labels": "P"}  # the official loader's PIL modes
    images = {}
    for mod in augment.modalities:
        img = Image.open(record["paths"][mod.name])
        images[mod.name] = img.convert(convert[mod.storage]) if mod.storage in convert else img
    first = images[augment.tasks[0]]
    i, j, h, w, flip = augment.draw(first.height, first.width, rng)
    s = augment.image_size
    out = {}
    for mod in augment.modalities:
        img = images[mod.name].crop((j, i, j + w, i + h)).resize((s, s))
        if flip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if mod.kind == "labels":
            side = s // mod.stride_level
            out[mod.name] = np.asarray(img.resize((side, side)), np.int64)
            continue
        x = np.asarray(img, np.float32) / mod.scale
        if mod.mean is not None:
            x = (x - np.asarray(mod.mean, np.float32)) / np.asarray(mod.std, np.float32)
        out[mod.name] = x
    return out


def _rate(fn, n: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def one_worker(source, image_size: int, n: int) -> float:
    """Samples/s of decode + augment in this process, through the real pipeline."""
    ds = make_dataset(source, TASKS, image_size=image_size, local_batch_size=1)
    it = iter(ds)
    return _rate(lambda: next(it), n)


def pipeline(source, image_size: int, n: int, num_workers: int, batch: int = 32) -> float:
    """Samples/s of the whole pipeline with worker processes, batched."""
    it = iter(make_dataset(source, TASKS, image_size=image_size, local_batch_size=batch,
                           num_workers=num_workers))
    next(it)
    start = time.perf_counter()
    for _ in range(max(1, n // batch)):
        next(it)
    return max(1, n // batch) * batch / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m multimae_jax.data.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--source_size", type=int, default=320, help="side of the stored images")
    parser.add_argument("--num_samples", type=int, default=256, help="samples written to disk")
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--n", type=int, default=200, help="samples timed per measurement")
    parser.add_argument("--realistic", action="store_true",
                        help="ImageNet-like files, samples per CPU-second, fast paths")
    parser.add_argument("--max_size", type=int, default=256, help="--realistic: pack --max_size")
    parser.add_argument("--canvas", type=int, default=384,
                        help="--realistic: data.device_canvas of the packed files")
    args = parser.parse_args(argv)
    if args.realistic:
        benchmark_realistic.run(args.num_samples, args.num_workers, args.n, args.max_size,
                                args.canvas)
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "folder"
        SyntheticScenes(args.num_samples, args.source_size).write_folder(root, progress=True)
        pack(root, Path(tmp) / "shards", TASKS, num_shards=4)
        pack(root, Path(tmp) / "decoded", TASKS, num_shards=4, decoded=True)
        sources = {
            "synthetic (rendered)": make_source("", TASKS, synthetic_samples=args.num_samples,
                                                synthetic_size=args.source_size),
            "folder (jpg/png)": make_source(str(root), TASKS),
            "shards (encoded)": make_source(str(Path(tmp) / "shards"), TASKS),
            "shards (decoded)": make_source(str(Path(tmp) / "decoded"), TASKS),
        }
        sizes = {"shards (encoded)": Path(tmp) / "shards", "shards (decoded)": Path(tmp) / "decoded",
                 "folder (jpg/png)": root}
        print(f"\nhost pipeline, {args.source_size}px sources -> {args.image_size}px, "
              f"rgb+depth+semseg, samples/s")
        print(f"| source | disk MB | 1 worker | {args.num_workers} workers |")
        print("|---|---|---|---|")
        for name, source in sources.items():
            mb = (sum(f.stat().st_size for f in sizes[name].rglob("*") if f.is_file()) / 1e6
                  if name in sizes else 0)
            one = one_worker(source, args.image_size, args.n)
            many = pipeline(source, args.image_size, args.n * args.num_workers, args.num_workers)
            print(f"| {name} | {mb:.1f} | {one:.0f} | {many:.0f} |", flush=True)
        folder = FolderSource(root, TASKS)
        augment = PretrainAugment(TASKS, args.image_size)
        rng = np.random.default_rng(0)
        indices = itertools.cycle(range(len(folder)))
        base = _rate(lambda: official_style(folder[next(indices)], augment, rng), args.n)
        print(f"| official-style decode + augment (baseline, folder) | | {base:.0f} | |")


if __name__ == "__main__":
    main()
