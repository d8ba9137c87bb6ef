"""The procedural RGB / depth / semseg dataset: determinism, z-buffer, texture, files."""
import numpy as np
import pytest
from PIL import Image

from multimae_jax.data.synthetic import DEPTH_UNITS_PER_METRE, SyntheticScenes, main


@pytest.fixture(scope="module")
def scenes():
    """50 small scenes with their z-buffer layers (about 0.1 s)."""
    ds = SyntheticScenes(num_samples=50, image_size=32, seed=1)
    return [ds.render(i) for i in range(len(ds))]


def test_shapes_dtypes_and_determinism():
    ds = SyntheticScenes(num_samples=10, image_size=48, seed=3)
    sample = ds[2]
    assert sample.keys() == {"rgb", "depth", "semseg"}
    assert sample["rgb"].shape == (48, 48, 3) and sample["rgb"].dtype == np.uint8
    assert sample["depth"].shape == (48, 48) and sample["depth"].dtype == np.uint16
    assert sample["semseg"].shape == (48, 48) and sample["semseg"].dtype == np.uint8
    assert sample["depth"].min() >= 1 and sample["semseg"].max() < ds.num_classes

    # Depends on (seed, index) only: not on call order, instance or index type.
    again = SyntheticScenes(num_samples=10, image_size=48, seed=3)[np.int64(2)]
    for key in sample:
        np.testing.assert_array_equal(sample[key], again[key])
    assert not np.array_equal(ds[3]["rgb"], sample["rgb"])
    assert not np.array_equal(SyntheticScenes(10, 48, seed=4)[2]["rgb"], sample["rgb"])


def test_index_errors_and_iteration():
    ds = SyntheticScenes(num_samples=3, image_size=16)
    for bad in (3, -1):
        with pytest.raises(IndexError):
            ds[bad]
    for bad in (1.0, "1"):
        with pytest.raises(TypeError):
            ds[bad]
    assert len(list(ds)) == len(ds) == 3  # the legacy iteration protocol stops at IndexError
    with pytest.raises(ValueError):
        SyntheticScenes(image_size=8)


def test_depth_and_labels_come_from_one_zbuffer(scenes):
    for r in scenes:
        layers = r["layer_depth"]
        nearest = layers.min(0)
        # Each pixel shows its nearest layer: depth, label and instance all agree with it.
        np.testing.assert_array_equal(r["instance"], layers.argmin(0))
        np.testing.assert_array_equal(r["semseg"], r["layer_class"][r["instance"]])
        expected = np.clip(np.rint(nearest * DEPTH_UNITS_PER_METRE), 1, 65535)
        np.testing.assert_array_equal(r["depth"], expected)
        # An object pixel is strictly in front of the background behind it.
        objects = r["instance"] > 0
        assert np.all(layers[0][objects] > nearest[objects])
        assert r["layer_class"][0] == 0 and np.all(r["layer_class"][1:] > 0)


def test_classes_depth_range_and_surfaces(scenes):
    # Every object class occurs; depth spans most of the 16-bit range.
    seen = set().union(*(np.unique(r["semseg"]).tolist() for r in scenes))
    assert seen == set(range(8))
    depths = np.stack([r["depth"] for r in scenes])
    assert depths.min() < 8000 and depths.max() > 40000
    # Objects are curved or tilted surfaces, not constant-depth cut-outs.
    for r in scenes:
        for i in np.unique(r["instance"])[1:]:
            pixels = r["depth"][r["instance"] == i]
            assert pixels.size < 20 or len(np.unique(pixels)) > 1


def test_rgb_is_not_a_function_of_the_labels(scenes):
    colours_by_class = {}
    for r in scenes:
        for i, k in enumerate(r["layer_class"]):
            pixels = r["rgb"][r["instance"] == i].astype(np.float32)
            if i and len(pixels) >= 30:
                # Texture and shading: one object is far from a flat colour.
                assert pixels.std(0).mean() > 5
                colours_by_class.setdefault(int(k), []).append(pixels.mean(0))
    # A class has no colour of its own: its mean colour varies from image to image.
    for k, colours in colours_by_class.items():
        assert np.std(colours, axis=0).mean() > 20, k


def test_write_folder_round_trip(tmp_path):
    ds = SyntheticScenes(num_samples=5, image_size=40, seed=2)
    paths = ds.write_folder(tmp_path / "png", folders=2, rgb_format="png")
    assert paths == ["n0000/s000000", "n0001/s000001", "n0000/s000002", "n0001/s000003",
                     "n0000/s000004"]
    for i, rel in enumerate(paths):
        sample = ds[i]
        for name in ("rgb", "depth", "semseg"):
            with Image.open(tmp_path / "png" / name / f"{rel}.png") as image:
                assert image.mode == {"rgb": "RGB", "depth": "I;16", "semseg": "L"}[name]
                read = np.asarray(image)
            assert read.dtype == sample[name].dtype
            np.testing.assert_array_equal(read, sample[name])

    # Default: JPEG rgb (quality 95, 4:4:4), same lossless depth and labels; no temp files left.
    assert ds.write_folder(tmp_path / "jpg", num_samples=2) == ["n0000/s000000", "n0001/s000001"]
    with Image.open(tmp_path / "jpg" / "rgb" / "n0001" / "s000001.jpg") as image:
        error = np.abs(np.asarray(image).astype(np.int16) - ds[1]["rgb"])
    assert error.mean() < 4
    with Image.open(tmp_path / "jpg" / "depth" / "n0001" / "s000001.png") as image:
        np.testing.assert_array_equal(np.asarray(image), ds[1]["depth"])
    assert not list(tmp_path.rglob("*.tmp"))


def test_cli(tmp_path, capsys):
    main([str(tmp_path), "--num_samples", "3", "--image_size", "16", "--folders", "2"])
    assert len(list((tmp_path / "semseg").rglob("*.png"))) == 3
    assert "wrote 3 samples" in capsys.readouterr().out
