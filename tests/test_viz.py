"""Reconstruction figures: layout, masking/pasting of patches, rendering, PNG writing."""
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from multimae_jax.modalities import IMAGENET_MEAN, IMAGENET_STD, MODALITIES
from multimae_jax import viz as vis

S, B, C = 32, 3, 5  # image size, batch, semseg classes; patch 16 -> 2 x 2 = 4 patches
TASKS = ("rgb", "depth", "semseg", "norm_rgb")


def _batch(seed=0):
    """Model inputs, decoder outputs and masks (1 = masked) for a batch of B samples."""
    rng = np.random.default_rng(seed)
    inputs = {"rgb": rng.normal(size=(B, S, S, 3)).astype(np.float32),
              "depth": rng.normal(size=(B, S, S, 1)).astype(np.float32),
              "semseg": rng.integers(0, C, (B, S // 4, S // 4)).astype(np.int32)}
    preds = {"rgb": rng.normal(size=(B, S, S, 3)).astype(np.float32),
             "depth": rng.normal(size=(B, S, S, 1)).astype(np.float32),
             "semseg": rng.normal(size=(B, S // 4, S // 4, C)).astype(np.float32),
             "norm_rgb": rng.normal(size=(B, S, S, 3)).astype(np.float32)}
    masks = {t: np.tile(np.array([1, 0, 0, 1], np.int32), (B, 1))
             for t in ("rgb", "depth", "semseg")}
    return inputs, preds, masks


def _patches(mask_row):
    """(4,) patch mask -> (S, S) bool pixel mask."""
    return np.asarray(mask_row, bool).reshape(2, 2).repeat(16, 0).repeat(16, 1)


def test_grid_shape_dtype_and_layout():
    inputs, preds, masks = _batch()
    grid = vis.reconstruction_grid(inputs, preds, masks, num_samples=2)
    rows = vis.reconstruction_panels(inputs, preds, masks, num_samples=2)
    assert [label for label, _ in rows] == [f"{i} {t}" for i in range(2) for t in TASKS]
    cell = S + vis.PAD
    assert grid.dtype == np.uint8
    assert grid.shape == (vis.HEADER_HEIGHT + len(rows) * cell, vis.LABEL_WIDTH + 3 * cell, 3)
    for r, (_, panels) in enumerate(rows):
        for c, panel in enumerate(panels):
            y, x = vis.HEADER_HEIGHT + r * cell, vis.LABEL_WIDTH + c * cell
            np.testing.assert_array_equal(grid[y:y + S, x:x + S], panel)


@pytest.mark.parametrize("task", TASKS)
def test_masked_and_prediction_panels(task):
    inputs, preds, masks = _batch()
    rows = dict(vis.reconstruction_panels(inputs, preds, masks, num_samples=1))
    masked, pred, target = rows[f"0 {task}"]
    all_masked = {t: np.ones_like(m) for t, m in masks.items()}
    pred_only = dict(vis.reconstruction_panels(inputs, preds, all_masked, num_samples=1))
    pred_rendering = pred_only[f"0 {task}"][1]
    hidden = _patches(masks["rgb"][0])
    assert (masked[hidden] == 128).all()
    np.testing.assert_array_equal(masked[~hidden], target[~hidden])
    np.testing.assert_array_equal(pred[~hidden], target[~hidden])
    np.testing.assert_array_equal(pred[hidden], pred_rendering[hidden])
    assert not np.array_equal(pred[hidden], target[hidden])


def test_rgb_is_denormalised_and_depth_shares_the_target_scale():
    inputs, preds, masks = _batch()
    preds["depth"] = inputs["depth"] * 10  # beyond the target's range: clipped to its colours
    all_masked = {t: np.ones_like(m) for t, m in masks.items()}
    rows = dict(vis.reconstruction_panels(inputs, preds, all_masked, num_samples=1))
    rgb = np.clip(inputs["rgb"][0] * IMAGENET_STD + IMAGENET_MEAN, 0, 1)
    np.testing.assert_array_equal(rows["0 rgb"][2], np.round(rgb * 255).astype(np.uint8))
    _, depth_pred, depth_target = rows["0 depth"]
    lo, hi = inputs["depth"][0].argmin(), inputs["depth"][0].argmax()
    flat_pred, flat_target = depth_pred.reshape(-1, 3), depth_target.reshape(-1, 3)
    np.testing.assert_array_equal(flat_pred[[lo, hi]], flat_target[[lo, hi]])
    # on the target's scale every predicted value beyond its range takes the end colour (on
    # the prediction's own scale only the prediction's extremes would)
    x = inputs["depth"][0].reshape(-1)
    above, below = 10 * x >= x.max(), 10 * x <= x.min()
    assert above.sum() > 1 and below.sum() > 1
    np.testing.assert_array_equal(flat_pred[above], np.broadcast_to(flat_target[hi], (above.sum(), 3)))
    np.testing.assert_array_equal(flat_pred[below], np.broadcast_to(flat_target[lo], (below.sum(), 3)))


def test_semseg_palette_is_fixed():
    np.testing.assert_array_equal(vis.palette(133)[:C], vis.palette(C))
    colours = np.round(vis.palette(133) * 255).astype(np.uint8)
    assert len(np.unique(colours, axis=0)) == 133
    assert (colours.max(axis=1) > colours.min(axis=1)).all()  # no grey: that means masked
    inputs, preds, masks = _batch()
    target = dict(vis.reconstruction_panels(inputs, preds, masks, num_samples=1))["0 semseg"][2]
    colours = np.round(vis.palette(C) * 255).astype(np.uint8)
    expected = colours[inputs["semseg"][0]].repeat(4, 0).repeat(4, 1)
    np.testing.assert_array_equal(target, expected)


def test_subsets_missing_masks_and_jax_arrays():
    inputs, preds, masks = _batch()
    del preds["depth"], preds["norm_rgb"], masks["semseg"]  # semseg: an output only
    jax_args = [{k: jnp.asarray(v) for k, v in d.items()} for d in (inputs, preds, masks)]
    rows = vis.reconstruction_panels(*jax_args, num_samples=5)
    assert [label for label, _ in rows] == [f"{i} {t}" for i in range(B) for t in ("rgb", "semseg")]
    assert (dict(rows)["1 semseg"][0] == 128).all()
    np.testing.assert_array_equal(
        vis.reconstruction_grid(*jax_args), vis.reconstruction_grid(inputs, preds, masks))


def test_save_png_round_trip(tmp_path):
    image = vis.reconstruction_grid(*_batch(), num_samples=1)
    path = tmp_path / "a" / "b" / "grid.png"
    vis.save_png(image, path)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
    assert sorted(p.name for p in path.parent.iterdir()) == ["grid.png"]


def test_semseg_uses_the_coco_panoptic_colours_with_a_legend_of_the_classes_shown():
    semseg = MODALITIES["semseg"]
    colours, names = vis.class_table(semseg)
    assert (len(names), names[0], names[80], names[132]) == (133, "person", "banner",
                                                            "rug-merged")
    np.testing.assert_array_equal(np.round(colours[[0, 132]] * 255), [[220, 20, 60],
                                                                      [250, 141, 255]])
    other, no_names = vis.class_table(semseg, 40)  # a run with other classes: no label set
    assert no_names is None
    np.testing.assert_array_equal(other, vis.palette(40))
    strip = vis.legend(np.array([[132, 0], [0, 999]]), colours, names, width=300)
    entry_w, entry_h = vis.LEGEND_ENTRY
    assert strip.shape == (entry_h + vis.PAD, 300, 3)  # two entries in one row of two columns
    np.testing.assert_array_equal(strip[vis.PAD + 6, 7], [220, 20, 60])  # person first
    np.testing.assert_array_equal(strip[vis.PAD + 6, entry_w + 7], [250, 141, 255])


def test_the_demo_grid_and_the_modality_figure_carry_the_legend():
    inputs = {"rgb": np.zeros((1, S, S, 3), np.float32),
              "depth": np.zeros((1, S, S, 1), np.float32),
              "semseg": np.zeros((1, S // 4, S // 4), np.int32)}
    preds = {"rgb": inputs["rgb"], "depth": inputs["depth"],
             "semseg": np.zeros((1, S // 4, S // 4, 133), np.float32)}
    preds["semseg"][..., 5] = 1  # predicts class 5 (airplane), the target is 0 (person)
    masks = {t: np.ones((1, 4), np.int32) for t in inputs}
    grid = vis.reconstruction_grid(inputs, preds, masks, num_samples=1)
    rows = vis.panel_grid(vis.reconstruction_panels(inputs, preds, masks, num_samples=1))
    # person and airplane, one column of 128 pixels fits in the width
    assert grid.shape == (rows.shape[0] + 2 * vis.LEGEND_ENTRY[1] + vis.PAD,) + rows.shape[1:]
    np.testing.assert_array_equal(grid[:rows.shape[0]], rows)
    figure = vis.modality_figure(inputs, ("rgb", "depth", "semseg"))
    assert figure.shape[1] == vis.LABEL_WIDTH + 3 * (S + vis.PAD)
    semseg_panel = figure[vis.HEADER_HEIGHT:vis.HEADER_HEIGHT + S,
                          vis.LABEL_WIDTH + 2 * (S + vis.PAD):][:, :S]
    assert (semseg_panel == [220, 20, 60]).all()  # class 0 in its COCO colour
