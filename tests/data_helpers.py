"""Small on-disk datasets for data tests, written with the project's own encoders."""
from pathlib import Path

import numpy as np

from multimae_jax import modalities
from multimae_jax.data.codecs import encode

TASKS = ("rgb", "depth", "semseg")


def sample_arrays(index: int, size: int = 32) -> dict:
    """Native arrays whose values encode `index`, so a misaligned pairing is detectable:
    semseg = index % 7 everywhere; depth = 1000 * index + row; rgb a colour from index."""
    rows = np.arange(size, dtype=np.uint16)[:, None].repeat(size, 1)
    return {"rgb": np.full((size, size, 3), (index * 37 % 256, index * 91 % 256, 128), np.uint8),
            "depth": (rows + 1000 * index).astype(np.uint16),
            "semseg": np.full((size, size), index % 7, np.uint8)}


def write_dataset(root, num_samples: int = 12, classes=("n01", "n02", "n03"), size: int = 32,
                  rgb_ext: str = ".png") -> list[str]:
    """ROOT/<task>/<class>/s<index><ext>; returns the sample keys '<class>/s<index>'."""
    root = Path(root)
    keys = []
    for i in range(num_samples):
        cls = classes[i % len(classes)]
        arrays = sample_arrays(i, size)
        for task in TASKS:
            m = modalities.get(task)
            ext = rgb_ext if task == "rgb" else m.write_ext
            path = root / task / cls / f"s{i:03d}{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode(m, arrays[task], ext))
        keys.append(f"{cls}/s{i:03d}")
    return keys
