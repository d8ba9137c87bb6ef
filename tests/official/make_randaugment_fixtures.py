"""Write the golden outputs of the official RandAugment (timm's, vendored in the official
utils/auto_augment.py) that tests/test_randaugment.py compares `multimae_jax.data.randaugment`
against.

The official ImageNet fine-tuning runs `rand-m9-mstd0.5-inc1` with the hparams of
utils/transforms_factory.py (fill colour round(255 * IMAGENET_DEFAULT_MEAN), BICUBIC). This script
loads utils/auto_augment.py by file path (it imports only math, random, re, numpy and PIL: no
torch) and records, into tests/fixtures/official/randaugment.npz and .json:

* each op of the increasing set (`_RAND_INCREASING_TRANSFORMS`) through `AugmentOp.__call__` on
  two 24x32 images (smooth + noise; one with a constant channel and one whose histogram takes
  ImageOps' "no change" paths) at magnitudes 0, 4.5, 9, 9.73, 10, both signs. `random.random` is
  replaced by a script: 0.0 for the probability check (the op runs), then 0.1 (keep the sign) or
  0.9 (negate). How many values each op takes tells which ops draw a sign;
* the level -> argument table of every RandAugment op (both sets) on a magnitude grid;
* what `rand_augment_transform` makes of a few policy strings (or the exception it raises);
* three full `RandAugment.__call__`s on a 64x64 image with `random.random`, `random.gauss` and
  `np.random.choice` wrapped to record every value they return, from seeds picked so that the
  three cover a skipped op, two applied ops and a magnitude clipped at 10.

Run from the repository root, under Pillow 9.5 (the official code's era; the file was made with
9.5.0, and 12.1.1 writes the same .npz), in a throwaway environment outside the repository:

    python3.11 -m venv /tmp/pil95 && /tmp/pil95/bin/pip install pillow==9.5.0 numpy
    /tmp/pil95/bin/python tests/official/make_randaugment_fixtures.py --official /path/to/MultiMAE

Pillow >= 13 cannot run it: the official PosterizeIncreasing keeps 0 bits at magnitude 10, which
Pillow 13's ImageOps.posterize refuses (Pillow <= 12 gives all zeros).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

from npz_writer import save_npz

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parents[0] / "fixtures" / "official"
SIZE_LIMIT = 250_000  # bytes, .npz + .json: the fixtures share a 12 MB budget

MAGNITUDES = (0.0, 4.5, 9.0, 9.73, 10.0)
SIGN_UNIFORMS = (0.1, 0.9)  # what `_randomly_negate` gets: keep, negate
LEVEL_MAGNITUDES = np.round(np.arange(0, 10.0001, 0.05), 2)  # hits every int() step of the levels
POLICY = "rand-m9-mstd0.5-inc1"
PARSE_STRINGS = (
    "rand-m9-mstd0.5-inc1", "rand-m9-mstd0.5-inc0", "rand-m9-mstd0.5", "rand-m9-inc",
    "rand", "rand-n3-m7-mstd101", "rand-m9-mmax12-mstd1", "rand-m9-mmax0", "rand-m9-w0-inc1",
    "rand-mstd0.5-mstd2-m5-m9", "rand-m9.5", "rand-x9", "rand-w1", "augmix-m9", "randm9",
)


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hparams(constants) -> dict:
    """utils/transforms_factory.py: transforms_imagenet_train's aa_params at img_size 224 with the
    fine-tuning's mean and `--train_interpolation bicubic`."""
    return dict(translate_const=int(224 * 0.45),
                img_mean=tuple(min(255, round(255 * x)) for x in constants.IMAGENET_DEFAULT_MEAN),
                interpolation=Image.BICUBIC)


def _smooth(rng, h, w):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([30 + 190 * x / w, 20 + 200 * y / h,
                     128 + 90 * np.sin(x / 5) * np.cos(y / 4)], axis=-1)
    return np.clip(np.round(base) + rng.integers(-4, 5, base.shape), 0, 255).astype(np.uint8)


def _images() -> np.ndarray:
    """(2, 24, 32, 3) uint8. The second: green constant (autocontrast and equalize leave such a
    channel alone), blue 200 but for 100 pixels of 30 (equalize's step is 0 with fewer than 255
    pixels off the top value: no change), red smooth + noise."""
    rng = np.random.default_rng(0)
    first = _smooth(rng, 24, 32)
    second = _smooth(rng, 24, 32)
    second[..., 1] = 77
    blue = np.full(24 * 32, 200, np.uint8)
    blue[rng.choice(blue.size, 100, replace=False)] = 30
    second[..., 2] = blue.reshape(24, 32)
    return np.stack([first, second])


@contextlib.contextmanager
def _patched(obj, **attrs):
    saved = {k: getattr(obj, k) for k in attrs}
    for k, v in attrs.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(obj, k, v)


def _scripted(values):
    """A `random.random` returning `values` in turn; `.used` counts the calls."""
    queue = list(values)

    def fn():
        fn.used += 1
        return queue.pop(0)
    fn.used = 0
    return fn


def _no_gauss(*_):
    raise AssertionError("random.gauss called without magnitude_std")


def op_outputs(aa, hparams, images):
    """(images, ops, magnitudes, signs, H, W, 3) outputs and {op: draws a sign}."""
    names = aa._RAND_INCREASING_TRANSFORMS
    out = np.zeros((len(images), len(names), len(MAGNITUDES), 2) + images.shape[1:], np.uint8)
    signed = {}
    for i, image in enumerate(images):
        for j, name in enumerate(names):
            for k, magnitude in enumerate(MAGNITUDES):
                for s, sign_u in enumerate(SIGN_UNIFORMS):
                    op = aa.AugmentOp(name, prob=0.5, magnitude=magnitude, hparams=hparams)
                    rand = _scripted([0.0, sign_u])
                    with _patched(random, random=rand, gauss=_no_gauss):
                        out[i, j, k, s] = np.asarray(op(Image.fromarray(image)))
                    signed.setdefault(name, rand.used == 2)
                    assert signed[name] == (rand.used == 2), name
    return out, signed


def _op_names(aa) -> list[str]:
    return list(dict.fromkeys(aa._RAND_TRANSFORMS + aa._RAND_INCREASING_TRANSFORMS))


def level_table(aa, hparams):
    """(ops, magnitudes, signs) float64 argument (NaN: none), and per op its argument type."""
    names = _op_names(aa)
    table = np.full((len(names), len(LEVEL_MAGNITUDES), 2), np.nan)
    types = {}
    for j, name in enumerate(names):
        fn = aa.LEVEL_TO_ARG[name]
        for k, magnitude in enumerate(LEVEL_MAGNITUDES):
            for s, sign_u in enumerate(SIGN_UNIFORMS):
                with _patched(random, random=_scripted([sign_u])):
                    args = fn(float(magnitude), hparams) if fn is not None else ()
                assert len(args) <= 1, (name, args)
                if args:
                    table[j, k, s] = args[0]
                types[name] = type(args[0]).__name__ if args else None
    return names, table, types


def parses(aa, hparams):
    """{string: the transform's settings, or {'error': exception type}}."""
    by_fns = {(aa.NAME_TO_OP[k], aa.LEVEL_TO_ARG[k]): k for k in aa.NAME_TO_OP}
    result = {}
    for string in PARSE_STRINGS:
        try:
            ra = aa.rand_augment_transform(string, dict(hparams))
        except Exception as err:  # noqa: BLE001 -- recording what the official code raises
            result[string] = {"error": type(err).__name__}
            continue
        op = ra.ops[0]
        std = op.magnitude_std
        weights = ra.choice_weights
        result[string] = {
            "ops": [by_fns[(o.aug_fn, o.level_fn)] for o in ra.ops],
            "num_ops": ra.num_layers, "magnitude": float(op.magnitude),
            "magnitude_std": "inf" if std == float("inf") else float(std),
            "magnitude_max": op.magnitude_max,
            "prob": op.prob, "choice_weights": None if weights is None else list(weights),
        }
        assert all((o.magnitude, o.magnitude_std, o.magnitude_max, o.prob)
                   == (op.magnitude, std, op.magnitude_max, op.prob) for o in ra.ops)
    return result


def _recorded_call(aa, ra, image, seed):
    """One RandAugment call from `seed` with every random value recorded, per drawn op."""
    log = []
    real_random, real_gauss, real_choice = random.random, random.gauss, np.random.choice
    real_call = aa.AugmentOp.__call__

    def rec_random():
        log.append(("random", real_random()))
        return log[-1][1]

    def rec_gauss(mu, sigma):
        log.append(("gauss", real_gauss(mu, sigma)))
        return log[-1][1]

    def rec_choice(ops, *args, **kwargs):
        chosen = real_choice(ops, *args, **kwargs)
        log.append(("choice", [next(i for i, o in enumerate(ra.ops) if o is c) for c in chosen]))
        return chosen

    def rec_call(op, img):
        log.append(("op", None))  # where each op's values start
        return real_call(op, img)

    random.seed(seed)
    np.random.seed(seed)
    with _patched(random, random=rec_random, gauss=rec_gauss), \
            _patched(np.random, choice=rec_choice), _patched(aa.AugmentOp, __call__=rec_call):
        out = np.asarray(ra(Image.fromarray(image)))
    (kind, index), *rest = log
    assert kind == "choice"
    per_op = []
    for event in rest:
        if event[0] == "op":
            per_op.append([])
        else:
            per_op[-1].append(event)
    draws = {"op_indices": index, "apply_uniform": [], "magnitude_sample": [],
             "sign_uniform": []}
    for events in per_op:
        kinds = [k for k, _ in events]
        assert kinds in (["random"], ["random", "gauss"], ["random", "gauss", "random"]), kinds
        values = [v for _, v in events] + [float("nan")] * (3 - len(events))
        for key, value in zip(("apply_uniform", "magnitude_sample", "sign_uniform"), values):
            draws[key].append(value)
    return out, draws


def full_calls(aa, hparams, image):
    """Three recorded calls of the fine-tuning policy; the first seeds (from 0) where: both ops
    run, one with a sign; an op is skipped and one runs; an op's magnitude sample exceeds 10."""
    ra = aa.rand_augment_transform(POLICY, dict(hparams))
    signed = {i for i, o in enumerate(ra.ops) if o.level_fn in (
        aa._rotate_level_to_arg, aa._enhance_increasing_level_to_arg, aa._shear_level_to_arg,
        aa._translate_rel_level_to_arg)}
    wanted = [
        lambda d: (np.all(np.array(d["apply_uniform"]) <= 0.5)
                   and any(i in signed for i in d["op_indices"])),
        lambda d: (np.any(np.array(d["apply_uniform"]) > 0.5)
                   and np.any(np.array(d["apply_uniform"]) <= 0.5)),
        lambda d: np.nanmax(np.array(d["magnitude_sample"], dtype=float), initial=0) > 10,
    ]
    seeds, outs, draws = [], [], []
    for want in wanted:
        seed = 0
        while True:
            out, drawn = _recorded_call(aa, ra, image, seed)
            if want(drawn):
                break
            seed += 1
        seeds.append(seed)
        outs.append(out)
        draws.append(drawn)
    return seeds, np.stack(outs), draws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True,
                        help="checkout of the official MultiMAE (EPFL-VILAB/MultiMAE)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if tuple(int(p) for p in PIL.__version__.split(".")[:2]) >= (13, 0):
        raise SystemExit(f"Pillow {PIL.__version__}: run under Pillow <= 12 (made with 9.5.0); "
                         "Pillow 13 refuses the official posterize to 0 bits")
    source = args.official / "utils" / "auto_augment.py"
    aa = _load(source, "official_auto_augment")
    hparams = _hparams(_load(args.official / "utils" / "data_constants.py", "official_constants"))

    images = _images()
    outputs, signed = op_outputs(aa, hparams, images)
    level_names, levels, arg_types = level_table(aa, hparams)
    call_image = _smooth(np.random.default_rng(1), 64, 64)
    seeds, call_outputs, draws = full_calls(aa, hparams, call_image)

    arrays = {
        "images": images, "op_outputs": outputs, "magnitudes": np.array(MAGNITUDES),
        "sign_uniforms": np.array(SIGN_UNIFORMS),
        "level_magnitudes": LEVEL_MAGNITUDES, "level_args": levels,
        "call_image": call_image, "call_outputs": call_outputs,
    }
    for key in ("op_indices", "apply_uniform", "magnitude_sample", "sign_uniform"):
        arrays[f"call_{key}"] = np.array([d[key] for d in draws],
                                         dtype=np.int64 if key == "op_indices" else np.float64)
    meta = {
        "made_by": "tests/official/make_randaugment_fixtures.py",
        "pillow": PIL.__version__,
        "official_file": "utils/auto_augment.py",
        "official_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "hparams": {**hparams, "interpolation": "bicubic"},
        "op_names": list(aa._RAND_INCREASING_TRANSFORMS),
        "op_outputs_axes": ["image", "op", "magnitude", "sign (0 keep, 1 negate)", "H", "W", "C"],
        "signed": signed,
        "level_names": level_names,
        "level_arg_types": arg_types,
        "policy": POLICY,
        "call_seeds": seeds,
        "parses": parses(aa, hparams),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    npz, meta_path = args.out / "randaugment.npz", args.out / "randaugment.json"
    save_npz(npz, arrays)
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    size = npz.stat().st_size + meta_path.stat().st_size
    print(f"wrote {npz} + .json ({size / 1024:.0f} KB) with Pillow {PIL.__version__}")
    if size > SIZE_LIMIT:
        raise SystemExit(f"randaugment fixture is {size} bytes, over {SIZE_LIMIT}")


if __name__ == "__main__":
    main()
