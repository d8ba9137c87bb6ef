"""Modalities as data: one `Modality` value says everything the code needs about one kind of
input or output — how its files are stored and decoded, how the host resamples it when cropping,
how the device normalises it, its channels or classes and stride, its input adapter, its loss
and how to draw it.

Nothing outside this module tests a modality's name. Entries are frozen dataclasses: picklable
(they travel to grain worker processes as arguments, never looked up globally) and JSON-able.
A config overrides fields for a run (`config.modalities.semseg.num_classes = 150`) or defines a
new modality with all its fields; code that takes modalities accepts names of the default
entries below or `Modality` objects.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

from multimae_jax.label_sets import LABEL_SETS

KINDS = ("image", "labels")
STORAGES = ("rgb8", "uint8", "uint16", "labels", "npy")
RESAMPLES = ("bicubic", "nearest")
LOSSES = ("mse", "l1", "cross_entropy")
DRAWS = ("image", "colormap", "labels", "patches")


@dataclasses.dataclass(frozen=True)
class Modality:
    """One modality (or an extra output such as norm_rgb).

    name: its folder name on disk and its key in batches, adapters and losses.
    kind: 'image' (float (B, H, W, channels) in the model) or 'labels' (int (B, H/s, W/s)).
    channels: image channels ('image'); num_classes: classes ('labels'; logits of its decoder).
    stride_level: resolution divisor of the model input relative to the image (semseg: 4).
    storage (files -> HOST arrays): 'rgb8' any image converted to RGB, uint8 (H, W, 3) (the
      official PIL `.convert('RGB')`); 'uint8' an 8-bit image with `channels` channels as
      stored (e.g. surface normals as PNG); 'uint16' a 16-bit single-channel PNG; 'labels' an
      8-bit single-channel PNG of class ids; 'npy' a float32 array (H, W[, C]).
    write_ext: extension used when writing files of this modality.
    resample: host interpolation when cropping and resizing, 'bicubic' (PIL-exact) or 'nearest'.
    scale, mean, std, standardize (DEVICE normalisation of images): x / scale (default by
      storage: 255 for 8-bit, 2**16 for 16-bit as the official depth loader, 1 for .npy), then
      (x - mean) / std per channel when given, then with `standardize` the official truncated
      per-sample standardisation (10-90 % of the sorted values, ddof 1, eps 1e-6).
    dim_class_emb: class-embedding width of a 'labels' input adapter.
    loss: 'mse', 'l1' or 'cross_entropy'; norm_pix: standardise target patches (norm_rgb).
    target: for an output computed from another modality's data (norm_rgb: 'rgb'), that
      modality; its data is the target, its mask the loss mask, and its decoder's queries are
      that modality's tokens. None: the modality itself (read from disk).
    draw: 'image' (undo mean/std, clip to [0, 1]), 'colormap' (one channel, the target's
      min..max), 'labels' (a fixed palette), 'patches' (each patch min..max; norm_pix outputs).
    label_set: for labels, a name in `label_sets.LABEL_SETS` (class names and colours for
      pictures and legends); used only while num_classes equals its size (a run that changes
      the classes gets the generated palette).
    """
    name: str
    kind: str = "image"
    channels: int = 3
    num_classes: int = 0
    stride_level: int = 1
    storage: str = "rgb8"
    write_ext: str = ".png"
    resample: str = "bicubic"
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    standardize: bool = False
    dim_class_emb: int = 64
    loss: str = "mse"
    norm_pix: bool = False
    target: str | None = None
    draw: str = "image"
    label_set: str | None = None

    def __post_init__(self):
        for field, allowed in (("kind", KINDS), ("storage", STORAGES), ("resample", RESAMPLES),
                               ("loss", LOSSES), ("draw", DRAWS)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"modality '{self.name}': {field}={getattr(self, field)!r}, "
                                 f"expected one of {allowed}")
        if self.scale is None:  # stored integers never reach the model raw
            object.__setattr__(self, "scale", DEFAULT_SCALES[self.storage])
        for field in ("mean", "std"):  # lists from JSON or a config -> hashable tuples
            if getattr(self, field) is not None:
                object.__setattr__(self, field, tuple(float(v) for v in getattr(self, field)))
        if self.label_set is not None and self.label_set not in LABEL_SETS:
            raise ValueError(f"modality '{self.name}': label_set={self.label_set!r}, expected "
                             f"one of {sorted(LABEL_SETS)} or None")
        if self.kind == "labels" and self.num_classes <= 0:
            raise ValueError(f"modality '{self.name}': labels need num_classes > 0")
        if self.kind == "labels" and self.storage not in ("labels", "npy"):
            raise ValueError(f"modality '{self.name}': labels are stored as 'labels' or 'npy', "
                             f"not {self.storage!r}")
        if self.kind == "image":
            for field in ("mean", "std"):
                value = getattr(self, field)
                if value is not None and len(value) not in (1, self.channels):
                    raise ValueError(f"modality '{self.name}': {field} has {len(value)} values "
                                     f"for {self.channels} channels")
        if self.resample == "bicubic" and self.storage not in ("rgb8", "uint8", "uint16"):
            raise ValueError(f"modality '{self.name}': bicubic resampling is PIL's, for 8- and "
                             f"16-bit images; use resample='nearest' for {self.storage!r}")

    @property
    def source(self) -> str:
        """The modality whose data (and mask) this one uses: `target`, or itself."""
        return self.target or self.name

    @property
    def on_disk(self) -> bool:
        return self.target is None

    @property
    def out_channels(self) -> int:
        """Channels of its decoder's output: classes for labels, else image channels."""
        return self.num_classes if self.kind == "labels" else self.channels

    def replace(self, **changes) -> "Modality":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"modality '{self.name}': unknown field(s) {sorted(unknown)}; fields: "
                             f"{[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DEFAULT_SCALES = {"rgb8": 255.0, "uint8": 255.0, "uint16": 2.0 ** 16, "labels": 1.0, "npy": 1.0}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# NYUv2 depth fine-tuning targets: (raw depth - mean) / std (utils/data_constants.py: NYU_MEAN/STD)
NYU_DEPTH_MEAN = 2070.7764
NYU_DEPTH_STD = 777.5723

#: The official modalities (`run_pretraining_multimae.py: DOMAIN_CONF` and
#: `utils/datasets.py: DataAugmentationForMultiMAE`): ImageNet-normalised RGB; 16-bit depth read
#: as value / 2**16 and standardised per sample; 133 COCO classes at 1/4 resolution; norm_rgb,
#: the extra decoder predicting per-patch standardised RGB.
MODALITIES = {m.name: m for m in (
    Modality("rgb", channels=3, storage="rgb8", write_ext=".jpg", resample="bicubic",
             mean=IMAGENET_MEAN, std=IMAGENET_STD, loss="mse", draw="image"),
    Modality("depth", channels=1, storage="uint16", resample="bicubic", standardize=True,
             loss="l1", draw="colormap"),
    Modality("semseg", kind="labels", channels=1, num_classes=133, stride_level=4,
             storage="labels", resample="nearest", loss="cross_entropy", draw="labels",
             label_set="coco-panoptic"),
    Modality("norm_rgb", channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD, loss="mse",
             norm_pix=True, target="rgb", draw="patches"),
)}

#: File extensions read as images (the official MultiTaskImageFolder's list) and as arrays.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
                    ".jpx")
ARRAY_EXTENSIONS = (".npy",)


def get(modality: str | Modality, registry: Mapping[str, Modality] | None = None) -> Modality:
    """A Modality object, or the entry of that name in `registry` (default: MODALITIES)."""
    if isinstance(modality, Modality):
        return modality
    registry = MODALITIES if registry is None else registry
    if modality not in registry:
        raise ValueError(f"unknown modality '{modality}'; known: {sorted(registry)} (define a "
                         "new one with all its fields in config.modalities.<name>, or pass a "
                         "multimae_jax.modalities.Modality)")
    return registry[modality]


def resolve(modalities: Iterable[str | Modality],
            registry: Mapping[str, Modality] | None = None) -> dict[str, Modality]:
    """{name: Modality} of names and/or Modality objects (or of a {name: Modality} mapping),
    in the given order."""
    if isinstance(modalities, Mapping):
        modalities = modalities.values()
    out = {}
    for m in modalities:
        m = get(m, registry)
        out[m.name] = m
    return out


def with_overrides(overrides: Mapping[str, Mapping] | None,
                   where: str = "config.modalities") -> dict[str, Modality]:
    """MODALITIES with `overrides` applied: {name: {field: value}} changes fields of a default
    entry; an unknown name defines a new modality from its fields (at least 'name' implied,
    'kind' and what that kind needs). Errors name `where`.<name>."""
    registry = dict(MODALITIES)
    for name, fields in (overrides or {}).items():
        fields = dict(fields)
        fields.pop("name", None)
        try:
            registry[name] = (registry[name].replace(**fields) if name in registry
                              else Modality(name=name, **fields))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}.{name}: {e}") from None
    return registry


def data_modalities(outputs: Iterable[Modality], inputs: Iterable[Modality]
                    ) -> dict[str, Modality]:
    """The modalities read from disk for these model inputs and outputs: every input, then the
    source of every output (an output-only task is read but not given to the encoder)."""
    inputs = list(inputs)
    out = {m.name: m for m in inputs}
    for m in outputs:
        if m.source not in out:
            if not m.on_disk:
                raise ValueError(f"output '{m.name}' needs modality '{m.source}' as data; add it "
                                 "to the input or output tasks")
            out[m.name] = m
    return out
