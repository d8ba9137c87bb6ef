"""The embedded default dataset: procedural scenes with aligned RGB, depth and semantic labels.

Each sample is a background (a far wall and a ground plane) plus 2-6 textured, shaded objects at
different depths. Everything is rendered into one z-buffer, so depth and segmentation agree
exactly; the RGB image adds random colours, textures, Lambertian shading and sensor noise so that
depth and labels have to be inferred from shape and shading rather than read off the colour.

    ds = SyntheticScenes(num_samples=1000, image_size=224)
    sample = ds[3]  # {'rgb': uint8 (224, 224, 3), 'depth': uint16 (224, 224), 'semseg': uint8 ...}
    ds.write_folder("data/synthetic")  # root/<modality>/<folder>/<name><ext> (official layout)

CLI: python -m multimae_jax.data.synthetic OUT_DIR --num_samples N --image_size S
"""
from __future__ import annotations

import argparse
import colorsys
import dataclasses
import math
import operator
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from multimae_jax import atomic, modalities
from multimae_jax.data.codecs import encode

#: Depth file units per metre: 1/4000 m steps up to 16.38 m (the scenes span about 0.3-14 m).
DEPTH_UNITS_PER_METRE = 4000.0

#: Object shape families; object class k (1-based) uses family (k - 1) % 7.
SHAPE_FAMILIES = ("disc", "rectangle", "triangle", "ring", "ellipse", "cross", "flower")
# Families whose surface bulges towards the camera (sphere/torus-like); the others: tilted planes.
_BULGING = {"disc", "ring", "ellipse"}


@dataclasses.dataclass(frozen=True)
class SyntheticScenes:
    """A deterministic map index -> scene; sample `index` depends only on (seed, index).

    num_samples: length of the dataset (indices 0 .. num_samples - 1).
    image_size: side S of the square images (>= 16).
    num_classes: semseg classes including 0 = background; class k >= 1 is a fixed shape family
      (SHAPE_FAMILIES[(k - 1) % 7]) so segmentation is learnable from shape. Beyond 7 object
      classes a family repeats with a class-specific elongation.
    seed: dataset seed.
    single_class: every object of a scene has one class, drawn uniformly per scene (a scene's
      class label for classification); False: each object's class is drawn on its own.
    object_scale: factor on the objects' radii (0.08-0.22 of the image side at 1).
    """
    MODALITIES = ("rgb", "depth", "semseg")  # what each scene holds (default registry entries)

    num_samples: int = 10_000
    image_size: int = 224
    num_classes: int = 8
    seed: int = 0
    single_class: bool = False
    object_scale: float = 1.0

    def __post_init__(self):
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if not 2 <= self.num_classes <= 256:
            raise ValueError(f"num_classes must be in [2, 256] (uint8 labels), "
                             f"got {self.num_classes}")
        if self.num_samples < 0 or self.seed < 0:
            raise ValueError("num_samples and seed must be non-negative")

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index) -> dict[str, np.ndarray]:
        """Native on-disk arrays: 'rgb' uint8 (S, S, 3), 'depth' uint16 (S, S) in 1/4000 m
        (larger = farther, never 0), 'semseg' uint8 (S, S) class ids."""
        return self._render(index)[0]

    def render(self, index) -> dict[str, np.ndarray]:
        """__getitem__ plus the renderer's z-buffer layers (for tests and debugging):
        'layer_depth' float32 (L, S, S) metres, inf where layer l does not cover the pixel
        (layer 0 = background, 1.. = objects in drawing order); 'layer_class' uint8 (L,);
        'instance' uint8 (S, S), the layer seen at each pixel."""
        sample, scene = self._render(index)
        background, objects, classes, instance = scene
        layers = np.full((len(classes),) + background.shape, np.inf, np.float32)
        layers[0] = background
        for layer, (rows, cols, z) in zip(layers[1:], objects):
            layer[rows, cols] = z
        return {**sample, "layer_depth": layers, "layer_class": classes, "instance": instance}

    def _render(self, index):
        index = operator.index(index)  # TypeError for floats, strings, ...
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range [0, {self.num_samples})")
        return _render(np.random.default_rng((self.seed, index)), self.image_size, self.num_classes,
                       self.single_class, self.object_scale)

    def write_folder(self, root, num_samples: int | None = None, **options) -> list[str]:
        """`write_samples` of this dataset: samples 0 .. num_samples - 1 (default: all)."""
        return write_samples(self, root, num_samples, **options)


def write_samples(dataset, root, num_samples: int | None = None, *,
                  folders: int | Sequence[str] = 4, rgb_format: str = "jpeg",
                  jpeg_quality: int = 95, jpeg_subsampling: int = 0,
                  progress: bool = False) -> list[str]:
    """Write samples 0 .. num_samples - 1 (default: all) of `dataset` (index -> {modality:
    array}, its modalities' names in `dataset.MODALITIES`) in the official MultiMAE layout
    root/<modality>/<folder>/<name><ext>: rgb JPEG (4:4:4 unless jpeg_subsampling says
    otherwise, see `codecs.encode`; lossless PNG with rgb_format='png'), depth 16-bit PNG,
    semseg 8-bit PNG. Sample i goes to folder i % len(folders) ('n0000', ... when folders is a
    count) with name 's%06d' % i. Returns the relative sample paths, e.g. 'n0000/s000123'."""
    if rgb_format not in ("jpeg", "png"):
        raise ValueError(f"rgb_format must be 'jpeg' or 'png', got {rgb_format!r}")
    num_samples = len(dataset) if num_samples is None else num_samples
    if isinstance(folders, int):
        folders = [f"n{i:04d}" for i in range(folders)]
    mods = modalities.resolve(dataset.MODALITIES)
    exts = {name: ".png" if m.storage == "rgb8" and rgb_format == "png" else m.write_ext
            for name, m in mods.items()}
    root = Path(root)
    for name in exts:
        for folder in folders:
            (root / name / folder).mkdir(parents=True, exist_ok=True)

    indices = range(num_samples)
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc=f"writing {root}", unit="sample")
    paths = []
    for i in indices:
        sample, rel = dataset[i], f"{folders[i % len(folders)]}/s{i:06d}"
        for name, ext in exts.items():
            atomic.write_bytes(root / name / (rel + ext), encode(
                mods[name], sample[name], ext, jpeg_quality, jpeg_subsampling))
        paths.append(rel)
    return paths


def range_mask(sample: dict, max_depth_m: float = 10.0) -> np.ndarray:
    """A depth sensor's validity mask of a rendered sample (for dense fine-tuning): uint8
    (S, S, 1), 255 where its depth is at most max_depth_m, else 0 (at 10 m, part of the 7-12 m
    far wall is out of range)."""
    valid = sample["depth"] <= max_depth_m * DEPTH_UNITS_PER_METRE
    return np.where(valid, 255, 0).astype(np.uint8)[..., None]


# ---------------------------------------------------------------------------------------------
# Rendering. Camera: pinhole, focal length S pixels (53 degree field of view), principal point at
# the image centre; depth is the z distance in metres. For speed, colours are kept channel-first
# (3, S, S) until the end (numpy is several times slower broadcasting over a trailing axis of 3),
# and masked writes use np.copyto(..., where=mask) rather than boolean indexing.


def _render(rng: np.random.Generator, size: int, num_classes: int, single_class: bool = False,
            object_scale: float = 1.0):
    """Returns (sample dict as __getitem__, (background depth (S, S), [(rows, cols, depth) per
    object], classes (L,) uint8, instance (S, S) uint8))."""
    f = float(size)
    coords = np.arange(size, dtype=np.float32) + 0.5 - size / 2  # pixel centres, centred
    xs, ys = coords[None, :], coords[:, None]

    background, albedo = _background(rng, xs, ys, f)
    zbuf, instance = background.copy(), np.zeros((size, size), np.uint8)
    objects, classes = [], [0]
    scene_class = int(rng.integers(1, num_classes)) if single_class else None
    for i in range(1, rng.integers(2, 7) + 1):
        k = scene_class or int(rng.integers(1, num_classes))
        objects.append(_draw_object(rng, k, background, zbuf, albedo, instance, i, xs, ys, f,
                                    object_scale))
        classes.append(k)
    classes = np.array(classes, np.uint8)

    rgb = albedo * _shading(rng, zbuf, instance, f)
    # Sensor noise, uniform with std 1-4 (of 255): from raw bytes, ~8x cheaper than normal draws.
    noise = np.frombuffer(rng.bytes(rgb.size), np.uint8).reshape(rgb.shape).astype(np.float32)
    rgb += (noise - 127.5) * np.float32(rng.uniform(1, 4) / 73.6)
    # To (S, S, 3) channel by channel: 7x faster than a contiguous copy of the transpose.
    rgb = np.stack(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), axis=-1)
    depth = np.clip(np.rint(zbuf * DEPTH_UNITS_PER_METRE), 1, 65535).astype(np.uint16)
    sample = {"rgb": rgb, "depth": depth, "semseg": classes[instance]}
    return sample, (background, objects, classes, instance)


def _background(rng, xs, ys, f):
    """A wall (slightly turned, 7-12 m away) and a ground plane seen from 1-1.8 m above it.
    Returns depth (S, S) and albedo (3, S, S) in 0-255, both float32."""
    size = len(ys)
    wall = rng.uniform(7, 12) * (1 + rng.uniform(-0.3, 0.3) * xs / f)
    # A ground point at row y (from the centre) below the horizon y_h is at z = h * f / (y - y_h).
    below_horizon = ys - rng.uniform(-0.25, 0.05) * size
    with np.errstate(divide="ignore"):
        ground = np.where(below_horizon > 0, rng.uniform(1.0, 1.8) * f / below_horizon, np.inf)
    depth = np.minimum(wall, ground).astype(np.float32)

    shape = depth.shape
    albedo = _mix(rng, _pattern(rng, np.broadcast_to(xs * (4 / f), shape),
                                np.broadcast_to(ys * (4 / f), shape)), saturation=(0.1, 0.5))
    # Floor tiles live in world coordinates (x, z), so they shrink with distance like real ones.
    tile = rng.uniform(0.4, 1.2)
    checker = _parity(np.floor(xs * depth / (f * tile)) + np.floor(depth / tile))
    np.copyto(albedo, _mix(rng, checker, saturation=(0.0, 0.4)), where=ground < wall)
    return depth, albedo


def _draw_object(rng, k, background, zbuf, albedo, instance, i, xs, ys, f, scale=1.0):
    """Z-buffer object i of class k into zbuf, albedo and instance (in place).
    Returns its bounding box and depth there: (rows, cols, float32 (h, w) with inf outside)."""
    size = zbuf.shape[0]
    family = SHAPE_FAMILIES[(k - 1) % len(SHAPE_FAMILIES)]
    elongation = 1 + 0.5 * ((k - 1) // len(SHAPE_FAMILIES))
    radius = rng.uniform(0.08, 0.22) * scale * size
    cx, cy = rng.uniform(-0.45, 0.45, 2) * size
    # Bounding box: every family fits in 1.2 radii of its centre.
    half = 1.2 * radius
    rows = slice(max(0, int(cy + size / 2 - half)), min(size, int(cy + size / 2 + half) + 1))
    cols = slice(max(0, int(cx + size / 2 - half)), min(size, int(cx + size / 2 + half) + 1))
    dx, dy = (xs[:, cols] - cx) / radius, (ys[rows] - cy) / radius
    angle = rng.uniform(0, 2 * np.pi)
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = (dy * math.cos(angle) - dx * math.sin(angle)) * elongation
    inside, bulge = _shape(family, u, v)

    # Centre in front of the background there (not of other objects, which would let depths
    # shrink geometrically); metric radius from the perspective projection.
    bg = background[min(int(cy + size / 2), size - 1), min(int(cx + size / 2), size - 1)]
    z0 = rng.uniform(0.35, 0.9) * bg
    metric_radius = radius * z0 / f
    if family in _BULGING:
        z = z0 - metric_radius * rng.uniform(0.5, 1.0) * bulge
    else:
        z = z0 + metric_radius * (rng.uniform(-0.8, 0.8) * dx + rng.uniform(-0.8, 0.8) * dy)
    z = np.where(inside, z, np.inf).astype(np.float32)

    visible = z < zbuf[rows, cols]
    np.copyto(zbuf[rows, cols], z, where=visible)
    np.copyto(instance[rows, cols], i, where=visible)
    np.copyto(albedo[:, rows, cols], _mix(rng, _pattern(rng, u, v), saturation=(0.4, 1.0)),
              where=visible)
    return rows, cols, z


def _shape(family, u, v):
    """Inside mask and bulge profile (0 at the rim, 1 at the top) of a family in object units."""
    r2 = u * u + v * v
    if family == "disc":
        return r2 <= 1, np.sqrt(np.maximum(1 - r2, 0))
    if family == "ellipse":
        e2 = u * u + (v / 0.5) ** 2
        return e2 <= 1, np.sqrt(np.maximum(1 - e2, 0))
    if family == "ring":  # torus: tube of radius 0.225 around the circle of radius 0.775
        t = (np.sqrt(r2) - 0.775) / 0.225
        return np.abs(t) <= 1, np.sqrt(np.maximum(1 - t * t, 0))
    if family == "rectangle":
        inside = (np.abs(u) <= 1) & (np.abs(v) <= 0.6)
    elif family == "triangle":  # equilateral, inscribed in the unit circle
        inside = (v <= 0.5) & (v * 0.5 - u * 0.866 >= -0.5) & (v * 0.5 + u * 0.866 >= -0.5)
    elif family == "cross":
        inside = ((np.abs(u) <= 1) & (np.abs(v) <= 0.3)) | ((np.abs(u) <= 0.3) & (np.abs(v) <= 1))
    else:  # flower: five petals
        inside = np.sqrt(r2) <= 0.6 + 0.4 * np.cos(5 * np.arctan2(v, u))
    return inside, None


def _pattern(rng, u, v):
    """A texture in [0, 1] over coordinates u, v (float32, same shape): stripes, checkers or
    smooth value noise, with random frequency, orientation and phase."""
    kind = rng.integers(3)
    freq, angle = rng.uniform(1.0, 4.0), rng.uniform(0, np.pi)
    cos, sin = freq * math.cos(angle), freq * math.sin(angle)
    a, b = u * cos + v * sin, v * cos - u * sin
    if kind == 0:
        return 0.5 + 0.5 * np.sin(a * np.float32(2 * np.pi) + rng.uniform(0, 2 * np.pi))
    if kind == 1:
        return _parity(np.floor(a + rng.uniform()) + np.floor(b + rng.uniform()))
    # Value noise: a random 8x8 grid, tiled, interpolated bilinearly with smoothstep weights.
    grid = rng.random(64, dtype=np.float32)
    a, b = 2 * a + rng.uniform(0, 8), 2 * b + rng.uniform(0, 8)
    a0, b0 = np.floor(a), np.floor(b)
    wa, wb = a - a0, b - b0
    wa, wb = wa * wa * (3 - 2 * wa), wb * wb * (3 - 2 * wb)
    a0, b0 = a0.astype(np.int32) & 7, (b0.astype(np.int32) & 7) * 8
    a1, b1 = (a0 + 1) & 7, (b0 + 8) & 63
    top = grid.take(b0 + a0) * (1 - wa) + grid.take(b0 + a1) * wa
    bottom = grid.take(b1 + a0) * (1 - wa) + grid.take(b1 + a1) * wa
    return top * (1 - wb) + bottom * wb


def _parity(x):
    """x % 2 for whole-number floats, as float32 (10x faster than the float modulo)."""
    return (x.astype(np.int32) & 1).astype(np.float32)


def _mix(rng, t, saturation):
    """Blend two random colours by t in [0, 1] (any shape) -> (3,) + t.shape float32 in 0-255.
    The second colour is a nearby hue at 30-70% of the brightness, so texture always shows."""
    hue, value = rng.uniform(), rng.uniform(0.5, 1.0)
    c1 = colorsys.hsv_to_rgb(hue, rng.uniform(*saturation), value)
    c2 = colorsys.hsv_to_rgb((hue + rng.uniform(-0.15, 0.15)) % 1, rng.uniform(*saturation),
                             value * rng.uniform(0.3, 0.7))
    c1, c2 = (255 * np.array(c, np.float32).reshape((3,) + (1,) * t.ndim) for c in (c1, c2))
    return c1 + t * (c2 - c1)


def _shading(rng, depth, instance, f):
    """Lambertian shading (S, S) in [0, 1.2] from a random light and normals of the depth map.
    Slopes are taken only between pixels of the same layer, so occlusion edges are not shaded
    as steep walls."""
    def slope(axis):
        d = np.where(np.diff(instance, axis=axis) == 0, np.diff(depth, axis=axis), 0)
        after, before = [(0, 0)] * 2, [(0, 0)] * 2
        after[axis], before[axis] = (0, 1), (1, 0)
        central = 0.5 * (np.pad(d, after) + np.pad(d, before))
        # Depth change per metre sideways (a pixel at depth z spans z / f metres), capped.
        return np.clip(central * f / depth, -4, 4)

    gx, gy = slope(1), slope(0)
    light = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.5, 1.5)], np.float32)
    lx, ly, lz = light / np.linalg.norm(light)
    # Normal (-gx, -gy, 1) / |...| (towards the camera, which looks along +z).
    lambert = (gx * -lx - gy * ly + lz) / np.sqrt(gx * gx + gy * gy + 1)
    ambient = rng.uniform(0.2, 0.45)
    return ambient + (1.2 - ambient) * np.maximum(lambert, 0)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the synthetic RGB/depth/semseg dataset "
                                     "in the MultiMAE folder layout.")
    parser.add_argument("out_dir")
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--num_classes", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folders", type=int, default=4, help="number of class folders")
    parser.add_argument("--rgb_format", choices=("jpeg", "png"), default="jpeg")
    args = parser.parse_args(argv)
    dataset = SyntheticScenes(args.num_samples, args.image_size, args.num_classes, args.seed)
    paths = dataset.write_folder(args.out_dir, folders=args.folders, rgb_format=args.rgb_format,
                                 progress=True)
    print(f"wrote {len(paths)} samples ({args.image_size}x{args.image_size}; rgb, depth, semseg) "
          f"to {args.out_dir}/<modality>/<folder>/<name>.<ext>")


if __name__ == "__main__":
    main()
