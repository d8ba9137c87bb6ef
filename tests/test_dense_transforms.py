"""Dense fine-tuning data transforms (multimae_jax/data/dense_transforms.py, dense_ops.py,
taskonomy_transforms.py) against the official loaders (tests/fixtures/official/dense_transforms:
utils/datasets_semseg.py and utils/dataset_regression.py with albumentations 1.1.0, the random
draws replayed; utils/taskonomy/transforms.py), and the random operations by their properties."""

import dataclasses

import numpy as np
import pytest

from multimae_jax.data.dense_ops import JitterDraw, normalize_image
from multimae_jax.data.dense_transforms import (
    NYU_JITTER, SEMSEG_JITTER, DenseDraw, NyuAugment, SemsegAugment, adapt_labels, depth_input,
    depth_target, pseudo_semseg_input, standardize_depth_map)
from multimae_jax.data.taskonomy_transforms import TASKONOMY_TASKS, preprocess_taskonomy, valid_mask
from multimae_jax.modalities import IMAGENET_MEAN, IMAGENET_STD

SEMSEG_SIZE, NYU_SIZE, TASKONOMY_SIZE = 16, 12, 12  # as tests/official/dense_transform_cases.py
SEMSEG_EVAL = ["10x14", "14x10", "16x16", "12x12", "23x19", "20x32", "5x27", "no_mask",
               "raw_depth", "pseudo"]
SEMSEG_TRAIN = ["seed0", "seed4", "seed9", "seed5"]
NYU_EVAL = ["15x21", "20x15", "12x12", "31x25"]
NYU_TRAIN = ["seed0", "seed4", "seed5", "seed8"]
MASKS = ("depth", "semseg", "mask_valid", "pseudo_semseg")
TASKONOMY = [f"square/{task}" for task in sorted(TASKONOMY_TASKS)] + [
    "square/mask_valid", "wide/rgb", "wide/depth_zbuffer", "wide/mask_valid"]


@pytest.fixture(scope="module")
def ref(official_npz):
    return official_npz("dense_transforms")


def _case(ref, prefix):
    """(inputs, official outputs, replayed draw or None) of one fixture case."""
    part = lambda sub: {k[len(prefix) + len(sub) + 2:]: v for k, v in ref.items()
                        if k.startswith(f"{prefix}/{sub}/")}
    if f"{prefix}/draw" not in ref:
        return part("in"), part("out"), None
    # flip, gray, crop starts (2), scale, jitter factors (4), jitter order (4); NaN: not drawn
    d = ref[f"{prefix}/draw"].tolist()
    jitter = None if np.isnan(d[5]) else JitterDraw(tuple(d[5:9]), tuple(int(k) for k in d[9:]))
    draw = DenseDraw(flip=bool(d[0]), gray=bool(d[1]), crop=(d[2], d[3]),
                     scale=1.0 if np.isnan(d[4]) else d[4], jitter=jitter)
    return part("in"), part("out"), draw


def _assert_rgb(ours_uint8, official_chw):
    ours = np.moveaxis(normalize_image(ours_uint8, IMAGENET_MEAN, IMAGENET_STD), -1, 0)
    np.testing.assert_array_equal(ours, official_chw)


@pytest.mark.parametrize("case", [f"eval/{c}" for c in SEMSEG_EVAL] +
                         [f"train/{c}" for c in SEMSEG_TRAIN])
def test_semseg_transform_equals_the_official(ref, case):
    sample, want, draw = _case(ref, f"semseg_{case}")
    aug = SemsegAugment(("rgb",), tuple(k for k in MASKS if k in sample), input_size=SEMSEG_SIZE,
                        train=draw is not None)
    out = aug.apply(sample, draw)
    assert all(x.shape[:2] == (SEMSEG_SIZE, SEMSEG_SIZE) for x in out.values())
    _assert_rgb(out["rgb"], want["rgb"])
    np.testing.assert_array_equal(adapt_labels(out["semseg"], num_classes=40), want["semseg"])
    depth = depth_input(out["depth"], out.get("mask_valid"), standardize=case != "eval/raw_depth")
    np.testing.assert_allclose(depth[..., 0], want["depth"][0], rtol=1e-5, atol=1e-5)
    if "mask_valid" in sample:
        np.testing.assert_array_equal(out["mask_valid"], want["mask_valid"])
    if "pseudo_semseg" in sample:  # the loops' value rules (run_finetuning_semseg.py) on top
        got = pseudo_semseg_input(out["pseudo_semseg"], num_classes=133, train=False)
        np.testing.assert_array_equal(got, np.where(want["pseudo_semseg"] == 254, 133,
                                                    want["pseudo_semseg"]))
        got = pseudo_semseg_input(out["pseudo_semseg"], num_classes=133, train=True)
        np.testing.assert_array_equal(got, np.minimum(want["pseudo_semseg"], 133))


@pytest.mark.parametrize("case", [f"eval/{c}" for c in NYU_EVAL] +
                         [f"train/{c}" for c in NYU_TRAIN])
def test_nyu_transform_and_target_equal_the_official(ref, case):
    sample, want, draw = _case(ref, f"nyu_{case}")
    aug = NyuAugment(("rgb",), ("depth", "mask_valid"), input_size=NYU_SIZE, train=draw is not None)
    out = aug.apply(sample, draw)
    _assert_rgb(out["rgb"], want["rgb"])
    target, valid = depth_target(out["depth"], out["mask_valid"])
    np.testing.assert_array_equal(valid[..., 0], want["mask_valid"][0])
    np.testing.assert_array_equal(target[..., 0], want["depth"][0])  # float32 steps as torch's


@pytest.mark.parametrize("reduce", [True, False])
@pytest.mark.parametrize("void", [False, True])
def test_label_adaptation_equals_the_official(ref, reduce, void):
    got = adapt_labels(ref["labels/in"], num_classes=253 if reduce else 254,
                       reduce_zero_label=reduce, use_void_label=void)
    np.testing.assert_array_equal(got, ref[f"labels/reduce{int(reduce)}_void{int(void)}"])


@pytest.mark.parametrize("case", ["pads", "mask", "tiny", "flat"])
def test_depth_standardisation_equals_the_official(ref, case):
    got = standardize_depth_map(ref[f"standardize/{case}/in"], ref.get(f"standardize/{case}/mask"))
    np.testing.assert_allclose(got, ref[f"standardize/{case}/out"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", TASKONOMY)
def test_taskonomy_preprocessing_equals_the_official(ref, key):
    case, task = key.split("/")
    stored, want = ref[f"taskonomy/{key}/in"], ref[f"taskonomy/{key}/out"]
    if task == "mask_valid":
        got = valid_mask(stored, TASKONOMY_SIZE)
        assert want.any() and not want.all()  # the dilation has something to do
    else:
        got = preprocess_taskonomy(stored, TASKONOMY_TASKS[task], TASKONOMY_SIZE)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(np.moveaxis(got, -1, 0), want, rtol=0, atol=1e-6)


# --- the random operations, by their properties --------------------------------------------------

def _blocks(shape=(48, 64), seed=0):
    """A sample whose rgb, depth and labels paint the same 16 x 16 blocks: block id k is grey
    20 + 10 k, depth 1000 + k and label k; mask_valid is all valid."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 20, (shape[0] // 16 + 1, shape[1] // 16 + 1))
    ids = np.kron(ids, np.ones((16, 16), int))[:shape[0], :shape[1]]
    return {"rgb": np.repeat((20 + 10 * ids)[..., None], 3, -1).astype(np.uint8),
            "depth": (1000 + ids).astype(np.uint16), "semseg": ids.astype(np.uint8),
            "mask_valid": np.full(shape, 255, np.uint8)}


def _uniform_around(labels, margin):
    """Pixels whose (2 margin + 1)^2 neighbourhood holds one label value."""
    pad = np.pad(labels, margin, mode="edge")
    h, w = labels.shape
    views = [pad[i:i + h, j:j + w] for i in range(2 * margin + 1) for j in range(2 * margin + 1)]
    return np.all([v == labels for v in views], axis=0)


@pytest.mark.parametrize("draw", [DenseDraw(False, scale=0.7, crop=(0.2, 0.9)),
                                  DenseDraw(True, scale=1.3, crop=(0.6, 0.1)),
                                  DenseDraw(True, scale=1.9, crop=(0.99, 0.5))])
@pytest.mark.parametrize("seed", range(2))
def test_one_training_draw_moves_every_modality_alike(seed, draw):
    aug = SemsegAugment(("rgb",), ("depth", "semseg", "mask_valid"), input_size=32)
    out = aug.apply(_blocks(seed=seed), draw)
    assert {k: v.shape[:2] for k, v in out.items()} == dict.fromkeys(out, (32, 32))
    pad = out["semseg"] == 254
    np.testing.assert_array_equal(out["depth"] == 254, pad)
    np.testing.assert_array_equal(out["mask_valid"] == 254, pad)
    assert (out["rgb"][pad] == 128).all()
    np.testing.assert_array_equal(out["depth"][~pad] - 1000, out["semseg"][~pad])
    inner = _uniform_around(out["semseg"], 2) & ~pad  # bilinear and nearest agree inside blocks
    assert inner.sum() > 20
    np.testing.assert_array_equal(out["rgb"][inner, 0], 20 + 10 * out["semseg"][inner].astype(int))


@pytest.mark.parametrize("augment", [SemsegAugment, NyuAugment])
def test_flip_applies_to_every_key_and_jitter_to_images_only(augment):
    aug = augment(("rgb",), ("depth", "semseg", "mask_valid"), input_size=24)
    sample = _blocks(shape=(52, 40))  # portrait: NyuAugment's resize leaves no horizontal margin
    plain = DenseDraw(scale=0.9, crop=(0.3, 0.7))
    flipped = aug.apply(sample, dataclasses.replace(plain, flip=True))
    if augment is SemsegAugment:  # flips first
        want = aug.apply({k: np.ascontiguousarray(v[:, ::-1]) for k, v in sample.items()}, plain)
    else:  # flips after the resize, before the crop
        want = {k: v[:, ::-1] for k, v in aug.apply(sample, plain).items()}
    for key in sample:
        np.testing.assert_array_equal(flipped[key], want[key])
    jittered = aug.apply(sample, dataclasses.replace(
        plain, jitter=JitterDraw((1.3, 0.7, 1.2, 0.05), (3, 1, 0, 2))))
    unjittered = aug.apply(sample, plain)
    assert not np.array_equal(jittered["rgb"], unjittered["rgb"])
    for key in ("depth", "semseg", "mask_valid"):
        np.testing.assert_array_equal(jittered[key], unjittered[key])


@pytest.mark.parametrize("augment", [SemsegAugment, NyuAugment])
def test_a_training_transform_is_a_function_of_the_sample_and_the_rng(augment):
    sample = _blocks()
    aug = augment(("rgb",), ("depth", "semseg"), input_size=24)
    outputs = [aug(sample, np.random.default_rng(seed)) for seed in range(8)]
    for seed, first in enumerate(outputs):
        again = aug(sample, np.random.default_rng(seed))
        for key in first:
            np.testing.assert_array_equal(first[key], again[key])
    assert len({o["rgb"].tobytes() for o in outputs}) > len(outputs) // 2


def test_draws_cover_the_recipe_ranges_and_probabilities():
    rng = np.random.default_rng(0)
    semseg = [SemsegAugment(("rgb",)).draw(rng) for _ in range(4000)]
    nyu = [NyuAugment(("rgb",)).draw(rng) for _ in range(4000)]
    for draws, jitter in ((semseg, SEMSEG_JITTER), (nyu, NYU_JITTER)):
        assert abs(np.mean([d.flip for d in draws]) - 0.5) < 0.03
        assert abs(np.mean([d.jitter is not None for d in draws]) - jitter.p) < 0.03
        crops = np.array([d.crop for d in draws])
        assert crops.min() >= 0 and crops.max() < 1 and abs(crops.mean() - 0.5) < 0.02
        assert abs(crops.std() - 12 ** -0.5) < 0.01  # uniform
        factors = np.array([d.jitter.factors for d in draws if d.jitter is not None])
        for k, (low, high) in enumerate([jitter.brightness, jitter.contrast, jitter.saturation,
                                         jitter.hue]):
            assert low <= factors[:, k].min() < low + 0.02
            assert high - 0.02 < factors[:, k].max() <= high
        orders = {d.jitter.order for d in draws if d.jitter is not None}
        assert len(orders) == 24 and all(sorted(o) == [0, 1, 2, 3] for o in orders)
    scales = np.array([d.scale for d in semseg])
    assert 0.1 <= scales.min() < 0.12 and 1.98 < scales.max() <= 2.0
    assert abs(np.mean([d.gray for d in nyu]) - 0.3) < 0.03
    assert not any(d.gray for d in semseg) and all(d.scale == 1.0 for d in nyu)
    rare = dataclasses.replace(SEMSEG_JITTER, p=0.2)
    assert abs(np.mean([rare.draw(rng) is not None for _ in range(4000)]) - 0.2) < 0.03


# --- bad inputs --------------------------------------------------------------------------------

@pytest.mark.parametrize("augment", [SemsegAugment, NyuAugment])
def test_modalities_of_different_sizes_are_an_error_naming_the_sizes(augment):
    sample = {"rgb": np.zeros((10, 14, 3), np.uint8), "semseg": np.zeros((10, 15), np.uint8)}
    with pytest.raises(ValueError, match=r"'rgb': \(10, 14\).*'semseg': \(10, 15\)"):
        augment(("rgb",), ("semseg",), input_size=8, train=False)(sample)


@pytest.mark.parametrize("augment", [SemsegAugment, NyuAugment])
def test_a_missing_mask_valid_is_an_error_naming_it(augment):
    sample = {"rgb": np.zeros((10, 14, 3), np.uint8), "depth": np.zeros((10, 14), np.uint16)}
    with pytest.raises(KeyError, match=r"sample lacks \['mask_valid'\]"):
        augment(("rgb",), ("depth", "mask_valid"), input_size=8, train=False)(sample)


def test_labels_beyond_the_classes_are_an_error_naming_the_value():
    ok = np.array([[0, 1, 150, 254, 255]], np.uint8)  # reduce_zero_label: 150 -> class 149
    np.testing.assert_array_equal(adapt_labels(ok, 150), [[255, 0, 149, 255, 255]])
    with pytest.raises(ValueError, match=r"\[151\].*num_classes=150"):
        adapt_labels(np.array([[3, 151, 255]], np.uint8), 150)
    with pytest.raises(ValueError, match=r"\[40, 41\]"):
        adapt_labels(np.array([[0, 39, 40, 41]], np.uint8), 40, reduce_zero_label=False)
