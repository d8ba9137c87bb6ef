"""The inference layer of the notebooks: images in, the demo's preprocessing, predictions with
random or hand-made masks, and clear errors for bad input."""
import jax
import numpy as np
import pytest
from PIL import Image

import multimae_jax as mm
from multimae_jax import inference as inf
from multimae_jax.models import spec

S = 32  # image size: 2 x 2 patches of 16


@pytest.fixture(scope="module")
def predictor():
    model = mm.pretrain_multimae("tiny", image_size=S, depth=1, dim_tokens=32, num_heads=2,
                                 decoder_dim=32, decoder_depth=1, decoder_num_heads=2)
    variables = jax.jit(lambda: model.init(jax.random.key(0), spec.example_inputs(model),
                                           mask_inputs=False))()
    return inf.Predictor(model, variables)


def _inputs(predictor, seed=0):
    rng = np.random.default_rng(seed)
    return inf.prepare_inputs(predictor.modalities, rgb=rng.random((S, S, 3)),
                              depth=rng.random((S, S)), semseg=rng.integers(0, 133, (S, S)))


def test_center_crop_and_bilinear_resize_as_the_demo():
    # 4 x 6 image: the central 4 x 4 square starts at column 1; halving it with bilinear
    # (half-pixel centres, no antialiasing) samples at 0.5 and 2.5: the mean of pixel pairs.
    x = np.arange(4 * 6 * 3).reshape(4, 6, 3).astype(np.uint8) * 3
    out = inf.center_crop_resize(x, 2)
    square = x[:, 1:5].astype(np.float64) / 255
    expected = np.stack([np.stack([square[r:r + 2, c:c + 2].mean(axis=(0, 1))
                                   for c in (0, 2)]) for r in (0, 2)])
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.dtype == np.float32


def test_inputs_are_normalised_standardised_and_downsampled():
    rng = np.random.default_rng(1)
    rgb, depth = rng.random((8, 8, 3)), rng.random((8, 8)) * 5
    labels = np.arange(64).reshape(8, 8)
    out = inf.prepare_inputs(("rgb", "depth", "semseg"), rgb=rgb, depth=depth, semseg=labels)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out["rgb"][0], (rgb - mean) / std, rtol=1e-5)
    kept = np.sort(depth.ravel())[6:57]  # int(0.1 * 64) .. int(0.9 * 64)
    expected = (depth - kept.mean()) / np.sqrt(kept.var(ddof=1) + 1e-6)
    np.testing.assert_allclose(out["depth"][0, ..., 0], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out["semseg"], [[[0, 4], [32, 36]]])  # torch nearest: 4 i
    assert out["semseg"].dtype == np.int32 and out["rgb"].shape == (1, 8, 8, 3)
    with pytest.raises(ValueError, match="no modality.*'normals'"):
        inf.prepare_inputs(("rgb",), normals=rgb)


def test_grayscale_and_rgba_images_are_converted(tmp_path):
    Image.fromarray(np.full((5, 7), 200, np.uint8)).save(tmp_path / "grey.png")
    rgba = np.zeros((5, 7, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 90, 10
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    grey = np.asarray(inf.load_image(tmp_path / "grey.png"))
    assert grey.shape == (5, 7, 3) and (grey == 200).all()
    colour = np.asarray(inf.load_image(tmp_path / "rgba.png"))
    assert colour.shape == (5, 7, 3) and (colour == [90, 0, 0]).all()


def test_bad_images_name_the_file_or_url(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="notes.jpg: not a readable image"):
        inf.load_image(tmp_path / "notes.jpg")
    with pytest.raises(ValueError, match="missing.png: no such image file"):
        inf.load_image(tmp_path / "missing.png")
    url = "http://127.0.0.1:9/photo.jpg"  # the discard port: nothing listens
    with pytest.raises(ValueError, match="127.0.0.1:9/photo.jpg: cannot download"):
        inf.load_image(url)


def test_random_masks_keep_the_budget_and_follow_the_seed(predictor):
    inputs = _inputs(predictor)
    preds, masks = predictor.predict(inputs, num_encoded_tokens=5, seed=3)
    visible = sum((m == 0).sum() for m in masks.values())
    assert visible == 5 and set(masks) == {"rgb", "depth", "semseg"}
    assert preds["rgb"].shape == (1, S, S, 3) and preds["semseg"].shape == (1, S // 4, S // 4, 133)
    again = predictor.predict(inputs, num_encoded_tokens=5, seed=3)[1]
    other = predictor.predict(inputs, num_encoded_tokens=5, seed=4)[1]
    assert all((again[t] == masks[t]).all() for t in masks)
    assert any((other[t] != masks[t]).any() for t in masks)
    assert predictor._apply._cache_size() == 1  # one compilation for one shape and budget


def test_hand_drawn_masks_and_rgb_only_input(predictor):
    inputs = _inputs(predictor)
    grids = {"rgb": [[0, 1], [1, 0]], "depth": [[1, 1], [1, 1]], "semseg": [[1, 1], [0, 1]]}
    masks = inf.masks_from_grid(grids)
    np.testing.assert_array_equal(masks["rgb"], [[0, 1, 1, 0]])
    preds, out_masks = predictor.predict(inputs, masks)
    direct, _ = predictor.model.apply(predictor.variables, inputs, masks)
    for task in preds:
        np.testing.assert_allclose(preds[task], direct[task], rtol=1e-5, atol=1e-5)
    coords = inf.masks_from_coords({"rgb": [(1, 0)]}, predictor.grid, full_tasks=("depth",))
    np.testing.assert_array_equal(coords["rgb"], [[1, 0, 1, 1]])
    np.testing.assert_array_equal(coords["depth"], [[0, 0, 0, 0]])
    rgb_only, rgb_masks = predictor.predict({"rgb": inputs["rgb"]}, {"rgb": masks["rgb"]})
    assert set(rgb_masks) == {"rgb"} and set(rgb_only) == {"rgb", "depth", "semseg", "norm_rgb"}
    with pytest.raises(ValueError, match=r"no mask for input task\(s\) \['depth'\]"):
        predictor.predict(inputs, {"rgb": masks["rgb"], "semseg": masks["semseg"]})
    with pytest.raises(ValueError, match="same number of visible tokens"):
        predictor.predict({"rgb": np.concatenate([inputs["rgb"]] * 2)},
                          {"rgb": [[0, 1, 1, 1], [0, 0, 1, 1]]})


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    model = mm.multivit("tiny", ("rgb",), dim_tokens=32, depth=1, num_heads=2, image_size=S)
    variables = jax.jit(lambda: model.init(jax.random.key(0), spec.example_inputs(model)))()
    mm.save_checkpoint(model, variables, tmp_path / "vit")
    with pytest.raises(ValueError, match=r"vit: is a MultiViT .*without pre-training decoders"):
        inf.Predictor.load(tmp_path / "vit")


@pytest.fixture
def http_root(tmp_path):
    """(folder, base URL) of a local HTTP server serving that folder."""
    import functools
    import http.server
    import threading
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_weights_and_images_come_from_urls_once(http_root, tmp_path):
    root, base = http_root
    (root / "weights.bin").write_bytes(b"\x01" * 3000)
    Image.fromarray(np.full((3, 4, 3), 7, np.uint8)).save(root / "photo.png")
    cache = tmp_path / "cache"
    path = inf.fetch(f"{base}/weights.bin", cache)
    assert path == cache / "weights.bin" and path.read_bytes() == b"\x01" * 3000
    (root / "weights.bin").unlink()  # a second call reads the cache, not the server
    assert inf.fetch(f"{base}/weights.bin", cache) == path
    assert (np.asarray(inf.load_image(f"{base}/photo.png")) == 7).all()
    with pytest.raises(ValueError, match="gone.pth: cannot download"):
        inf.fetch(f"{base}/gone.pth", cache)
    assert sorted(p.name for p in cache.iterdir()) == ["weights.bin"]  # no partial file
    assert inf.fetch(tmp_path / "local.pth") == tmp_path / "local.pth"


def test_an_official_pth_reconstructs_as_the_official_model(official_dir, official_npz):
    """The notebook's path: an official training checkpoint (.pth, read without torch) through
    `Predictor` with given masks equals the official model's outputs (fixture pretrain_tiny)."""
    data = official_npz("pretrain_tiny")
    # weights do not record head counts (the fixture's: 4 and 4; README, Converting weights)
    predictor = inf.Predictor.load(official_dir / "pretrain_tiny.pth", num_heads=4,
                                   decoder_num_heads=4)
    inputs = {"rgb": data["input/rgb"].transpose(0, 2, 3, 1),
              "depth": data["input/depth"].transpose(0, 2, 3, 1),
              "semseg": data["input/semseg"].astype(np.int32)}
    masks = {t: data[f"mask/{t}"] for t in inputs}
    preds, _ = predictor.predict(inputs, masks)
    assert set(preds) == {"rgb", "depth", "semseg", "norm_rgb"}
    for task, pred in preds.items():
        np.testing.assert_allclose(pred, data[f"pred/{task}"].transpose(0, 2, 3, 1), atol=1e-4,
                                   rtol=0, err_msg=task)
