"""TensorFlow Datasets as a source (random access, no TensorFlow needed): data.path
'tfds:NAME[:SPLIT]', e.g. 'tfds:imagenet2012:train'. Records have the same form as the folder's,
with decoded arrays. TFDS finds its data in $TFDS_DATA_DIR (default ~/tensorflow_datasets)."""
import numpy as np

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
    features are squeezed to (H, W) for 'uint16' and 'labels' tasks.
    """

    def __init__(self, name: str, split: str, modalities, fields=None):
        try:  # an optional dependency (heavy import), only when this source is used
            import tensorflow_datasets as tfds
        except ImportError as e:
            raise ImportError(f"data.path 'tfds:{name}:{split}' needs tensorflow-datasets: "
                              "pip install 'multimae-jax[tfds]'") from e

        self.name, self.split, self.modalities = name, split, resolve(modalities)
        self.fields = {t: (fields or {}).get(t, t) for t in self.modalities}
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
            value = np.asarray(ex[field])
            storage = self.modalities[task].storage
            if storage == "rgb8" and value.ndim == 3 and value.shape[-1] == 1:
                value = np.repeat(value, 3, axis=-1)
            elif storage in ("uint16", "labels") and value.ndim == 3 and value.shape[-1] == 1:
                value = value[..., 0]
            record[task] = value
        return record

    def __repr__(self) -> str:
        return f"TfdsSource({self.name}:{self.split}, {len(self)} examples, fields {self.fields})"
