"""TensorFlow Datasets as a source (random access, no TensorFlow needed): data.path
'tfds:NAME[:SPLIT]', e.g. 'tfds:imagenet2012:train'. Records have the same form as the folder's,
with decoded arrays. TFDS finds its data in $TFDS_DATA_DIR (default ~/tensorflow_datasets).

Checked feature layouts (tensorflow-datasets 4.9) of the datasets the fine-tuning recipes read:
- scene_parse150 (ADE20K, SceneParsing: train 20,210, test 2,000 = ADE's validation set):
  'image' uint8 (H, W, 3), 'annotation' uint8 (H, W, 3), the class index (0 = other, 1..150)
  in every channel;
- nyu_depth_v2 (FastDepth's version: train 47,584 frames, validation 654 = the labelled test
  set): 'image' uint8 (480, 640, 3), 'depth' float16 (480, 640) in metres, 0 where unknown.
"""
import numpy as np

from multimae_jax.data.codecs import CorruptFileError
from multimae_jax.modalities import resolve


def parse_tfds_path(path: str) -> tuple[str, str]:
    """'tfds:NAME[:SPLIT]' -> (NAME, SPLIT) (split 'train' by default)."""
    parts = path.split(":")
    if parts[0] != "tfds" or not 2 <= len(parts) <= 3 or not parts[1]:
        raise ValueError(f"data.path '{path}': expected 'tfds:NAME' or 'tfds:NAME:SPLIT'")
    return parts[1], parts[2] if len(parts) == 3 else "train"


class TfdsSource:
    """tfds.data_source(name, split) adapted to raw records {'key', 'label', task: array}.

    `fields` maps a modality to the feature it is read from (config.data.tfds_fields, e.g.
    {'rgb': 'image'}); a modality not in it reads the feature of its own name.

    Grey images become 3-channel for 'rgb8' tasks (as PIL .convert('RGB') does); single-channel
    features are squeezed to (H, W) for 'uint16' and 'labels' tasks, and a 3-channel label
    image with equal channels (scene_parse150's 'annotation') becomes its first channel. A
    float feature read by a 'uint16' task needs a factor in `scales` ({task: factor}, e.g.
    metres -> the official NYUv2 PNG's units, 2**16 / 10): uint16(value x factor) as
    tools/prepare_nyuv2.py writes it (truncated), clipped at 65535 where the official cast
    would wrap round; read by a 'uint8' task (a validity mask) it becomes 255 where the value
    is > 0.
    """

    def __init__(self, name: str, split: str, modalities, fields=None, scales=None):
        try:  # an optional dependency (heavy import), only when this source is used
            import tensorflow_datasets as tfds
        except ImportError as e:
            raise ImportError(f"data.path 'tfds:{name}:{split}' needs tensorflow-datasets: "
                              "pip install 'multimae-jax[tfds]'") from e

        self.name, self.split, self.modalities = name, split, resolve(modalities)
        self.fields = {t: (fields or {}).get(t, t) for t in self.modalities}
        self.scales = dict(scales or {})
        self._source = tfds.data_source(name, split=split)
        features = set(self._source.dataset_info.features.keys())
        missing = {t: f for t, f in self.fields.items() if f not in features}
        if missing:
            raise ValueError(f"tfds:{name}:{split} has features {sorted(features)}; no feature "
                             f"for tasks {missing} (task -> feature)")

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        ex = self._source[index]
        record = {"key": f"{self.name}/{self.split}/{index}",
                  "label": int(ex["label"]) if "label" in ex else 0}
        for task, field in self.fields.items():
            record[task] = self._convert(task, np.asarray(ex[field]), f"{record['key']} ({field})")
        return record

    def _convert(self, task: str, value: np.ndarray, where: str) -> np.ndarray:
        """A feature's array in the layout of `task`'s storage (see the class docstring)."""
        storage = self.modalities[task].storage
        if storage == "rgb8" and value.ndim == 3 and value.shape[-1] == 1:
            return np.repeat(value, 3, axis=-1)
        if storage in ("uint16", "labels", "uint8") and value.ndim == 3 and value.shape[-1] == 1:
            value = value[..., 0]
        if storage == "labels" and value.ndim == 3:
            if value.shape[-1] != 3 or not (np.array_equal(value[..., 0], value[..., 1])
                                            and np.array_equal(value[..., 0], value[..., 2])):
                raise CorruptFileError(f"{where}: labels of {task} must be one channel or three "
                                       f"equal ones, got shape {value.shape}")
            return value[..., 0]
        if np.issubdtype(value.dtype, np.floating) and storage == "uint8":
            return np.where(value > 0, 255, 0).astype(np.uint8)
        if np.issubdtype(value.dtype, np.floating) and storage == "uint16":
            if task not in self.scales:
                raise ValueError(f"tfds:{self.name}: the float feature of {task} needs a factor "
                                 f"to 16-bit units in config.data.tfds_scales.{task}")
            scaled = np.trunc(value.astype(np.float64) * self.scales[task])
            if not np.isfinite(scaled).all() or scaled.min() < 0:
                raise CorruptFileError(f"{where}: {task} has negative or non-finite values")
            return np.minimum(scaled, 65535).astype(np.uint16)
        return value

    def __repr__(self) -> str:
        return f"TfdsSource({self.name}:{self.split}, {len(self)} examples, fields {self.fields})"
