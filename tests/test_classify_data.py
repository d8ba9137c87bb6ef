"""Classification data: ImageNet's folder layout read as torchvision's ImageFolder (labels =
sorted class folders), the evaluation resize and centre crop, and the clear errors of a bad
dataset (flat val, an empty or missing class folder, a corrupt JPEG, with data.skip_corrupt)."""
from pathlib import Path

import numpy as np
import pytest

from configs.finetune_cls import get_config
from multimae_jax import modalities
from multimae_jax.data.classify_sources import ImageFolder, make_classify_source
from multimae_jax.data import classify_transforms
from multimae_jax.data.classify_transforms import ClassifyRecipe, eval_transform
from multimae_jax.data.codecs import CorruptFileError, encode
from multimae_jax.train.classify import ClassifyObjective

RGB = modalities.get("rgb")


def write_imagenet(root, classes=("n02", "n01", "n03"), per_class=2, size=(40, 48),
                   splits=("train", "val")) -> Path:
    """ROOT/<split>/<class>/img<k>.JPEG, image values encoding (class, k)."""
    root = Path(root)
    for split in splits:
        for c, cls in enumerate(classes):
            for k in range(per_class):
                image = np.full(size + (3,), (40 * c, 60 * k, 200), np.uint8)
                path = root / split / cls / f"img{k}.JPEG"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(encode(RGB, image, ".jpg"))
    return root


def test_image_folder_labels_are_the_sorted_class_folders(tmp_path):
    root = write_imagenet(tmp_path)
    source = make_classify_source(str(root), "train", (RGB,), train=True)
    assert source.classes == ["n01", "n02", "n03"]
    keys = [source[i]["key"] for i in range(len(source))]
    assert keys == [f"{c}/img{k}" for c in ("n01", "n02", "n03") for k in (0, 1)]
    assert [source[i]["label"] for i in range(len(source))] == [0, 0, 1, 1, 2, 2]
    sample = source[2]  # n02 was written as class position 0: red 0
    assert sample["rgb"].shape == (40, 48, 3) and abs(int(sample["rgb"][..., 0].mean())) < 4


def test_flat_val_and_empty_class_folders_are_named(tmp_path):
    root = write_imagenet(tmp_path, splits=("train",))
    (root / "val").mkdir()
    (root / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(
        (root / "train" / "n01" / "img0.JPEG").read_bytes())
    with pytest.raises(ValueError, match="lie directly in the folder.*class \\(wnid\\) folder"):
        ImageFolder(root / "val")
    (root / "train" / "n04").mkdir()
    with pytest.raises(ValueError, match=r"class folder\(s\) \['n04'\] hold no image"):
        ImageFolder(root / "train")


def tiny_config(root, **overrides):
    c = get_config("in1k_tiny")
    c.data.path = str(root)
    c.target.num_classes = 3
    c.model.image_size = 32
    c.update_from_flattened_dict(overrides)
    return c


def test_a_class_missing_from_val_is_named(tmp_path):
    root = write_imagenet(tmp_path)
    for f in (root / "val" / "n02").iterdir():
        f.unlink()
    (root / "val" / "n02").rmdir()
    objective = ClassifyObjective(tiny_config(root))
    with pytest.raises(ValueError, match=r"1 missing from val \(e.g. \['n02'\]\)"):
        objective._source("val", 0, 0)


def test_num_classes_must_match_the_folders(tmp_path):
    root = write_imagenet(tmp_path)
    objective = ClassifyObjective(tiny_config(root, **{"target.num_classes": 1000}))
    with pytest.raises(ValueError, match="3 classes, but config.target.num_classes = 1000"):
        objective._source("train", 0, 0)


def test_corrupt_jpeg_is_named_or_skipped(tmp_path):
    root = write_imagenet(tmp_path)
    bad = root / "train" / "n01" / "img1.JPEG"
    bad.write_bytes(b"not a jpeg")
    (root / "val" / "n01" / "img1.JPEG").write_bytes(b"not a jpeg")
    source = make_classify_source(str(root), "train", (RGB,), train=True)
    with pytest.raises(CorruptFileError, match="img1.JPEG"):
        source[1]
    # training: the next readable image takes its place
    skipping = make_classify_source(str(root), "train", (RGB,), train=True, skip_corrupt=True)
    assert skipping[1]["key"] == "n02/img0"
    # evaluation: the row is kept but not counted
    val = make_classify_source(str(root), "val", (RGB,), train=False, skip_corrupt=True)
    assert val[1]["rgb"] is None
    row = ClassifyRecipe((RGB,), 32)(val[1])
    assert row["valid"] == np.False_ and row["rgb"].shape == (32, 32, 3)


@pytest.mark.parametrize("shape,resized,box", [
    # (H, W) -> after the shorter side to 256 (torchvision Resize(256): long = int(256 * L / S)),
    # then the crop's top-left corner int(round((side - 224) / 2)) (Python's round half to even)
    ((300, 200), (384, 256), (80, 16)),
    ((199, 301), (256, 387), (16, 82)),  # (387 - 224) / 2 = 81.5 -> 82
    ((256, 256), (256, 256), (16, 16)),  # no resize
    ((255, 257), (256, 258), (16, 17)),
    ((73, 500), (256, 1753), (16, 764)),  # 764.5 -> 764
])
def test_eval_resize_and_centre_crop_geometry(shape, resized, box, monkeypatch):
    calls = []

    def resize(image, size):  # PIL's bicubic itself: tests/test_pil_resample.py
        calls.append(size)
        return position_image(size)

    monkeypatch.setattr(classify_transforms.pil_resample, "resize_bicubic_uint8", resize)
    image = position_image(shape)
    out = eval_transform(image, 224)
    assert calls == ([] if shape == resized else [resized])
    np.testing.assert_array_equal(out, position_image(resized)[box[0]:box[0] + 224,
                                                                box[1]:box[1] + 224])


def position_image(size):
    """uint8 (H, W, 3) whose pixels encode their row and column (mod 256)."""
    rows, cols = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
    return np.stack([rows % 256, cols % 256, (cols // 256) * 16 + rows // 256], -1).astype(np.uint8)


DEPTH, SEMSEG = modalities.get("depth"), modalities.get("semseg")


def gradient_rgb(size):
    """A smooth uint8 (H, W, 3) image (bicubic resizing barely overshoots it)."""
    rows, cols = np.meshgrid(np.linspace(20, 230, size[0]), np.linspace(30, 220, size[1]),
                             indexing="ij")
    return np.stack([rows, cols, (rows + cols) / 2], -1).astype(np.uint8)


def test_multimodal_layout_pairs_the_modalities_by_path(tmp_path):
    """SPLIT/<modality>/<class>/<file>, the official pre-training layout: labels from the class
    folders, the modalities of one sample paired by path, rgb alone readable from it too."""
    for c, cls in enumerate(("n02", "n01")):
        for k in range(2):
            for mod, image in ((RGB, np.full((20, 24, 3), 50 * c + k, np.uint8)),
                               (DEPTH, np.full((20, 24), 1000 * c + k, np.uint16))):
                path = tmp_path / "train" / mod.name / cls / f"img{k}{mod.write_ext}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(encode(mod, image, mod.write_ext))
    source = make_classify_source(str(tmp_path), "train", (RGB, DEPTH), train=True)
    assert source.classes == ["n01", "n02"]
    for i, (key, label, value) in enumerate([("n01/img0", 0, 1), ("n01/img1", 0, 1),
                                             ("n02/img0", 1, 0), ("n02/img1", 1, 0)]):
        sample = source[i]
        assert (sample["key"], sample["label"]) == (key, label)
        k = int(key[-1])
        assert sample["depth"].dtype == np.uint16 and np.all(sample["depth"] == 1000 * value + k)
        assert abs(int(sample["rgb"][..., 0].mean()) - (50 * value + k)) <= 2  # JPEG
    rgb_only = make_classify_source(str(tmp_path), "train", (RGB,), train=True)
    assert len(rgb_only) == 4 and "depth" not in rgb_only[0]
    assert ImageFolder.class_folders(tmp_path / "train", ("rgb", "depth")) == ["n01", "n02"]
    with pytest.raises(FileNotFoundError, match=r"missing: \['semseg'\]"):
        make_classify_source(str(tmp_path), "train", (RGB, SEMSEG), train=True)


@pytest.mark.parametrize("shape,size,crop_pct,resized,corner", [
    ((70, 53), 32, 0.875, (47, 36), (8, 2)),  # int(round((47 - 32) / 2)) = 8 (half to even)
    ((16, 20), 56, 1.0, (56, 70), (0, 7)),  # 16 -> 56: PIL's two NEAREST roundings differ
])
def test_eval_transform_of_labels_is_pils_nearest(shape, size, crop_pct, resized, corner):
    from PIL import Image
    labels = np.random.default_rng(0).integers(0, 40, shape).astype(np.uint8)
    out = eval_transform(labels, size, crop_pct, SEMSEG)
    # PIL: the shorter side to int(size / crop_pct), the centre crop, then every 4th pixel
    big = np.asarray(Image.fromarray(labels).resize(resized[::-1], Image.NEAREST))
    crop = Image.fromarray(big[corner[0]:corner[0] + size, corner[1]:corner[1] + size])
    small = np.asarray(crop.resize((size // 4, size // 4), Image.NEAREST))
    np.testing.assert_array_equal(out, small)


def test_depth_is_cropped_with_the_rgb_image():
    rgb = gradient_rgb((45, 61))
    depth = rgb[..., 0].astype(np.uint16) * 257  # 0..255 -> 0..65535
    sample = {"key": "k", "label": 3, "rgb": rgb, "depth": depth}
    for recipe, rng in ((ClassifyRecipe((RGB, DEPTH), 32, crop_pct=0.875), None),
                        (get_recipe((RGB, DEPTH)), np.random.default_rng(1))):
        row = recipe(sample, rng)
        assert row["rgb"].shape == (32, 32, 3) and row["rgb"].dtype == np.uint8
        assert row["depth"].shape == (32, 32, 1) and row["depth"].dtype == np.int32
        assert row["label"] == 3
        # the same pixels: bicubic of a smooth image, up to the uint8 rounding
        np.testing.assert_allclose(row["depth"][..., 0] / 257, row["rgb"][..., 0], atol=1.01)


def get_recipe(mods):
    augment = classify_transforms.ClassifyTrainAugment(mods, 32, scale=(0.3, 0.6), hflip=1.0,
                                                       randaugment="")
    return ClassifyRecipe(mods, 32, augment)


def test_randaugment_needs_a_single_rgb_input():
    with pytest.raises(ValueError, match=r"inputs are \['rgb', 'depth'\]: set "
                                         r"augment.randaugment=''"):
        classify_transforms.ClassifyTrainAugment((RGB, DEPTH), 32)
