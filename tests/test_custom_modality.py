"""A modality the package does not know, defined here: 3-channel surface normals stored as 8-bit
PNG. It is checked, packed (in worker processes), trained on (grain worker process), pictured
and converted, with no change to the package."""
import json
import pickle

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

import multimae_jax as mm
from multimae_jax.convert.__main__ import main as convert_main
from multimae_jax.data.check import check
from multimae_jax.data.codecs import encode
from multimae_jax.data.pack import pack
from multimae_jax.data.transforms import prepare_batch
from multimae_jax.modalities import Modality
from multimae_jax.train.loop import train
from multimae_jax.viz import reconstruction_grid
from train_helpers import small_config

NORMALS = Modality("normals", channels=3, storage="uint8", write_ext=".png", resample="bicubic",
                   mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), loss="l1", draw="image")
RGB = mm.modalities.get("rgb")


def _normals(size: int, index: int) -> np.ndarray:
    """A smooth field of unit normals, different per sample, as 8-bit (n + 1) / 2 * 255."""
    y, x = np.mgrid[0:size, 0:size] / size
    n = np.stack([np.sin(3 * x + index), np.cos(2 * y - index), np.ones_like(x)], -1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    return np.round((n + 1) / 2 * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("normals")
    rng = np.random.default_rng(0)
    for i in range(16):
        for mod, array in ((RGB, rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)),
                           (NORMALS, _normals(40, i))):
            path = root / mod.name / f"c{i % 2}" / f"s{i:02d}{mod.write_ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode(mod, array, ".png"))
    return root


def test_stored_integers_never_reach_the_model_raw():
    pixels = np.array([[[[0, 128, 255]]]], np.uint8)  # (1, 1, 1, 3)
    plain = Modality("normals", channels=3, storage="uint8")
    np.testing.assert_allclose(prepare_batch({"normals": pixels}, (plain,))["normals"],
                               pixels / 255.0, rtol=1e-6)
    np.testing.assert_allclose(prepare_batch({"normals": pixels}, (NORMALS,))["normals"],
                               (pixels / 255.0 - 0.5) / 0.5, atol=1e-6)


def test_the_modality_travels_by_value():
    again = pickle.loads(pickle.dumps(NORMALS))
    assert again == NORMALS and Modality(**json.loads(json.dumps(NORMALS.to_dict()))) == NORMALS


def test_checked_and_packed(dataset, tmp_path):
    assert check(dataset, (RGB, NORMALS), num_workers=1) == []
    meta = pack(dataset, tmp_path / "shards", (RGB, NORMALS), num_shards=2, num_workers=2,
                decoded=True)  # decoding in the spawned packing workers needs the entry itself
    assert meta["tasks"] == ["rgb", "normals"] and meta["num_records"] == 16
    bad = dataset / "normals" / "c0" / "s00.png"
    good = bad.read_bytes()
    bad.write_bytes(encode(mm.modalities.get("semseg"), np.zeros((40, 40), np.uint8)))
    try:
        problems = check(dataset, (RGB, NORMALS), num_workers=1)
    finally:
        bad.write_bytes(good)
    assert len(problems) == 1 and "s00.png: normals expects an 8-bit image with 3 channel(s)" \
        in problems[0]


def test_trained_pictured_and_converted(dataset, tmp_path):
    config = small_config(**{"data.path": str(dataset), "data.num_workers": 1,
                             "model.input_tasks": ("rgb", "normals"),
                             "model.output_tasks": ("rgb", "normals"),
                             "train.num_steps": 2, "train.picture_every": 2})
    config.modalities.normals = NORMALS.to_dict()
    workdir = tmp_path / "run"
    last = train(config, workdir)
    assert np.isfinite(last["loss/normals"]) and last["loss/normals"] > 0
    assert (workdir / "pictures" / "step_0000002.png").is_file()

    model, variables = mm.load_pretrained(workdir)
    assert list(model.input_adapters) == ["rgb", "normals"]
    x = {t: np.zeros((1, 32, 32, 3), np.float32) for t in ("rgb", "normals")}
    preds, masks = model.apply(variables, x, rngs={"masking": jax.random.key(0)},
                               num_encoded_tokens=6)
    grid = reconstruction_grid(x, preds, masks, (RGB, NORMALS), patch_size=16, num_samples=1)
    assert grid.shape[0] > 2 * 32  # two rows: rgb and normals

    out = tmp_path / "normals.safetensors"
    assert convert_main([str(workdir), str(out)]) == 0
    weights = load_file(str(out))
    assert weights["input_adapters.normals.proj.weight"].shape[1:] == (3, 16, 16)
    assert weights["output_adapters.normals.out_proj.weight"].shape[0] == 3 * 16 * 16
