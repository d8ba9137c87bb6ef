"""Fine-tuning from TensorFlow Datasets: the ADE20K and NYUv2 depth recipes read TFDS's
scene_parse150 and nyu_depth_v2 with their real feature layouts (checked against
tensorflow-datasets 4.9: data/tfds_source.py), here served by tfds.testing.mock_data with
aligned examples of those layouts."""
import contextlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import finetune_depth, finetune_semseg
from multimae_jax.data.codecs import CorruptFileError
from multimae_jax.train.finetune import FinetuneObjective

H, W = 40, 48


def ade_example(i: int) -> dict:
    rng = np.random.default_rng(i)
    label = rng.integers(0, 151, (H, W), dtype=np.uint8)  # 0 = other, 1..150
    return {"image": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
            "annotation": np.repeat(label[..., None], 3, axis=-1)}


def nyu_example(i: int) -> dict:
    rng = np.random.default_rng(100 + i)
    depth = rng.uniform(0.5, 9.99, (H, W)).astype(np.float16)  # metres
    depth[:2] = 0  # unknown
    return {"image": rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "depth": depth}


class _Examples(list):
    """What tfds.data_source returns: random access, and the dataset's info."""

    def __init__(self, examples, info):
        super().__init__(examples)
        self.dataset_info = info


@contextlib.contextmanager
def mocked(make_example, splits):
    """tfds.data_source(NAME, split) -> 5 examples of `make_example` per split in `splits`."""
    def as_data_source(builder, split, *args, **kwargs):
        assert split in splits, split
        return _Examples([make_example(i + 10 * splits.index(split)) for i in range(5)],
                         builder.info)
    with tfds.testing.mock_data(as_data_source_fn=as_data_source):
        yield


def test_the_depth_recipe_reads_nyu_depth_v2_in_the_official_units():
    c = finetune_depth.get_config("nyu")
    c.data.path = "tfds:nyu_depth_v2"
    c.data.val_split = "validation"
    with mocked(nyu_example, ["train", "validation"]):
        objective = FinetuneObjective(c)
        source = objective._source("validation", 0, 0)
        assert len(source) == 5
        sample = source[3]
    raw = nyu_example(13)  # validation's 4th example
    # tools/prepare_nyuv2.py: np.uint16(depth_m * 2**16 / 10)
    np.testing.assert_array_equal(sample["depth"],
                                  (raw["depth"].astype(np.float64) * 6553.6).astype(np.uint16))
    np.testing.assert_array_equal(sample["mask_valid"], np.where(raw["depth"] > 0, 255, 0))
    np.testing.assert_array_equal(sample["rgb"], raw["image"])


def test_the_ade_recipe_reads_scene_parse150_and_trains_on_its_batches():
    c = finetune_semseg.get_config("ade_rgb_tiny")
    c.data.path = "tfds:scene_parse150"
    c.data.val_split = "test"
    c.target.num_classes = c.modalities.semseg.num_classes = 150
    c.data.reduce_zero_label = True
    with mocked(ade_example, ["train", "test"]):
        objective = FinetuneObjective(c)
        sample = objective._source("test", 0, 0)[2]
        np.testing.assert_array_equal(sample["semseg"], ade_example(12)["annotation"][..., 0])
        _, dataset = objective.train_data(0, 1)
        batch = next(iter(dataset))
    s = c.model.image_size
    assert batch["rgb"].shape == (c.data.global_batch_size, s, s, 3)
    labels = batch["semseg"]
    assert labels.shape == (c.data.global_batch_size, s, s)
    assert set(np.unique(labels)) <= set(range(150)) | {255}  # reduce_zero_label: 0 -> 255


def test_a_float_depth_feature_without_its_factor_names_the_field():
    c = finetune_depth.get_config("nyu")
    c.data.path = "tfds:nyu_depth_v2"
    del c.data.tfds_scales["depth"]
    with mocked(nyu_example, ["train"]):
        with pytest.raises(ValueError, match=r"config\.data\.tfds_scales\.depth"):
            FinetuneObjective(c)._source("train", 0, 0)[0]


def test_labels_with_unequal_channels_name_the_example():
    def bad(i):
        ex = ade_example(i)
        ex["annotation"][0, 0] = (1, 2, 3)
        return ex
    c = finetune_semseg.get_config("ade_rgb")
    c.data.path = "tfds:scene_parse150"
    with mocked(bad, ["train"]):
        with pytest.raises(CorruptFileError, match=r"scene_parse150/train/0 \(annotation\)"):
            FinetuneObjective(c)._source("train", 0, 0)[0]


def imagenet_example(i: int) -> dict:
    rng = np.random.default_rng(200 + i)
    return {"image": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
            "label": np.int64(i * 7 % 1000), "file_name": f"n{i:08d}.JPEG"}


def test_imagenet2012_classification_reads_tfds():
    from configs import finetune_cls
    from multimae_jax.train.classify import ClassifyObjective
    c = finetune_cls.get_config("in1k")
    c.data.path, c.data.val_split = "tfds:imagenet2012", "validation"
    objective = ClassifyObjective(c)
    with mocked(imagenet_example, ["train", "validation"]):
        train = objective._source("train", 0, 0)
        val = objective._source("validation", 0, 0)
        assert len(train) == len(val) == 5 and train.classes is None  # TFDS: labels as given
        assert [train[i]["label"] for i in range(5)] == [0, 7, 14, 21, 28]
        np.testing.assert_array_equal(val[1]["rgb"], imagenet_example(11)["image"])
        row = objective._recipe(train=False)(val[1])
        assert row["rgb"].shape == (224, 224, 3) and row["label"] == 77
