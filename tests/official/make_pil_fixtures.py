"""Write the golden outputs of PIL's BICUBIC resize that tests/test_pil_resample.py compares
`multimae_jax.data.pil_resample` against, made by the Pillow the official code ran with.

The official augmentation (utils/datasets.py: DataAugmentationForMultiMAE.__call__) crops and
calls `img.resize((224, 224))` with PIL's default filter on the RGB image and on the 16-bit depth
PNG. Pillow 13 changed the pass order (and so the pixels) for some shapes, so today's Pillow
cannot serve as the reference for every case; these files can.

It runs under Pillow < 10.3 (the file was made with 9.5.0) and writes `bicubic_golden.npz`:
for each case an 8-bit RGB image and a 16-bit depth map with their resized versions. The depth
goes through a 16-bit PNG and `Image.open`, which in these Pillows gives a mode 'I' image, as
the official loader saw it. Other Pillows are refused: from 10.3 on, a 16-bit PNG opens as 'I;16' (resized with NEAREST by
default in 10.3-10.4, with per-pass uint16 storage in 11-12, clipped and in another pass order
in 13). Inputs are random noise (the harshest case for rounding and for the cubic overshoot
out of 0..65535), stored in the file. Run from the repository root, in a throwaway
environment outside the repository:

    python3.11 -m venv /tmp/pil95 && /tmp/pil95/bin/pip install pillow==9.5.0 numpy
    /tmp/pil95/bin/python tests/official/make_pil_fixtures.py
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

# name: (in_h, in_w, out_h, out_w). Pillow 13 runs the vertical pass first when
# in_h - out_h > max(0, 2 * (in_w - out_w)): marked "v-first".
CASES = {
    "up_both": (17, 23, 29, 41),
    "down_both_width_shrinks_more": (48, 64, 28, 23),
    "down_both_height_shrinks_more": (64, 42, 23, 32),  # v-first
    "height_down_width_up": (52, 20, 28, 33),  # v-first: a tall RandomResizedCrop box
    "height_up_width_down": (20, 52, 33, 28),
    "crop_like_wide": (44, 53, 40, 40),
    "crop_like_tall": (53, 44, 40, 40),  # v-first
    "same_height": (28, 50, 28, 23),
    "same_width": (50, 28, 23, 28),  # v-first, but a single pass: order cannot matter
    "strong_down_wide": (12, 200, 5, 9),
    "strong_down_tall": (200, 12, 9, 5),  # v-first
    "single_pixel_up": (1, 1, 3, 4),
    "identity": (17, 19, 17, 19),
}
FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "pil"


def _inputs(name: str, in_h: int, in_w: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(sorted(CASES).index(name))
    return (rng.integers(0, 256, (in_h, in_w, 3), dtype=np.uint8),
            rng.integers(0, 2 ** 16, (in_h, in_w), dtype=np.uint16))


def _png_image(depth: np.ndarray) -> Image.Image:
    """The depth map as the official loader gets it: a 16-bit PNG through `Image.open`."""
    buf = io.BytesIO()
    Image.fromarray(depth).save(buf, "PNG")
    buf.seek(0)
    img = Image.open(buf)
    img.load()
    return img


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=FIXTURE_DIR)
    args = parser.parse_args()
    version = tuple(int(p) for p in PIL.__version__.split(".")[:2])
    if version >= (10, 3):
        raise SystemExit(f"Pillow {PIL.__version__}: run under Pillow < 10.3, which opens a "
                         "16-bit PNG as mode 'I' as the official code saw it")
    path, depth_mode = args.out / "bicubic_golden.npz", "I"
    arrays = {"pillow_version": np.array(PIL.__version__)}
    for name, (in_h, in_w, out_h, out_w) in CASES.items():
        rgb, depth = _inputs(name, in_h, in_w)
        arrays[f"{name}/size"] = np.array([out_h, out_w])
        arrays[f"{name}/depth"] = depth
        img = _png_image(depth)
        assert img.mode == depth_mode, (img.mode, depth_mode)
        out = np.asarray(img.resize((out_w, out_h)))  # the default filter, as the official code
        arrays[f"{name}/rgb"] = rgb
        arrays[f"{name}/rgb_resized"] = np.asarray(Image.fromarray(rgb).resize((out_w, out_h)))
        arrays[f"{name}/depth_resized_I"] = out.astype(np.int32)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB) with Pillow {PIL.__version__}")


if __name__ == "__main__":
    main()
