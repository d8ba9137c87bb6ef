"""Random-access sources of the dense fine-tuning tasks (HOST side), picklable for grain workers.

Item i is a sample {'key': str, 'paths': {task: file or record}, task: native array}: arrays as
stored ('rgb' uint8 (H, W, 3), depth uint16 (H, W), labels uint8 (H, W), a validity mask uint8
(H, W, 1) with 255 = valid, Taskonomy files as stored), all of one H x W. Transforms come later
(`dense_pipeline`). Layouts:

- folders as the official fine-tuning reads them (utils/dataset_folder.py: MultiTaskImageFolder,
  used by datasets_semseg.py and dataset_regression.py): SPLIT_DIR/<modality>/<subfolder>/<file>,
  e.g. tools/prepare_nyuv2.py writes nyu/train/rgb/data/0001.png; the modalities are the
  config's (rgb, depth, semseg, mask_valid, ...). The official loader pairs files by position,
  so one missing file misaligns every later sample; here samples pair by name and a missing
  one is an error naming it (`folder.FolderSource`);
- packed shards (`shards.ShardSource`) and TFDS (`tfds_source.TfdsSource`), decoded the same way;
- Taskonomy (`taskonomy_source.TaskonomySource`): ROOT/<task>/<building>/point_<p>_view_<v>_
  domain_<task>.png for the rows of a split CSV;
- the embedded synthetic scenes with a rendered validity mask (no files).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from multimae_jax.data.folder import FolderSource, folder_names
from multimae_jax.data.records import decode_record
from multimae_jax.data.shards import ShardSource, is_shard_dir
from multimae_jax.data.synthetic import SyntheticScenes, range_mask
from multimae_jax.data.taskonomy_source import TaskonomySource
from multimae_jax.data.tfds_source import TfdsSource, parse_tfds_path
from multimae_jax.modalities import IMAGE_EXTENSIONS, resolve


class DecodedSource:
    """A raw source (FolderSource, ShardSource, TfdsSource: encoded files or arrays) decoded per
    Modality storage, its samples in the order `order` (raw indices; default: the raw order).
    Sizes must agree (CorruptFileError naming each file and its H x W); label values are left to
    the transforms, which know the label adaptation (`dense_transforms.adapt_labels`)."""

    def __init__(self, raw, modalities, order=None):
        self.raw, self.modalities = raw, resolve(modalities)
        self.order = list(range(len(raw))) if order is None else list(order)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> dict:
        record = self.raw[self.order[index]]
        decoded = decode_record(record, self.modalities, check_labels=False)
        paths = record.get("paths", {})
        out = {"key": record["key"],
               "paths": {t: paths.get(t, f"{record['key']} ({t})") for t in self.modalities}}
        return out | {t: decoded[t] for t in self.modalities}

    def __repr__(self) -> str:
        return f"Decoded({self.raw!r}, {list(self.modalities)})"


def official_folder_order(source: FolderSource) -> list[int]:
    """Sample indices of `source` in the order the official loader lists them (utils/
    dataset_folder.py: make_dataset: sorted class folders, sorted(os.walk(...)), sorted file
    names with their extension) in its first task, the order its max_images subset permutes."""
    scan, first = source.scan, source.scan.tasks[0]

    def key(i):
        rel_dir, name = scan.files[first][scan.samples[i]].rsplit("/", 1)
        return rel_dir.split("/", 1)[0], rel_dir, name
    return sorted(range(len(scan.samples)), key=key)


def _check_subfolders(root: Path, tasks) -> None:
    """The official loader only reads files inside a subfolder of each modality folder; images
    lying directly in one are a layout mistake worth naming (here they would be ignored)."""
    for task in tasks:
        folder = root / task
        if folder.is_dir() and not any(e.is_dir() for e in os.scandir(folder)) and any(
                Path(e.name).suffix.lower() in IMAGE_EXTENSIONS for e in os.scandir(folder)):
            raise ValueError(f"{folder}: images lie directly in the modality folder; the layout "
                             f"is {root}/<modality>/<subfolder>/<file> (e.g. {task}/data/0001.png "
                             "as tools/prepare_nyuv2.py writes it): move them into a subfolder")


def dense_folder(root, modalities, allow_incomplete: bool = False) -> DecodedSource:
    """The split folder `root` (e.g. nyu/train) with one folder per modality, decoded, in the
    official order. A missing modality folder (a required mask_valid, say) is a
    FileNotFoundError naming it; a sample missing in one folder a ValueError naming it."""
    mods = resolve(modalities)
    _check_subfolders(Path(root), mods)
    raw = FolderSource(root, tuple(mods.values()), allow_incomplete)
    return DecodedSource(raw, mods, official_folder_order(raw))


class SyntheticDenseSource:
    """Scenes start .. start + num_samples - 1 of `scenes` as dense samples: 'rgb' uint8 (S, S, 3),
    'depth' uint16 (S, S) in 1/4000 m, 'semseg' uint8 (S, S) class ids at full resolution, and,
    when `mask` names it, a validity mask uint8 (S, S, 1) (`synthetic.range_mask`: 255 where
    the depth is at most max_depth_m)."""

    def __init__(self, scenes: SyntheticScenes, start: int = 0, num_samples: int | None = None,
                 mask: str | None = None, max_depth_m: float = 10.0):
        count = len(scenes) - start if num_samples is None else num_samples
        if start < 0 or count <= 0 or start + count > len(scenes):
            raise ValueError(f"samples {start}..{start + count - 1} are not within the "
                             f"{len(scenes)} synthetic scenes")
        self.scenes, self.start, self.count = scenes, start, count
        self.mask, self.max_depth_m = mask, max_depth_m

    @property
    def keys(self) -> tuple[str, ...]:
        return SyntheticScenes.MODALITIES + ((self.mask,) if self.mask else ())

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} out of range [0, {self.count})")
        i = self.start + index
        out = {"key": f"synthetic/{i}", "paths": {t: f"synthetic/{i} ({t})" for t in self.keys},
               **self.scenes[i]}
        if self.mask:
            out[self.mask] = range_mask(out, self.max_depth_m)
        return out

    def __repr__(self) -> str:
        s = self.scenes
        return (f"SyntheticDense(scenes {self.start}..{self.start + self.count - 1} of "
                f"{s.num_samples}, {s.image_size}px, {s.num_classes} classes, seed {s.seed}, "
                f"mask {self.mask!r})")


class Subset:
    """Items indices[0], indices[1], ... of `source`."""

    def __init__(self, source, indices):
        self.source, self.indices = source, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.source[self.indices[index]]

    def __repr__(self) -> str:
        return f"Subset({self.source!r}, {len(self)} samples)"


def official_subset(num_samples: int, max_images: int) -> np.ndarray:
    """The official max_images selection of a folder (utils/dataset_folder.py:
    MultiTaskDatasetFolder.__init__): np.random.seed(0); np.random.permutation(n)[:max_images],
    in that permuted order (e.g. the 100-image NYUv2 depth validation set)."""
    return np.random.RandomState(0).permutation(num_samples)[:max_images]


def make_dense_source(path: str, modalities, *, split_csv: str = "",
                      taskonomy_folders=None, max_images: int | None = None,
                      mask: str | None = None,
                      allow_incomplete: bool = False, tfds_fields=None, tfds_scales=None,
                      synthetic_scenes: SyntheticScenes | None = None, synthetic_start: int = 0,
                      synthetic_samples: int | None = None):
    """The source of a config's data section; `modalities`: the Modality objects (or default
    names) to read, the validity mask `mask` included.

    path '' -> `synthetic_scenes` [synthetic_start, + synthetic_samples), rendering `mask`;
    split_csv -> Taskonomy under `path`, the first max_images rows (taskonomy_folders: {key:
    folder} where they differ);
    'tfds:NAME[:SPLIT]' -> TFDS (tfds_fields, tfds_scales: `TfdsSource`); a folder with
    meta.json -> packed shards; else the split folder `path` (e.g. nyu/train). For these three,
    max_images is the official random subset.
    """
    if not path:
        if synthetic_scenes is None:
            raise ValueError("data.path is empty and no synthetic scenes are configured")
        source = SyntheticDenseSource(synthetic_scenes, synthetic_start, synthetic_samples, mask)
        unknown = set(folder_names(modalities)) - set(source.keys)
        if unknown:
            raise ValueError(f"the synthetic scenes have {list(source.keys)}, not "
                             f"{sorted(unknown)}; set data.path to a dataset that has them")
    elif split_csv:
        return TaskonomySource(path, split_csv, modalities, max_images,
                               folders=taskonomy_folders)
    elif path.startswith("tfds:"):
        mods = resolve(modalities)
        source = DecodedSource(TfdsSource(*parse_tfds_path(path), tuple(mods.values()),
                                          tfds_fields, tfds_scales), mods)
    elif is_shard_dir(path):
        mods = resolve(modalities)
        source = DecodedSource(ShardSource(path, tuple(mods)), mods)
    else:
        source = dense_folder(path, modalities, allow_incomplete)
    if max_images is None:
        return source
    return Subset(source, official_subset(len(source), max_images))
