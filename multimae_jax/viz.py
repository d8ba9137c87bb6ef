"""Pictures for training, evaluation and the notebooks (numpy and PIL only: importing this never
imports the training or data stack).

Reconstruction figures as in the MultiMAE paper and the official demo (`MultiMAE_Demo.ipynb`:
`get_masked_image`, `get_pred_with_input`, `plot_predictions`): with one sample, the demo's 3 x 3
grid.

For each shown sample and each predicted modality, one row of three panels:
masked input (masked patches grey) | prediction with the visible patches pasted back from the input
(the demo's `get_pred_with_input`) | target (the input). Panels are S x S; a left column names the
row ("<sample> <task>") and a header names the columns.

Rendering follows each modality's `draw`: 'image' (rgb) de-normalised with its mean/std and
clipped to [0, 1]; 'colormap' (depth) through viridis (perceptually uniform) scaled by the
min/max of the sample's target, so prediction and target share one scale; 'labels' (semseg)
through the modality's label set (COCO-panoptic colours, with a legend of the classes shown under
the figure) or else a generated palette (argmax of the logits), upsampled by the stride level
(nearest); 'patches' (norm_rgb,
per-patch standardised) with a per-patch min-max, its target being the per-patch min-max of the
rgb input (the same picture as that of its standardised patches: standardisation is affine per
patch).
"""
from __future__ import annotations

import colorsys
import io
import os

import numpy as np
from PIL import Image, ImageDraw

from multimae_jax import atomic
from multimae_jax.label_sets import LABEL_SETS
from multimae_jax.modalities import Modality, resolve

GREY = 0.5  # colour of masked patches
PAD = 2  # white gap (pixels) after each panel, right and below
LABEL_WIDTH = 64  # left column with the row labels
HEADER_HEIGHT = 14  # top row with the column titles
COLUMNS = ("masked input", "prediction", "target")

# Viridis at 0, 1/4, 1/2, 3/4, 1; linearly interpolated to a 256-entry look-up table (256, 3).
_VIRIDIS_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98],
                             [253, 231, 37]]) / 255.0
_LUT = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, 5), _VIRIDIS_ANCHORS[:, c])
                 for c in range(3)], axis=-1)


def palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) fixed float colours in [0, 1]: class k gets hue k * golden ratio (mod 1),
    value 1, 0.75 or 0.5 (k mod 3) and saturation 1 or 0.55 (k // 3 mod 2). Never grey (the
    masked colour) nor black (labels outside the palette)."""
    return np.array([colorsys.hsv_to_rgb(k * 0.618033988749895 % 1.0, 1.0 - 0.45 * (k // 3 % 2),
                                         1.0 - 0.25 * (k % 3)) for k in range(num_classes)])


def class_table(mod: Modality, num_classes: int | None = None
                ) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """A labels modality's (colours (C, 3) float in [0, 1], class names or None) for C =
    `num_classes` (default the modality's): its label set when that has exactly C classes,
    else `palette(C)` without names."""
    count = num_classes or mod.num_classes
    table = LABEL_SETS.get(mod.label_set or "", ())
    if len(table) != count:
        return palette(count), None
    return np.array([colour for _, colour in table]) / 255.0, tuple(n for n, _ in table)


def _colormap(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(H, W, 1) values -> (H, W, 3) viridis colours, lo -> dark, hi -> yellow (clipped)."""
    t = np.clip((x[..., 0] - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return _LUT[np.round(t * 255).astype(np.int64)]


def paint_labels(labels: np.ndarray, num_classes: int,
                 colours: np.ndarray | None = None) -> np.ndarray:
    """(H, W) int labels -> (H, W, 3) float colours (`colours` (C, 3), default
    `palette(num_classes)`); labels outside [0, num_classes) (void, ignore) black."""
    colours = palette(num_classes) if colours is None else colours
    valid = (labels >= 0) & (labels < num_classes)
    return np.where(valid[..., None], colours[np.clip(labels, 0, num_classes - 1)], 0.0)


def shared_scale(target: np.ndarray, pred: np.ndarray,
                 valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, C) target and prediction -> two (H, W, 3) float pictures in [0, 1] on one scale,
    the min..max of the target (over its `valid` (H, W[, 1]) bool pixels if given; the others
    are black in the target's picture): one channel through the colour map, more channels
    linearly per channel (the first three)."""
    keep = np.ones(target.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    keep = keep.reshape(target.shape[:2])
    lo, hi = (float(target[keep].min()), float(target[keep].max())) if keep.any() else (0.0, 1.0)
    if target.shape[-1] == 1:
        images = _colormap(target, lo, hi), _colormap(pred, lo, hi)
    else:
        scale = max(hi - lo, 1e-12)
        images = (np.clip((target[..., :3] - lo) / scale, 0, 1),
                  np.clip((pred[..., :3] - lo) / scale, 0, 1))
    return np.where(keep[..., None], images[0], 0.0), images[1]


def _patch_minmax(x: np.ndarray, p: int) -> np.ndarray:
    """(H, W, C) -> (H, W, C) each p x p patch scaled by its own min/max (over all channels)."""
    h, w, c = x.shape
    patches = x.reshape(h // p, p, w // p, p, c)
    lo = patches.min(axis=(1, 3, 4), keepdims=True)
    hi = patches.max(axis=(1, 3, 4), keepdims=True)
    return ((patches - lo) / np.maximum(hi - lo, 1e-12)).reshape(h, w, c)


def _render(mod: Modality, target: np.ndarray, pred: np.ndarray, patch_size: int,
            num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One sample's target and prediction -> two float (S, S, 3) pictures in [0, 1], drawn as
    the modality's `draw` says.

    target: the prepared data of `mod.source` ((S, S, C) float, or (S/s, S/s) int labels);
    pred: the decoder output ((S, S, C), or (S/s, S/s, classes) logits).
    """
    if mod.draw == "labels":
        count = num_classes or pred.shape[-1]
        colours = class_table(mod, count)[0]

        def paint(labels):
            img = paint_labels(labels, count, colours)
            return img.repeat(mod.stride_level, axis=0).repeat(mod.stride_level, axis=1)

        return paint(target), paint(pred.argmax(axis=-1))
    if mod.draw == "patches":
        return _patch_minmax(target, patch_size), _patch_minmax(pred, patch_size)
    if mod.draw == "image":  # undo the device normalisation's mean / std
        mean = np.asarray(mod.mean if mod.mean is not None else 0.0)
        std = np.asarray(mod.std if mod.std is not None else 1.0)
        return np.clip(target * std + mean, 0, 1), np.clip(pred * std + mean, 0, 1)
    return shared_scale(target, pred)  # 'colormap'


def reconstruction_panels(inputs: dict, preds: dict, masks: dict, modalities=None, *,
                          patch_size: int = 16, num_samples: int = 4,
                          num_classes: int | None = None
                          ) -> list[tuple[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """The rows of `reconstruction_grid`: [(label, (masked, prediction, target))], each panel
    uint8 (S, S, 3); sample-major, tasks in the order of `modalities`. Arguments as
    `reconstruction_grid`."""
    shown = {}  # task -> (modality, targets, outputs, masks (B, N) bool, patches per side)
    for task, mod in resolve(list(preds) if modalities is None else modalities).items():
        if task not in preds or mod.source not in inputs:
            continue
        outputs = np.asarray(preds[task], np.float32)
        grid = outputs.shape[1] * mod.stride_level // patch_size
        # A task without a mask is no input: every patch was predicted.
        mask = np.asarray(masks.get(mod.source, np.ones((len(outputs), grid * grid))), bool)
        if mask.shape[1:] != (grid * grid,):
            raise ValueError(f"'{task}': masks['{mod.source}'] has shape {mask.shape}, expected "
                             f"(B, {grid * grid}) for patch size {patch_size}")
        shown[task] = mod, np.asarray(inputs[mod.source]), outputs, mask, grid
    batch = min([len(targets) for _, targets, *_ in shown.values()], default=0)
    rows = []
    for i in range(min(num_samples, batch)):
        for task, (mod, targets, outputs, mask, grid) in shown.items():
            target = targets[i] if targets.dtype.kind in "iu" else targets[i].astype(np.float32)
            target_img, pred_img = _render(mod, target, outputs[i], patch_size, num_classes)
            pixels = mask[i].reshape(grid, grid).repeat(patch_size, 0).repeat(patch_size, 1)
            pixels = pixels[..., None]
            panels = (np.where(pixels, GREY, target_img), np.where(pixels, pred_img, target_img),
                      target_img)
            rows.append((f"{i} {task}", tuple(np.round(p * 255).astype(np.uint8) for p in panels)))
    return rows


def reconstruction_grid(inputs: dict, preds: dict, masks: dict, modalities=None, *,
                        patch_size: int = 16, num_samples: int = 4,
                        num_classes: int | None = None) -> np.ndarray:
    """A figure of masked inputs, reconstructions and targets: uint8 (H_img, W_img, 3) with
    H_img = HEADER_HEIGHT + R * (S + PAD) and W_img = LABEL_WIDTH + 3 * (S + PAD), R rows.

    inputs: model inputs (after `prepare_batch`): 'rgb' float (B, S, S, 3) ImageNet-normalised,
      'depth' float (B, S, S, 1), 'semseg' int (B, S/4, S/4); jax or numpy arrays.
    preds: decoder outputs, NHWC: 'rgb' (B, S, S, 3), 'depth' (B, S, S, 1), 'semseg' logits
      (B, S/4, S/4, C), optionally 'norm_rgb' (B, S, S, 3). One row per predicted task whose target
      is in `inputs`; other tasks are skipped.
    masks: {input task: (B, N)} 1 = masked, N = (S / patch_size)^2 patches in row-major order; a
      task without a mask (not an input) is shown as fully masked.
    modalities: Modality objects (or default names) of the predicted tasks, drawn as their
      `draw` field says, in this order; default: the default entries named by `preds`.
    num_samples: the first samples shown; num_classes: palette size for labels (default: the
      number of logits; labels outside it are black).
    """
    rows = reconstruction_panels(inputs, preds, masks, modalities, patch_size=patch_size,
                                 num_samples=num_samples, num_classes=num_classes)
    if not rows:
        raise ValueError(f"no task to show: preds {sorted(preds)}, inputs {sorted(inputs)}")
    figure = panel_grid(rows)
    for task, mod in resolve(list(preds) if modalities is None else modalities).items():
        if mod.draw != "labels" or task not in preds or mod.source not in inputs:
            continue
        logits = np.asarray(preds[task][:num_samples])
        colours, names = class_table(mod, num_classes or logits.shape[-1])
        if names is not None:  # the classes of the shown targets and predictions
            shown = np.concatenate([np.ravel(inputs[mod.source][:num_samples]),
                                    logits.argmax(-1).ravel()])
            figure = np.concatenate([figure, legend(shown, colours, names, figure.shape[1])])
    return figure


LEGEND_ENTRY = (128, 14)  # width, height (pixels) of one legend entry: swatch and class name


def legend(labels, colours: np.ndarray, names, width: int) -> np.ndarray:
    """A legend of the classes among int `labels` (any shape; ids outside `names` are left
    out), sorted by id: a colour swatch (`colours` (C, 3) float) and the name per entry, in as
    many columns of LEGEND_ENTRY[0] pixels as fit in `width`. -> uint8 (H, width, 3)."""
    ids = [int(i) for i in np.unique(np.asarray(labels)) if 0 <= i < len(names)]
    columns = max(1, width // LEGEND_ENTRY[0])
    height = LEGEND_ENTRY[1] * -(-len(ids) // columns) + PAD
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for k, i in enumerate(ids):
        x, y = (k % columns) * LEGEND_ENTRY[0] + 2, (k // columns) * LEGEND_ENTRY[1] + PAD
        fill = tuple(int(round(c * 255)) for c in colours[i])
        draw.rectangle((x, y + 1, x + 10, y + 11), fill=fill, outline="black")
        draw.text((x + 14, y), names[i][:18], fill="black")
    return np.asarray(canvas)


def modality_figure(data: dict, modalities, *, sample: int = 0,
                    titles: dict | None = None) -> np.ndarray:
    """One sample's data side by side, one column per modality (the demo's "RGB / Depth /
    Semantic" figure, e.g. of an image and its pseudo-labels). data: {task: (B, ...)} as
    model inputs ('labels' int (B, S/s, S/s)); modalities: those to show, in order; titles:
    column titles (default the task names). A legend follows for labels with a label set.
    -> uint8 (H, W, 3)."""
    mods = resolve(modalities)
    panels, extra = [], []
    for task, mod in mods.items():
        x = np.asarray(data[task][sample])
        if mod.draw == "labels":
            colours, names = class_table(mod)
            img = paint_labels(x, mod.num_classes, colours)
            img = img.repeat(mod.stride_level, 0).repeat(mod.stride_level, 1)
            if names is not None:
                extra.append((x, colours, names))
        else:
            img = _render(mod, x.astype(np.float32), x.astype(np.float32), 16, None)[0]
        panels.append(np.round(img * 255).astype(np.uint8))
    columns = tuple((titles or {}).get(t, t) for t in mods)
    figure = panel_grid([("", tuple(panels))], columns)
    for labels, colours, names in extra:
        figure = np.concatenate([figure, legend(labels, colours, names, figure.shape[1])])
    return figure


def panel_grid(rows, columns=COLUMNS) -> np.ndarray:
    """[(label, panels)] with uint8 (S, S, 3) panels, one per column title -> the figure, uint8
    (HEADER_HEIGHT + R * (S + PAD), LABEL_WIDTH + len(columns) * (S + PAD), 3)."""
    size = rows[0][1][0].shape[0]
    cell = size + PAD
    canvas = Image.new("RGB", (LABEL_WIDTH + len(columns) * cell,
                               HEADER_HEIGHT + len(rows) * cell), "white")
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(columns):
        draw.text((LABEL_WIDTH + col * cell + 1, 1), title, fill="black")
    for r, (label, panels) in enumerate(rows):
        y = HEADER_HEIGHT + r * cell
        draw.text((2, y + size // 2 - 6), label, fill="black")
        for col, panel in enumerate(panels):
            canvas.paste(Image.fromarray(panel), (LABEL_WIDTH + col * cell, y))
    return np.asarray(canvas)


def save_png(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write uint8 (H, W, 3) or (H, W) `image` to `path` as PNG atomically
    (`atomic.write_bytes`), creating the parent folders."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
    atomic.write_bytes(path, buffer.getvalue())
