"""Photo-like samples at ImageNet's sizes and file formats, to time the input pipeline on
realistic files (`python -m multimae_jax.data.benchmark --realistic`).

    python -m multimae_jax.data.realistic OUT_DIR --num_samples N   # rgb JPEG q90 4:2:0

Sizes (height x width, `SIZES`, drawn per sample): 375 x 500 (40 %), 500 x 375 (10 %), 333 x 500
(12 %), 500 x 333 (3 %), 500 x 500 (5 %), and 30 % smaller ones, longer side uniform in
150-400 at 3:4, 4:3, 2:3 or 1:1: a mean of about 350 x 410 (ImageNet's training images
average about 400 x 350, most at 500 x 375 or 375 x 500; `mean_size` computes ours).

Content: a synthetic scene (`synthetic.SyntheticScenes`: objects, shading, exact depth and
labels) rendered at the longer side and centre-cropped, made photo-like for the decoders:
* rgb: plus 1/f-like texture (smooth noise in 7 octaves, 4 to 256 cells across the height, 8
  levels in the 3 coarsest and 12 in the finer ones, in luminance and colour) and sensor
  noise of std 5 levels. As JPEG q90 4:2:0 (PIL's default, that of most photos) that is 3.7
  bits per pixel, 74 KB per file on average, decoding in 1.0 ms (mean size, this machine): two
  real photos re-encoded at 500 x 331, q90, gave 2.6 and 3.8 bits per pixel and decoded in
  0.84 and 0.99 ms.
* depth: the scene's depth in the pseudo-label convention (`pseudo_label.py`: depth / max x
  65535) times a smooth +-3 % field (a network's low-frequency error) plus noise of std 2
  units (its pixel-level variation): 16-bit PNGs of 137 KB on average, decoding in 2.1 ms (a
  noiseless map compresses to a tenth but still decodes in two thirds of the time).
* semseg: the scene's labels (8 classes), 8-bit PNGs of 2 KB, decoding in 0.35 ms.
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
from PIL import Image

from multimae_jax.data.synthetic import SyntheticScenes, write_samples

#: (height, width, probability) of the common sizes; the rest (SMALL_FRACTION) are smaller
SIZES = ((375, 500, 0.40), (500, 375, 0.10), (333, 500, 0.12), (500, 333, 0.03),
         (500, 500, 0.05))
SMALL_FRACTION = 0.30
SMALL_LONGER_SIDE = (150, 400)  # uniform
SMALL_ASPECTS = ((3, 4), (4, 3), (2, 3), (1, 1))  # height : width, equally likely


def draw_size(rng: np.random.Generator) -> tuple[int, int]:
    """One (height, width) of the distribution above."""
    u = rng.random()
    for height, width, p in SIZES:
        if u < p:
            return height, width
        u -= p
    longer = int(rng.integers(SMALL_LONGER_SIDE[0], SMALL_LONGER_SIDE[1] + 1))
    a, b = SMALL_ASPECTS[rng.integers(len(SMALL_ASPECTS))]
    return (longer, round(longer * b / a)) if a >= b else (round(longer * a / b), longer)


def mean_size(n: int = 20_000) -> tuple[float, float]:
    """(mean height, mean width) of n draws."""
    rng = np.random.default_rng(0)
    return tuple(np.mean([draw_size(rng) for _ in range(n)], axis=0))


def _smooth_noise(rng, height: int, width: int, cells: int, channels: int) -> np.ndarray:
    """float32 (height, width, channels) of about unit std: a cells-row grid of normal values
    upsampled bicubically (PIL 'F' images)."""
    grid_w = max(2, round(cells * width / height))
    grid = rng.standard_normal((channels, cells, grid_w)).astype(np.float32)
    return np.stack([np.asarray(Image.fromarray(g).resize((width, height), Image.BICUBIC))
                     for g in grid], axis=-1)


@dataclasses.dataclass(frozen=True)
class RealisticScenes:
    """A deterministic map index -> photo-like sample (see the module docstring); sample
    `index` depends only on (seed, index). Items: 'rgb' uint8 (H, W, 3), 'depth' uint16 (H, W),
    'semseg' uint8 (H, W), H x W drawn by `draw_size`."""
    MODALITIES = SyntheticScenes.MODALITIES

    num_samples: int = 1000
    seed: int = 0
    num_classes: int = 8

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range [0, {self.num_samples})")
        rng = np.random.default_rng((self.seed, index, 1))  # the scene uses (seed, index)
        height, width = draw_size(rng)
        side = max(height, width)
        scene = SyntheticScenes(self.num_samples, side, self.num_classes, self.seed)[index]
        top, left = (side - height) // 2, (side - width) // 2
        scene = {k: v[top:top + height, left:left + width] for k, v in scene.items()}

        texture = np.zeros((height, width, 3), np.float32)
        for octave, cells in enumerate((4, 8, 16, 32, 64, 128, 256)):
            amplitude = 8.0 if octave < 3 else 12.0
            texture += amplitude * _smooth_noise(rng, height, width, cells, 1)
            texture += 0.4 * amplitude * _smooth_noise(rng, height, width, cells, 3)
        rgb = scene["rgb"] + texture + rng.normal(0, 5, texture.shape)
        depth = scene["depth"] / scene["depth"].max() * 65535
        depth = depth * (1 + 0.03 * _smooth_noise(rng, height, width, 4, 1)[..., 0])
        depth = depth + rng.normal(0, 2, depth.shape)
        return {"rgb": np.clip(np.rint(rgb), 0, 255).astype(np.uint8),
                "depth": np.clip(np.rint(depth), 0, 65535).astype(np.uint16),
                "semseg": scene["semseg"]}

    def write_folder(self, root, num_samples: int | None = None, jpeg_quality: int = 90,
                     progress: bool = False) -> list[str]:
        """`synthetic.write_samples` with JPEG rgb at jpeg_quality, 4:2:0."""
        return write_samples(self, root, num_samples, jpeg_quality=jpeg_quality,
                             jpeg_subsampling=2, progress=progress)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write photo-like rgb/depth/semseg samples at "
                                     "ImageNet's sizes in the MultiMAE folder layout.")
    parser.add_argument("out_dir")
    parser.add_argument("--num_samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jpeg_quality", type=int, default=90)
    args = parser.parse_args(argv)
    paths = RealisticScenes(args.num_samples, args.seed).write_folder(
        args.out_dir, jpeg_quality=args.jpeg_quality, progress=True)
    print(f"wrote {len(paths)} samples to {args.out_dir}/<modality>/<folder>/<name>.<ext>")


if __name__ == "__main__":
    main()
