"""Random-access sources of image classification (HOST side), picklable for grain workers.

Item i is {'key': str, 'label': int, 'paths': {modality: where}, <modality>: its native array
(`codecs.decode`: rgb uint8 (H, W, 3), depth uint16 (H, W), ...) or None} for each input
modality (rgb alone, or any subset of the pre-training modalities). A corrupt file is a
CorruptFileError naming it, unless `skip_corrupt` (logged): a training source then gives the
next readable sample in its place, an evaluation source None (a row that evaluation does not
count, `classify_transforms.ClassifyRecipe`).
Layouts (`make_classify_source`):

- ImageNet's folder SPLIT_DIR/<class>/<file>, read as torchvision's ImageFolder reads it
  (utils/datasets.py: build_dataset, data_set IMNET): classes are the sorted subfolders, label =
  the class's index. The official code builds each split's class list on its own, so a class
  folder missing from val silently shifts every later label; here the splits must agree
  (`check_classes`);
- the official pre-training layout SPLIT_DIR/<modality>/<class>/<file> (the pseudo-labelled
  ImageNet: train/rgb/n01440764/..., train/depth/n01440764/...), the samples paired by path,
  when SPLIT_DIR holds a folder of every input modality (needed for more than rgb);
- TFDS `tfds:imagenet2012` (labels are the sorted-wnid indices, as the folder's);
- packed shards (`python -m multimae_jax.data.pack`), labels and classes as packed;
- the embedded synthetic scenes, labelled by their largest object's shape class
  (`SyntheticClassSource`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from multimae_jax.data.codecs import CorruptFileError
from multimae_jax.data.folder import FolderSource
from multimae_jax.data.records import decode_record
from multimae_jax.data.shards import ShardSource, is_shard_dir
from multimae_jax.data.synthetic import SyntheticScenes
from multimae_jax.data.tfds_source import TfdsSource, parse_tfds_path
from multimae_jax.modalities import IMAGE_EXTENSIONS


class ImageFolder:
    """SPLIT_DIR/<class>/<file> as raw records {'key': '<class>/<name>', 'label', modality: file
    bytes, 'paths'} of one modality. Errors name the folder: images lying directly in SPLIT_DIR
    (ILSVRC2012's validation set comes flat and needs its class folders), a class folder without
    an image (torchvision refuses it too), no image at all."""

    def __init__(self, split_dir, modality: str = "rgb"):
        split_dir = Path(split_dir)
        if not split_dir.is_dir():
            raise FileNotFoundError(f"{split_dir}: missing; the layout is SPLIT/<class>/<image> "
                                    "or SPLIT/<modality>/<class>/<image>")
        entries = sorted(split_dir.iterdir())
        flat = [p.name for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if flat:
            raise ValueError(f"{split_dir}: {len(flat)} images lie directly in the folder (e.g. "
                             f"{flat[0]}); the layout is SPLIT/<class>/<image>. ILSVRC2012's "
                             "validation images come flat: move each into its class (wnid) "
                             "folder, as the official code expects")
        self.folder = FolderSource(split_dir.parent, (split_dir.name,))
        empty = sorted({p.name for p in entries if p.is_dir()} - set(self.folder.classes))
        if empty:
            raise ValueError(f"{split_dir}: class folder(s) {empty[:5]} hold no image "
                             f"({len(empty)} in all); remove them or add their images")
        self.split, self.modality = split_dir.name, modality

    @property
    def classes(self) -> list[str]:
        return self.folder.classes

    @staticmethod
    def class_folders(split_dir, modalities=("rgb",)) -> list[str] | None:
        """The classes of split_dir without reading the images: the sorted subfolders of
        split_dir/<first modality> in the multi-modal layout (`is_multimodal`), else of
        split_dir; None if it does not exist."""
        split_dir = Path(split_dir)
        if is_multimodal(split_dir, modalities):
            split_dir = split_dir / modalities[0]
        if not split_dir.is_dir():
            return None
        return sorted(p.name for p in split_dir.iterdir() if p.is_dir())

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> dict:
        record = self.folder[index]
        record[self.modality] = record.pop(self.split)
        record["paths"] = {self.modality: record["paths"][self.split]}
        return record

    def __repr__(self) -> str:
        return f"ImageFolder({self.folder.scan.root / self.split}, {len(self)} images)"


def is_multimodal(split_dir, modalities) -> bool:
    """Whether split_dir is in the official pre-training layout SPLIT/<modality>/<class>/<file>:
    it holds a folder named after every modality (no ImageNet class is named 'rgb')."""
    return all((Path(split_dir) / m).is_dir() for m in modalities)


class SyntheticClassSource:
    """Scenes start .. start + count - 1 of `scenes` as raw records of `modalities` (of
    SyntheticScenes.MODALITIES) labelled by the object class covering the most pixels (ties: the
    smaller class) minus one: one of the scenes.num_classes - 1 object classes, each a fixed
    shape family. Scenes of `single_class` ones (the classification configs render those) have
    one class: the label."""

    def __init__(self, scenes: SyntheticScenes, start: int, count: int,
                 modalities=("rgb",)):
        unknown = sorted(set(modalities) - set(scenes.MODALITIES))
        if unknown:
            raise ValueError(f"the synthetic scenes have no {unknown}; they hold "
                             f"{list(scenes.MODALITIES)}")
        self.scenes, self.start, self.count = scenes, start, count
        self.modalities = tuple(modalities)

    @property
    def classes(self) -> list[str]:
        return [f"class_{k}" for k in range(1, self.scenes.num_classes)]

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        scene = self.scenes[self.start + index]
        pixels = np.bincount(scene["semseg"].ravel(), minlength=self.scenes.num_classes)
        key = f"synthetic/{self.start + index}"
        return {"key": key, "label": int(np.argmax(pixels[1:])),
                **{m: scene[m] for m in self.modalities},
                "paths": {m: f"{key} ({m})" for m in self.modalities}}

    def __repr__(self) -> str:
        return (f"SyntheticClassSource({self.count} scenes from {self.start}, "
                f"{self.scenes.image_size}px, {len(self.classes)} classes)")


class ClassifySource:
    """A raw source decoded: item i is {'key', 'label', 'paths', <modality>: native array} for
    each of `modalities` (Modality objects). A corrupt file is a CorruptFileError naming it; with
    skip_corrupt it is logged and replaced by the next readable sample (`train`) or its
    modalities are None (evaluation). `classes`: the raw source's class names (None for TFDS)."""

    def __init__(self, raw, modalities, skip_corrupt: bool = False, train: bool = True):
        self.raw, self.modalities = raw, tuple(modalities)
        self.skip_corrupt, self.train = skip_corrupt, train
        self.classes = getattr(raw, "classes", None)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> dict:
        for offset in range(len(self.raw) if self.skip_corrupt and self.train else 1):
            sample = self._decoded((index + offset) % len(self.raw))
            if sample[self.modalities[0].name] is not None:
                return sample
        if self.train:
            raise CorruptFileError(f"{self.raw!r}: no readable image")
        return sample

    def _decoded(self, index: int) -> dict:
        record = self.raw[index]
        names = [m.name for m in self.modalities]
        where = {n: record.get("paths", {}).get(n, f"{record['key']} ({n})") for n in names}
        sample = decode_record(record, self.modalities, self.skip_corrupt, check_labels=True)
        for m in self.modalities:
            image = None if sample is None else sample[m.name]
            if m.storage == "rgb8" and image is not None and (image.ndim != 3
                                                                or image.shape[-1] != 3):
                raise CorruptFileError(f"{where[m.name]}: expected an RGB image, got shape "
                                       f"{image.shape}")
        return {"key": record["key"], "label": int(record["label"]), "paths": where,
                **{n: None if sample is None else sample[n] for n in names}}

    def __repr__(self) -> str:
        return f"Classify({self.raw!r})"


def check_classes(train_classes, val_classes, where: str) -> None:
    """ValueError naming the differences unless both splits have the same class list (the
    labels are indices into it)."""
    if train_classes is None or val_classes is None or list(train_classes) == list(val_classes):
        return
    missing = sorted(set(train_classes) - set(val_classes))
    extra = sorted(set(val_classes) - set(train_classes))
    raise ValueError(f"{where}: the validation classes differ from training's: "
                     + (f"{len(missing)} missing from val (e.g. {missing[:5]}) " if missing else "")
                     + (f"{len(extra)} only in val (e.g. {extra[:5]})" if extra else "")
                     + ("" if missing or extra else "same names in another order")
                     + "; labels are class indices, so every split needs the same class folders")


def make_classify_source(path: str, split: str, modalities, *, train: bool,
                         skip_corrupt: bool = False, tfds_fields=None,
                         synthetic_scenes: SyntheticScenes | None = None,
                         synthetic_start: int = 0, synthetic_count: int = 0) -> ClassifySource:
    """The classification source of config.data for `modalities` (Modality objects): path '' ->
    the synthetic scenes [synthetic_start, + synthetic_count); 'tfds:NAME' -> NAME's split
    `split` (tfds_fields: {modality: feature}, e.g. {'rgb': 'image'}); a folder with meta.json
    -> packed shards; else the folder path/split, in the multi-modal layout when it holds a
    folder per modality (`is_multimodal`), else ImageNet's (one modality). train: how
    data.skip_corrupt treats a corrupt image (`ClassifySource`)."""
    modalities = tuple(modalities)
    names = tuple(m.name for m in modalities)
    if not path:
        if synthetic_scenes is None:
            raise ValueError("data.path is empty and no synthetic scenes are configured")
        raw = SyntheticClassSource(synthetic_scenes, synthetic_start, synthetic_count, names)
    elif path.startswith("tfds:"):
        name, _ = parse_tfds_path(path)
        raw = TfdsSource(name, split, modalities, tfds_fields)
    elif is_shard_dir(Path(path) / split):
        raw = ShardSource(Path(path) / split, names)
    elif is_multimodal(Path(path) / split, names):
        raw = FolderSource(Path(path) / split, names)
    elif len(names) > 1:
        raise FileNotFoundError(
            f"{Path(path) / split}: inputs {list(names)} need the layout "
            f"SPLIT/<modality>/<class>/<file> with a folder per modality; missing: "
            f"{[n for n in names if not (Path(path) / split / n).is_dir()]}")
    else:
        raw = ImageFolder(Path(path) / split, names[0])
    return ClassifySource(raw, modalities, skip_corrupt, train)
