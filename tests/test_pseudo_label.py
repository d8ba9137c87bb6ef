"""python -m multimae_jax.data.pseudo_label: folders of RGB images of any mode become datasets
that data.check and the pre-training source accept; restartable, sharded, bad files named or
left out; the depth scalings on hand-computed values; the jax labeller with tiny random MultiViT
checkpoints, the hf one (when torch and transformers are installed) with tiny random models."""
import importlib
import os

import jax
import numpy as np
import pytest
from PIL import Image

from configs import finetune_depth, finetune_semseg
from multimae_jax.checkpoint_format import save_checkpoint
from multimae_jax.data import check, pseudo_label as pl
from multimae_jax.data.codecs import CorruptFileError
from multimae_jax.data.labellers import (Labeller, depth_to_uint16, disparity_to_depth,
                                         upsampled_argmax)
from multimae_jax.data.pipeline import make_source
from multimae_jax.data.records import decode_record
from multimae_jax.data.synthetic import SyntheticScenes
from multimae_jax.modalities import MODALITIES
from multimae_jax.models.spec import abstract_variables
from multimae_jax.train.finetune import build_model

TASKS = ("rgb", "depth", "semseg")
# (class, file name, PIL mode, (width, height)): grayscale, RGBA and palette images among them
IMAGES = [("cat", "a.jpg", "RGB", (40, 30)), ("cat", "b.jpg", "L", (33, 47)),
          ("dog", "c.png", "RGBA", (50, 28)), ("dog", "d.png", "P", (36, 36))]


def write_images(folder, images=IMAGES, seed=0):
    """Random images; returns {relative path: (height, width)}."""
    rng = np.random.default_rng(seed)
    sizes = {}
    for cls, name, mode, (w, h) in images:
        path = folder / cls / name if cls else folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode).save(path)
        sizes[f"{cls or folder.name}/{name}"] = (h, w)
    return sizes


class FakeDepth(Labeller):
    """Depth = 1 + the red channel; raises at its call number `fail_at` (1-based)."""

    def __init__(self, fail_at=None):
        super().__init__(MODALITIES["depth"], "depth")
        self.fail_at, self.calls, self.images = fail_at, 0, 0

    def predict(self, images):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("killed")
        self.images += len(images)
        return [im[..., 0].astype(np.float32) + 1 for im in images]


class FakeSemseg(Labeller):
    """Class id = green channel mod 133."""

    def __init__(self):
        super().__init__(MODALITIES["semseg"], "labels")

    def predict(self, images):
        return [im[..., 1].astype(np.int64) % 133 for im in images]


def files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def assert_dataset(out, sizes):
    """OUT holds rgb / depth / semseg per source image, at its size, as training reads them."""
    for rel, (h, w) in sizes.items():
        stem = os.path.splitext(rel)[0]
        with Image.open(out / "depth" / f"{stem}.png") as d, \
                Image.open(out / "semseg" / f"{stem}.png") as s:
            assert d.mode in ("I;16", "I") and np.asarray(d).shape == (h, w)
            assert s.mode == "L" and np.asarray(s).shape == (h, w)
            assert np.asarray(s).max() < 133 and np.asarray(d).max() <= 65535
    assert check.check(out, TASKS, num_workers=1) == []
    source = make_source(str(out), TASKS)
    assert len(source) == len(sizes)
    for i in range(len(source)):
        sample = decode_record(source[i], TASKS)
        assert sample["depth"].dtype == np.uint16 and sample["semseg"].dtype == np.uint8
        assert sample["rgb"].shape == sample["depth"].shape + (3,) == sample["semseg"].shape + (3,)


# --- the jax labeller -------------------------------------------------------------------------

def _save(config, path, **overrides):
    """The model of a fine-tuning config at 32 px with random N(0, 0.02) weights (drawn from
    the shapes: running model.init costs half a minute of CPU for the DPT head), saved at
    `path`."""
    config.update_from_flattened_dict({"model.image_size": 32, **overrides})
    model = build_model(config)
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: rng.normal(0, 0.02, s.shape).astype(s.dtype),
                             abstract_variables(model))
    save_checkpoint(model, variables, path)
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{'depth', 'semseg' (133 classes), 'semseg4' (4 classes)}: tiny MultiViT checkpoints of
    the _tiny fine-tuning configs."""
    root = tmp_path_factory.mktemp("ckpt")
    one_block = {"model.overrides.depth": 1}
    return {
        "depth": _save(finetune_depth.get_config("nyu_tiny"), root / "depth"),
        "semseg": _save(finetune_semseg.get_config("nyu_rgb_tiny"), root / "semseg",
                        **one_block, **{"target.num_classes": 133}),
        "semseg4": _save(finetune_semseg.get_config("nyu_rgb_tiny"), root / "semseg4",
                         **one_block),
    }


def test_jax_labeller_makes_a_dataset_that_training_reads(tmp_path, checkpoints, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    sizes = write_images(src)
    (src / "cat" / "notes.txt").write_text("not an image, not an image extension")
    rc = pl.main([str(src), str(out), "--labeller", "jax", "--batch-size", "3",
                  "--depth-checkpoint", checkpoints["depth"],
                  "--semseg-checkpoint", checkpoints["semseg"]])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "4 labelled, 0 skipped (already done), 0 bad" in printed
    assert f"python -m multimae_jax.data.check {out}" in printed
    assert files(out) == sorted(
        [f"rgb/{r}" for r in sizes] + [f"{t}/{os.path.splitext(r)[0]}.png"
                                       for t in ("depth", "semseg") for r in sizes])
    for rel in sizes:  # the original bytes
        assert (out / "rgb" / rel).read_bytes() == (src / rel).read_bytes()
    assert_dataset(out, sizes)
    depth = np.asarray(Image.open(out / "depth" / "cat" / "a.png"))
    assert depth.max() == 65535  # the per-image scale fills the 16 bits


def test_a_semseg_checkpoint_of_other_classes_is_refused(tmp_path, checkpoints, capsys):
    src = tmp_path / "src"
    write_images(src, IMAGES[:1])
    args = [str(src), str(tmp_path / "out"), "--labeller", "jax", "--tasks", "semseg",
            "--semseg-checkpoint", checkpoints["semseg4"]]
    assert pl.main(args) == 2
    err = capsys.readouterr().err
    assert "predicts 4 classes, but semseg has 133" in err and "--semseg-classes 4" in err
    assert pl.main(args + ["--semseg-classes", "4"]) == 0
    labels = np.asarray(Image.open(tmp_path / "out" / "semseg" / "cat" / "a.png"))
    assert labels.shape == (30, 40) and labels.max() < 4


# --- the driver (numpy labellers) -------------------------------------------------------------

def test_layouts_root_beside_rgb_and_flat_folder(tmp_path):
    # (a) a dataset root labelled in place: the labels go beside rgb/, which is left as it is
    root = tmp_path / "root"
    SyntheticScenes(4, 24, 8).write_folder(root, folders=2)
    for task in ("depth", "semseg"):
        for p in (root / task).rglob("*.png"):
            p.unlink()
    rgb_before = {p: p.stat().st_mtime_ns for p in (root / "rgb").rglob("*.jpg")}
    result = pl.pseudo_label(root, root, [FakeDepth(), FakeSemseg()], progress=False)
    assert result == {"labelled": 4, "skipped": 0, "bad": []}
    assert {p: p.stat().st_mtime_ns for p in (root / "rgb").rglob("*.jpg")} == rgb_before
    assert check.check(root, TASKS, num_workers=1) == []
    # (c) a flat folder: one class named after it
    flat = tmp_path / "photos"
    sizes = write_images(flat, [(None, n, m, s) for _, n, m, s in IMAGES])
    pl.pseudo_label(flat, tmp_path / "out", [FakeDepth(), FakeSemseg()], progress=False)
    assert sorted(sizes) == ["photos/a.jpg", "photos/b.jpg", "photos/c.png", "photos/d.png"]
    assert_dataset(tmp_path / "out", sizes)


def test_resumes_after_a_kill_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    src, out = tmp_path / "src", tmp_path / "out"
    sizes = write_images(src, [("k", f"{i}.jpg", "RGB", (20 + i, 16)) for i in range(6)])
    with pytest.raises(RuntimeError, match="killed"):  # the second batch dies in the labeller
        pl.pseudo_label(src, out, [FakeDepth(fail_at=2), FakeSemseg()], batch_size=2,
                        progress=False)
    done = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert sorted(p.relative_to(out).as_posix() for p in done) == [
        "depth/k/0.png", "depth/k/1.png", "rgb/k/0.jpg", "rgb/k/1.jpg",
        "semseg/k/0.png", "semseg/k/1.png"]

    real_replace, calls = os.replace, []

    def dies_on_the_third(a, b):  # a kill between writing a file and renaming it
        calls.append(b)
        if len(calls) == 3:
            raise OSError("killed while writing")
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", dies_on_the_third)
    with pytest.raises(OSError, match="killed while writing"):
        pl.pseudo_label(src, out, [FakeDepth(), FakeSemseg()], batch_size=2, progress=False)
    monkeypatch.undo()
    assert not os.path.exists(calls[2]) and not any(".tmp" in p.name for p in out.rglob("*"))

    depth = FakeDepth()
    result = pl.pseudo_label(src, out, [depth, FakeSemseg()], batch_size=2, progress=False)
    assert result == {"labelled": 3, "skipped": 3, "bad": []}  # 2 + the first of batch 2
    assert depth.images == 3
    assert {p: p.stat().st_mtime_ns for p in done} == done  # finished files untouched
    assert not any(".tmp" in p.name for p in out.rglob("*"))
    assert_dataset(out, sizes)


def test_shards_split_the_samples(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    sizes = write_images(src, [("k", f"{i}.jpg", "RGB", (16, 16)) for i in range(5)])
    counts = [pl.pseudo_label(src, out, [FakeDepth(), FakeSemseg()], shard=(i, 2),
                              progress=False)["labelled"] for i in range(2)]
    assert counts == [3, 2]
    assert_dataset(out, sizes)


def test_a_file_that_is_no_image_is_named_or_left_out(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    sizes = write_images(src, IMAGES[:2])
    (src / "cat" / "broken.jpg").write_text("this is not a JPEG")
    with pytest.raises(CorruptFileError, match=r"cat/broken\.jpg: cannot decode image"):
        pl.pseudo_label(src, out, [FakeDepth(), FakeSemseg()], progress=False)
    result = pl.pseudo_label(src, out, [FakeDepth(), FakeSemseg()], skip_bad=True,
                             progress=False)
    assert result["labelled"] == 2 and result["bad"] == [str(src / "cat" / "broken.jpg")]
    assert not any("broken" in f for f in files(out))
    assert_dataset(out, sizes)


def test_names_that_would_share_a_label_file_are_refused(tmp_path):
    write_images(tmp_path / "src", [("k", "x.jpg", "RGB", (8, 8)), ("k", "x.png", "RGB", (8, 8))])
    with pytest.raises(ValueError, match=r"share a name.*k/x\.jpg / k/x\.png"):
        pl.list_samples(tmp_path / "src")


# --- scalings on hand-computed values ---------------------------------------------------------

def test_depth_to_16_bits():
    depth = np.array([[0.0, 1.0], [2.0, 4.0]])
    # 1 / 4 * 65535 = 16383.75; 2 / 4 * 65535 = 32767.5 (round half to even: 32768)
    np.testing.assert_array_equal(depth_to_uint16(depth), [[0, 16384], [32768, 65535]])
    np.testing.assert_array_equal(depth_to_uint16(np.array([-1.0, 2.0])), [0, 65535])
    np.testing.assert_array_equal(depth_to_uint16(np.zeros((2, 2))), np.zeros((2, 2)))
    assert depth_to_uint16(depth).dtype == np.uint16


def test_disparity_to_depth():
    # normalised [0, 1/3, 1]; depth 1 / (n + 0.01) = [100, 2.912621, 0.990099]
    np.testing.assert_allclose(disparity_to_depth(np.array([0.0, 1.0, 3.0])),
                               [100.0, 2.912621, 0.990099], rtol=1e-6)
    # / 100 * 65535 = [65535, 1908.80, 648.86]
    np.testing.assert_array_equal(depth_to_uint16(disparity_to_depth(np.array([0.0, 1.0, 3.0]))),
                                  [65535, 1909, 649])
    # shift and scale of the disparity do not matter (MiDaS outputs are affine-invariant)
    np.testing.assert_allclose(disparity_to_depth(np.array([5.0, 7.0, 11.0])),
                               [100.0, 2.912621, 0.990099], rtol=1e-6)


def test_upsampled_argmax():
    # one row of 2 pixels, 6 classes; class 5 (in the second group of 4) wins on the left,
    # class 0 on the right. Upsampled x2 (pixel centres aligned) to 4 columns, class 5 scores
    # [1, 0.75, 0.25, 0] and class 0 [0, 0.25, 0.75, 1].
    scores = np.zeros((1, 2, 6), np.float32)
    scores[0, 0, 5] = scores[0, 1, 0] = 1.0
    np.testing.assert_array_equal(upsampled_argmax(scores, (1, 4)), [[5, 5, 0, 0]])
    np.testing.assert_array_equal(upsampled_argmax(scores, (2, 4)), [[5, 5, 0, 0]] * 2)


# --- the hf labeller (tiny random transformers models) ----------------------------------------

def _pil_processor(name):
    """An image processor of `name` (the PIL backend where transformers has two)."""
    transformers = importlib.import_module("transformers")
    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


@pytest.fixture(scope="module")
def hf_labellers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from multimae_jax.data import labellers_hf
    torch.manual_seed(0)
    dpt = transformers.DPTForDepthEstimation(transformers.DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37,
        image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, is_hybrid=False))
    swin = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1] * 4,
                                   num_heads=[1] * 4, window_size=4,
                                   out_features=["stage1", "stage2", "stage3", "stage4"])

    def mask2former(num_labels):
        return transformers.Mask2FormerForUniversalSegmentation(transformers.Mask2FormerConfig(
            backbone_config=swin, num_labels=num_labels, hidden_dim=32, mask_feature_size=32,
            feature_size=32, num_queries=5, decoder_layers=2, encoder_layers=1,
            dim_feedforward=32, num_attention_heads=2, encoder_feedforward_dim=32,
            use_pretrained_backbone=False))

    # DPT: a fixed 32 x 32 input, one batch; Mask2Former keeps the aspect ratio (padding), at
    # 64 px at least: its GroupNorms need more than one value per group at 1/32 resolution
    dpt_proc = _pil_processor("DPTImageProcessor")(size={"height": 32, "width": 32})
    m2f_proc = _pil_processor("Mask2FormerImageProcessor")(
        size={"shortest_edge": 64, "longest_edge": 128})
    return (labellers_hf.HfDepthLabeller(dpt, dpt_proc, MODALITIES["depth"], device="cpu"),
            labellers_hf.HfSemsegLabeller(mask2former(133), m2f_proc, MODALITIES["semseg"],
                                          device="cpu"),
            lambda n: labellers_hf.HfSemsegLabeller(mask2former(n), m2f_proc,
                                                    MODALITIES["semseg"], device="cpu"))


def test_hf_labeller_makes_a_dataset(tmp_path, hf_labellers):
    depth, semseg, _ = hf_labellers
    src, out = tmp_path / "src", tmp_path / "out"
    sizes = write_images(src)
    result = pl.pseudo_label(src, out, [depth, semseg], batch_size=4, progress=False)
    assert result == {"labelled": 4, "skipped": 0, "bad": []}
    assert_dataset(out, sizes)


def test_hf_semseg_model_of_other_classes_is_refused(hf_labellers):
    with pytest.raises(ValueError, match="predicts 150 classes, but semseg has 133"):
        hf_labellers[2](150)
