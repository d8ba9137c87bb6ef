"""python -m multimae_jax.data.pseudo_label SRC OUT [--labeller hf|jax] [--shard I/N] ...

Turns RGB images into a pre-training dataset in the official layout: OUT/depth/<class>/<name>.png
(16-bit relative depth, `labellers.depth_to_uint16`) and OUT/semseg/<class>/<name>.png (8-bit
COCO-panoptic class ids), each at its rgb image's size, plus OUT/rgb/<class>/<file> (a hard link
to the original, or a copy of its bytes) unless OUT already holds it.

SRC is a dataset root with rgb/<class>/<file> (OUT may be SRC: the labels go beside rgb/), a
folder of class folders, or a flat folder of images (its class is SRC's basename). Images of
any PIL mode are converted to RGB as training converts them. A file with an image extension
that does not decode stops the run naming it; with --skip-bad it is listed at the end and left
out of OUT. Every file is written atomically (a temporary name in the same folder, then
os.replace) and a sample whose outputs all exist is skipped, so a killed run is finished by
running it again. --shard I/N labels samples I, I + N, ... (of the sorted list): start N
processes with I = 0..N-1 (each on its own accelerator); with --labeller jax under
jax.distributed (see multimae_jax/train/distributed.py) it defaults to the process index and
count.
"""
import argparse
import collections
import concurrent.futures
import dataclasses
import os
import sys
from pathlib import Path

from tqdm import tqdm

from multimae_jax import atomic
from multimae_jax.data.codecs import CorruptFileError, decode, encode
from multimae_jax.modalities import IMAGE_EXTENSIONS, MODALITIES


@dataclasses.dataclass(frozen=True)
class Sample:
    """One source image: key '<class>/<name>' (its relative path without extension), the file,
    and its path relative to the rgb folder ('<class>/<name>.<ext>')."""
    key: str
    path: Path
    rel: str


def _images(folder: Path, recursive: bool) -> list[Path]:
    """Image files under `folder` (hidden ones and other extensions ignored)."""
    if not recursive:
        return [p for p in folder.iterdir() if p.is_file() and _is_image(p.name)]
    return [Path(d) / n for d, dirs, names in os.walk(folder)
            if not any(part.startswith(".") for part in Path(d).relative_to(folder).parts)
            for n in names if _is_image(n)]


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_samples(src) -> list[Sample]:
    """The samples of SRC sorted by key (see the module docstring for the three layouts)."""
    src = Path(src)
    rgb = MODALITIES["rgb"].name
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such folder")
    if (src / rgb).is_dir():
        root, flat = src / rgb, False
    else:
        flat = bool(_images(src, recursive=False))
        if flat and any(p.is_dir() and _images(p, True) for p in src.iterdir()):
            raise ValueError(f"{src} holds images and class folders of images: give a folder "
                             "of class folders, or a flat folder of images")
        root = src
    if flat:
        name = src.resolve().name
        samples = [Sample(f"{name}/{Path(p.name).stem}", p, f"{name}/{p.name}")
                   for p in _images(src, recursive=False)]
    else:  # files directly in the root belong to no class (data.check ignores them too)
        rels = [(p, p.relative_to(root).as_posix()) for p in _images(root, recursive=True)
                if p.parent != root]
        samples = [Sample(os.path.splitext(r)[0], p, r) for p, r in rels]
    samples.sort(key=lambda s: s.key)
    clashes = [a.rel + " / " + b.rel for a, b in zip(samples, samples[1:]) if a.key == b.key]
    if clashes:
        raise ValueError(f"{len(clashes)} image(s) share a name without extension, so their "
                         f"labels would share a file: {clashes[:5]}")
    if not samples:
        raise ValueError(f"{src}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return samples


def _place_rgb(sample: Sample, data: bytes, target: Path) -> None:
    """OUT's rgb file: a hard link to the source when the file system allows, else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(sample.path, target)  # a link appears whole or not at all
    except OSError:  # another device, a file system without links, ...
        atomic.write_bytes(target, data)


def _load(sample: Sample):
    """(file bytes, uint8 (H, W, 3) RGB) of a sample, or (None, the CorruptFileError)."""
    data = sample.path.read_bytes()
    try:
        return data, decode(MODALITIES["rgb"], data, str(sample.path))
    except CorruptFileError as e:
        return None, e


def _decoded(samples, batch_size: int, pool):
    """Yields (samples, loads) batch by batch, decoding in `pool` one batch ahead."""
    ahead = collections.deque()
    for start in range(0, len(samples), batch_size):
        batch = samples[start:start + batch_size]
        ahead.append((batch, [pool.submit(_load, s) for s in batch]))
        if len(ahead) > 1:
            batch, futures = ahead.popleft()
            yield batch, [f.result() for f in futures]
    while ahead:
        batch, futures = ahead.popleft()
        yield batch, [f.result() for f in futures]


def pseudo_label(src, out, labellers, *, batch_size: int = 16, num_workers: int = 8,
                 skip_bad: bool = False, shard: tuple[int, int] = (0, 1),
                 progress: bool = True) -> dict:
    """Labels this shard's samples of `src` into `out` with `labellers` (`labellers.Labeller`s,
    one per modality written). Returns {'labelled': n, 'skipped': n (already done), 'bad':
    [paths of files that do not decode]} (without skip_bad, such a file raises
    CorruptFileError)."""
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= I < N")
    out = Path(out)
    rgb_dir = out / MODALITIES["rgb"].name
    mine = list_samples(src)[index::count]

    def targets(sample):
        """{labeller or None (the rgb file): the file it writes} of what is still missing."""
        paths = {lab: out / lab.modality.name / (sample.key + lab.modality.write_ext)
                 for lab in labellers}
        paths[None] = rgb_dir / sample.rel
        return {lab: p for lab, p in paths.items() if not p.exists()}

    todo = [(s, targets(s)) for s in mine]
    todo = [(s, t) for s, t in todo if t]
    result = {"labelled": 0, "skipped": len(mine) - len(todo), "bad": []}
    missing = dict(todo)
    with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool, \
            tqdm(total=len(todo), desc="pseudo-labelling", unit="image",
                 disable=not progress) as bar:
        for batch, loads in _decoded([s for s, _ in todo], batch_size, pool):
            good = []
            for sample, (data, image) in zip(batch, loads):
                if data is not None:
                    good.append((sample, data, image))
                elif skip_bad:
                    result["bad"].append(str(sample.path))
                else:
                    raise CorruptFileError(f"{image} (--skip-bad leaves such files out)")
            outputs = {}
            for lab in labellers:  # each labeller runs on the images that still lack its file
                needed = [g for g in good if lab in missing[g[0]]]
                if needed:
                    arrays = lab([image for _, _, image in needed])
                    outputs.update({(s.key, lab): a for (s, _, _), a in zip(needed, arrays)})
            for sample, data, _ in good:
                for lab, path in missing[sample].items():  # the rgb file (None) last
                    if lab is not None:
                        atomic.write_bytes(path, encode(lab.modality, outputs[sample.key, lab]))
                if None in missing[sample]:
                    _place_rgb(sample, data, missing[sample][None])
                result["labelled"] += 1
            bar.update(len(batch))
    return result


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= I < N")
    return index, count


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m multimae_jax.data.pseudo_label",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="images: a dataset root with rgb/, class folders, or a flat folder")
    p.add_argument("out", help="the dataset root to write (may be SRC when SRC has rgb/)")
    p.add_argument("--labeller", choices=("hf", "jax"), default="hf",
                   help="hf: transformers models (the [pseudo] extra); jax: our MultiViT "
                        "checkpoints (default hf)")
    p.add_argument("--tasks", nargs="+", choices=("depth", "semseg"), default=["depth", "semseg"],
                   help="modalities to write (default both)")
    p.add_argument("--depth-model", default=None, help="hf: a depth-estimation model id or "
                   "folder (default Intel/dpt-hybrid-midas)")
    p.add_argument("--semseg-model", default=None, help="hf: a universal-segmentation model id "
                   "or folder (default facebook/mask2former-swin-small-coco-panoptic)")
    p.add_argument("--device", default=None, help="hf: torch device (default cuda if available)")
    p.add_argument("--depth-checkpoint", help="jax: a depth fine-tuning checkpoint or workdir")
    p.add_argument("--semseg-checkpoint", help="jax: an rgb semseg fine-tuning checkpoint or "
                   "workdir")
    p.add_argument("--depth-mean", type=float, default=None, help="jax: the depth run's "
                   "config.target.mean (default NYU's)")
    p.add_argument("--depth-std", type=float, default=None, help="jax: the depth run's "
                   "config.target.std (default NYU's)")
    p.add_argument("--depth-output", choices=("depth", "disparity"), default=None,
                   help="what the hf depth model predicts (default disparity, as MiDaS models); "
                        "disparity is turned into depth by labellers.disparity_to_depth")
    p.add_argument("--semseg-classes", type=int, default=None,
                   help="accept a segmentation model with this many classes (a custom label set; "
                        "pre-train with --config.modalities.semseg.num_classes=N); default 133")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=8, help="image-decoding threads")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out files that do not decode (listed at the end) instead of "
                        "stopping")
    p.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                   help="label every N-th sample from the I-th (several processes)")
    return p.parse_args(argv)


def build_labellers(args) -> list:
    """The labellers the arguments ask for, one per task."""
    mods = {t: MODALITIES[t] for t in args.tasks}
    if args.semseg_classes:
        mods = {t: m.replace(num_classes=args.semseg_classes) if m.kind == "labels" else m
                for t, m in mods.items()}
    out = []
    if args.labeller == "jax":
        from multimae_jax.data.labellers_jax import JaxLabeller
        depth = {k: v for k, v in (("depth_mean", args.depth_mean),
                                   ("depth_std", args.depth_std)) if v is not None}
        for task, mod in mods.items():
            checkpoint = getattr(args, f"{task}_checkpoint")
            if not checkpoint:
                raise ValueError(f"--labeller jax needs --{task}-checkpoint (or leave {task} "
                                 "out of --tasks)")
            out.append(JaxLabeller(checkpoint, mod, **({} if mod.kind == "labels" else depth)))
        return out
    from multimae_jax.data import labellers_hf
    for task, mod in mods.items():
        model = getattr(args, f"{task}_model")
        if mod.kind == "labels":
            out.append(labellers_hf.HfSemsegLabeller.from_pretrained(
                model, modality=mod, device=args.device))
        else:
            out.append(labellers_hf.HfDepthLabeller.from_pretrained(
                model, modality=mod, output=args.depth_output or "disparity",
                device=args.device))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    shard = args.shard or (0, 1)
    if args.labeller == "jax" and args.shard is None:
        import jax
        from multimae_jax.train import distributed
        distributed.maybe_initialize()
        shard = (jax.process_index(), jax.process_count())
    try:
        labellers = build_labellers(args)
        result = pseudo_label(args.src, args.out, labellers, batch_size=args.batch_size,
                              num_workers=args.workers, skip_bad=args.skip_bad, shard=shard)
    except (ValueError, FileNotFoundError, ImportError) as e:  # CorruptFileError included
        print(f"error: {e}", file=sys.stderr)
        return 2
    where = f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""
    print(f"{args.out}{where}: {result['labelled']} labelled, {result['skipped']} skipped (already "
          f"done), {len(result['bad'])} bad")
    for path in result["bad"]:
        print(f"  bad: {path}")
    if result["bad"] and Path(args.out).resolve() == Path(args.src).resolve():
        print("  (these stay in OUT/rgb without labels: remove them, or data.check reports them)")
    print(f"next: python -m multimae_jax.data.check {args.out}"
          + (" (once every shard has finished)" if shard[1] > 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
