"""RandAugment as the official MultiMAE ImageNet fine-tuning runs it, on the host (numpy + PIL).

The official fine-tuning (run_finetuning_cls.py: `--aa rand-m9-mstd0.5-inc1`, `--train_interpolation
bicubic`) builds timm's RandAugment (vendored in utils/auto_augment.py) through
utils/transforms_factory.py, after RandomResizedCrop and the horizontal flip, on the PIL image:

* `rand-m9-mstd0.5-inc1`: 2 ops per image, drawn with replacement from the 15 "increasing" ops
  (`_RAND_INCREASING_TRANSFORMS`); each op runs with probability 0.5; each op that runs draws its
  own magnitude from N(9, 0.5), clipped to [0, 10]; ops with a direction (rotate, shear,
  translate, the increasing enhancements) flip it with probability 0.5.
* hparams: fill colour of the affine ops round(255 * ImageNet mean) = (124, 116, 104), BICUBIC
  resampling (`hparams_for`).

This module splits that into a draw (`draw`: every random number, from a numpy Generator, so a
data pipeline seeds it per sample) and a deterministic `apply`. `RandAugmentDraw.from_samples`
turns raw uniforms/normals into a draw with the official rules, so the official random stream
(Python's `random` and numpy's global state) can be replayed: tests/test_randaugment.py does that
against fixtures recorded from the official code (tests/official/make_randaugment_fixtures.py).

Every op goes through the same PIL call as the official code, except that posterize builds its
lookup table here (applied with `Image.point`, as ImageOps does): the increasing variant keeps 0
bits at magnitude 10, which Pillow <= 12 maps to all zeros and Pillow 13 rejects (ValueError).
Outputs are byte-identical under Pillow 9.5 (the official code's era), 12.1 and 13.0.

Official quirks kept: 'inc0' also selects the increasing ops (the parser tests `bool('0')`); a
section without a digit ('inc', 'mstd') is ignored (silently, there); the first 'mstd'/'mmax'
wins, the last 'm'/'n'/'w'; 'mmax0' means the default bound 10. `parse_policy` warns about the
first two.
"""
from __future__ import annotations

import dataclasses
import math
import re
import warnings
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from multimae_jax.modalities import IMAGENET_MEAN

_LEVEL_DENOM = 10.0  # magnitude scale: 'm9' is 9 / 10 of each op's range

#: timm's `_RAND_TRANSFORMS` (no 'inc' section), in the official order: the order matters, as a
#: draw picks ops by index.
RAND_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel",
)
#: timm's `_RAND_INCREASING_TRANSFORMS` ('inc' section): what `rand-m9-mstd0.5-inc1` uses.
RAND_INCREASING_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
    "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
    "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
# timm's `_RAND_CHOICE_WEIGHTS_0` ('w0' section), by name of RAND_OPS. The official code looks
# them up for RAND_OPS even with 'inc', so with 'inc' they apply by position (Posterize's weight
# goes to PosterizeIncreasing, ...): the same here.
_CHOICE_WEIGHTS_0 = {
    "Rotate": 0.3, "ShearX": 0.2, "ShearY": 0.2, "TranslateXRel": 0.1, "TranslateYRel": 0.1,
    "Color": .025, "Sharpness": 0.025, "AutoContrast": 0.025, "Solarize": .005,
    "SolarizeAdd": .005, "Contrast": .005, "Brightness": .005, "Equalize": .005, "Posterize": 0,
    "Invert": 0,
}


# --- policy string --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RandAugmentPolicy:
    """A parsed RandAugment policy string (timm's `rand_augment_transform` config).

    num_ops: ops drawn per image ('n', default 2); magnitude: the mean magnitude ('m', default 10,
    on a 0..10 scale); magnitude_std: its noise ('mstd': N(magnitude, std) per applied op; 0 =
    fixed; inf (given as > 100) = uniform in [0, magnitude]); magnitude_max: the clip bound
    ('mmax'; None or 0 = 10); increasing: the op set (RAND_INCREASING_OPS or RAND_OPS);
    prob: each drawn op's probability to run (0.5, fixed in the official code);
    weight_idx: 'w' (only 0): pick ops with timm's weights, without replacement.
    """

    name: str
    num_ops: int = 2
    magnitude: float = _LEVEL_DENOM
    magnitude_std: float = 0.0
    magnitude_max: int | None = None
    increasing: bool = False
    prob: float = 0.5
    weight_idx: int | None = None

    @property
    def ops(self) -> tuple[str, ...]:
        return RAND_INCREASING_OPS if self.increasing else RAND_OPS

    @property
    def choice_weights(self) -> np.ndarray | None:
        """(len(ops),) float64 probabilities of each op for 'w0', else None (uniform)."""
        if self.weight_idx is None:
            return None
        weights = np.array([_CHOICE_WEIGHTS_0[k] for k in RAND_OPS])
        return weights / np.sum(weights)

    @property
    def magnitude_bound(self) -> float:
        # The official `self.magnitude_max or _LEVEL_DENOM`: 'mmax0' falls back to 10 as well.
        return self.magnitude_max or _LEVEL_DENOM

    def clip_magnitude(self, value: float) -> float:
        """A sampled magnitude clipped to [0, magnitude_bound], as `AugmentOp.__call__`."""
        return max(0., min(float(value), self.magnitude_bound))


def parse_policy(name: str) -> RandAugmentPolicy:
    """Parse a timm RandAugment string such as 'rand-m9-mstd0.5-inc1', as the official parser does.

    Sections after 'rand' are a key and the value from its first digit on ('mstd0.5' ->
    'mstd', '0.5'). Raises ValueError, naming the string, where the official code raises
    (AssertionError or ValueError): not 'rand', unknown key, bad number, 'w' other than 0.
    """
    def bad(why: str) -> ValueError:
        return ValueError(f"RandAugment policy {name!r}: {why} (expected e.g. "
                          "'rand-m9-mstd0.5-inc1'; sections: m<int>, n<int>, mstd<float>, "
                          "mmax<int>, inc<int>, w0)")

    if not isinstance(name, str):
        raise TypeError(f"RandAugment policy must be a string, got {type(name).__name__}")
    head, *sections = name.split("-")
    if head != "rand":
        raise bad(f"must start with 'rand' (got {head!r})")

    def number(conv, section: str, val: str):
        try:
            return conv(val)
        except ValueError:
            raise bad(f"section {section!r}: {val!r} is not a valid {conv.__name__}") from None

    fields: dict = {}
    for section in sections:
        parts = re.split(r"(\d.*)", section)
        if len(parts) < 2:
            warnings.warn(f"RandAugment policy {name!r}: section {section!r} has no number and is "
                          "ignored, as the official parser does", stacklevel=2)
            continue
        key, val = parts[:2]
        if key == "mstd":
            std = number(float, section, val)
            # setdefault, as the official code keeps it in hparams: the first 'mstd' wins
            fields.setdefault("magnitude_std", math.inf if std > 100 else std)
        elif key == "mmax":
            fields.setdefault("magnitude_max", number(int, section, val))
        elif key == "inc":
            # The official `if bool(val)`: val is a non-empty string, so always true.
            if re.fullmatch(r"0+(\.0*)?", val):
                warnings.warn(f"RandAugment policy {name!r}: {section!r} selects the increasing "
                              "ops too (the official parser tests bool('0'), which is true)",
                              stacklevel=2)
            fields["increasing"] = True
        elif key == "m":
            fields["magnitude"] = float(number(int, section, val))
        elif key == "n":
            fields["num_ops"] = number(int, section, val)
        elif key == "w":
            fields["weight_idx"] = number(int, section, val)
        else:
            raise bad(f"unknown section {section!r}")
    if fields.get("weight_idx", 0) != 0:
        raise bad("only the weights 'w0' exist")
    return RandAugmentPolicy(name=name, **fields)


# --- hparams --------------------------------------------------------------------------------------

_INTERPOLATIONS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR,
                   "bicubic": Image.BICUBIC}


@dataclasses.dataclass(frozen=True)
class RandAugmentHparams:
    """What the ops read besides their level: the fill colour of rotate/shear/translate (uint8
    RGB), their resampling filter, and the range of TranslateXRel/YRel as a fraction of the image.

    The official hparams also carry translate_const=int(224 * 0.45); only the absolute-pixel
    TranslateX/Y read it, and no RandAugment op set contains them, so it is left out here.
    """

    img_mean: tuple[int, int, int] = (124, 116, 104)
    interpolation: str = "bicubic"
    translate_pct: float = 0.45

    def __post_init__(self):
        if self.interpolation not in _INTERPOLATIONS:
            # timm's 'random' picks the filter per op with Python's `random`: not a fixed op.
            raise ValueError(f"RandAugment interpolation {self.interpolation!r}: one of "
                             f"{sorted(_INTERPOLATIONS)}")
        if len(self.img_mean) != 3:
            raise ValueError(f"img_mean must be 3 uint8 values, got {self.img_mean}")


def hparams_for(mean: Sequence[float] = IMAGENET_MEAN,
                interpolation: str = "bicubic") -> RandAugmentHparams:
    """The official hparams (utils/transforms_factory.py: transforms_imagenet_train): fill colour
    min(255, round(255 * mean)) per channel. The fine-tuning defaults give (124, 116, 104) and
    BICUBIC."""
    return RandAugmentHparams(img_mean=tuple(min(255, round(255 * x)) for x in mean),
                              interpolation=interpolation)


FINETUNE_POLICY = "rand-m9-mstd0.5-inc1"  # run_finetuning_cls.py: --aa default
FINETUNE_HPARAMS = hparams_for()


# --- level -> op arguments ------------------------------------------------------------------------
# Each function maps (magnitude, negate, hparams) to the op's arguments with the official
# arithmetic, operation for operation (the float results must match to the bit). `negate` is used
# only by the ops the official code passes through `_randomly_negate`.

def _rotate_level(level, negate, _hp):
    level = (level / _LEVEL_DENOM) * 30.  # degrees, [-30, 30]
    return (-level if negate else level),


def _enhance_level(level, _negate, _hp):
    return (level / _LEVEL_DENOM) * 1.8 + 0.1,  # blend factor, [0.1, 1.9]


def _enhance_increasing_level(level, negate, _hp):
    # 1.0 is 'no change'; the sign moves away from it towards 0.1 or 1.9
    level = (level / _LEVEL_DENOM) * .9
    return max(0.1, 1.0 + (-level if negate else level)),


def _shear_level(level, negate, _hp):
    level = (level / _LEVEL_DENOM) * 0.3  # shear factor, [-0.3, 0.3]
    return (-level if negate else level),


def _translate_rel_level(level, negate, hp):
    level = (level / _LEVEL_DENOM) * hp.translate_pct  # fraction of the width/height
    return (-level if negate else level),


def _posterize_level(level, _negate, _hp):
    return int((level / _LEVEL_DENOM) * 4),  # bits kept, 0..4: severity decreases with level


def _posterize_increasing_level(level, _negate, _hp):
    return 4 - int((level / _LEVEL_DENOM) * 4),  # bits kept, 4..0


def _solarize_level(level, _negate, _hp):
    return int((level / _LEVEL_DENOM) * 256),  # threshold, 0..256


def _solarize_increasing_level(level, _negate, _hp):
    return 256 - int((level / _LEVEL_DENOM) * 256),  # threshold, 256..0


def _solarize_add_level(level, _negate, _hp):
    return int((level / _LEVEL_DENOM) * 110),  # added below 128, 0..110


def _no_level(_level, _negate, _hp):
    return ()


# --- ops ------------------------------------------------------------------------------------------

def _lut(img: Image.Image, table: np.ndarray) -> Image.Image:
    """A (256,) uint8 lookup table applied to every channel, as ImageOps' own point LUTs."""
    return img.point(np.tile(table.astype(np.int64), 3).tolist())


def _posterize(img, bits, _hp):
    if bits >= 8:
        return img
    # ImageOps.posterize's table, done here: with bits == 0 it is all zeros, which Pillow < 13
    # computes and Pillow 13 refuses to (bits must be 1..8).
    return _lut(img, np.arange(256) & ~(2 ** (8 - bits) - 1))


def _solarize_add(img, add, _hp, thresh=128):
    x = np.arange(256)
    return _lut(img, np.where(x < thresh, np.minimum(255, x + add), x))


def _affine(img, matrix, hp):
    return img.transform(img.size, Image.AFFINE, matrix, resample=_INTERPOLATIONS[hp.interpolation],
                         fillcolor=tuple(hp.img_mean))


def _enhance(cls):
    return lambda img, factor, _hp: cls(img).enhance(factor)


@dataclasses.dataclass(frozen=True)
class _Op:
    level: Callable  # (magnitude, negate, hparams) -> args tuple
    apply: Callable  # (PIL image, *args, hparams) -> PIL image
    signed: bool  # whether the official level function draws a sign (`_randomly_negate`)


#: Every op of RAND_OPS and RAND_INCREASING_OPS: (level function, PIL op, signed).
OPS: dict[str, _Op] = {
    "AutoContrast": _Op(_no_level, lambda img, _hp: ImageOps.autocontrast(img), False),
    "Equalize": _Op(_no_level, lambda img, _hp: ImageOps.equalize(img), False),
    "Invert": _Op(_no_level, lambda img, _hp: ImageOps.invert(img), False),
    "Rotate": _Op(_rotate_level, lambda img, deg, hp: img.rotate(
        deg, resample=_INTERPOLATIONS[hp.interpolation], fillcolor=tuple(hp.img_mean)), True),
    "Posterize": _Op(_posterize_level, _posterize, False),
    "PosterizeIncreasing": _Op(_posterize_increasing_level, _posterize, False),
    "Solarize": _Op(_solarize_level, lambda img, t, _hp: ImageOps.solarize(img, t), False),
    "SolarizeIncreasing": _Op(_solarize_increasing_level,
                              lambda img, t, _hp: ImageOps.solarize(img, t), False),
    "SolarizeAdd": _Op(_solarize_add_level, _solarize_add, False),
    "Color": _Op(_enhance_level, _enhance(ImageEnhance.Color), False),
    "ColorIncreasing": _Op(_enhance_increasing_level, _enhance(ImageEnhance.Color), True),
    "Contrast": _Op(_enhance_level, _enhance(ImageEnhance.Contrast), False),
    "ContrastIncreasing": _Op(_enhance_increasing_level, _enhance(ImageEnhance.Contrast), True),
    "Brightness": _Op(_enhance_level, _enhance(ImageEnhance.Brightness), False),
    "BrightnessIncreasing": _Op(_enhance_increasing_level, _enhance(ImageEnhance.Brightness),
                                True),
    "Sharpness": _Op(_enhance_level, _enhance(ImageEnhance.Sharpness), False),
    "SharpnessIncreasing": _Op(_enhance_increasing_level, _enhance(ImageEnhance.Sharpness), True),
    # PIL's AFFINE data maps output (x, y) to input (a x + b y + c, d x + e y + f)
    "ShearX": _Op(_shear_level, lambda img, f, hp: _affine(img, (1, f, 0, 0, 1, 0), hp), True),
    "ShearY": _Op(_shear_level, lambda img, f, hp: _affine(img, (1, 0, 0, f, 1, 0), hp), True),
    "TranslateXRel": _Op(_translate_rel_level, lambda img, pct, hp: _affine(
        img, (1, 0, pct * img.size[0], 0, 1, 0), hp), True),
    "TranslateYRel": _Op(_translate_rel_level, lambda img, pct, hp: _affine(
        img, (1, 0, 0, 0, 1, pct * img.size[1]), hp), True),
}


def level_args(name: str, magnitude: float, negate: bool = False,
               hparams: RandAugmentHparams = FINETUNE_HPARAMS) -> tuple:
    """The arguments op `name` gets at `magnitude` (already clipped) and sign: () or (value,)."""
    return OPS[name].level(magnitude, negate, hparams)


# --- draw and apply -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RandAugmentDraw:
    """Everything random about one image's RandAugment: per drawn op (all tuples of num_ops),
    its name, whether it runs, its (clipped) magnitude and whether its direction is flipped
    (ignored by ops without one)."""

    ops: tuple[str, ...]
    applied: tuple[bool, ...]
    magnitudes: tuple[float, ...]
    negate: tuple[bool, ...]

    def __post_init__(self):
        n = len(self.ops)
        if not len(self.applied) == len(self.magnitudes) == len(self.negate) == n:
            raise ValueError(f"RandAugmentDraw: ops, applied, magnitudes, negate differ in length "
                             f"({n}, {len(self.applied)}, {len(self.magnitudes)}, "
                             f"{len(self.negate)})")
        unknown = [k for k in self.ops if k not in OPS]
        if unknown:
            raise ValueError(f"RandAugmentDraw: unknown op(s) {unknown}; known: {sorted(OPS)}")

    @classmethod
    def from_samples(cls, policy: RandAugmentPolicy, op_indices: Sequence[int],
                     apply_uniform: Sequence[float], magnitude_sample: Sequence[float],
                     sign_uniform: Sequence[float]) -> "RandAugmentDraw":
        """A draw from raw random numbers (each of length num_ops), with the official rules
        (RandAugment.__call__, AugmentOp.__call__, _randomly_negate): op k is policy.ops[index];
        it is skipped when prob < 1 and its uniform > prob; its magnitude is the sample (a
        normal or uniform; ignored when magnitude_std is 0) clipped to [0, bound]; its direction
        flips when its sign uniform > 0.5."""
        ops = tuple(policy.ops[int(i)] for i in op_indices)
        applied = tuple(bool(policy.prob >= 1.0 or u <= policy.prob) for u in apply_uniform)
        if policy.magnitude_std > 0:
            mags = tuple(policy.clip_magnitude(m) for m in magnitude_sample)
        else:
            mags = (policy.clip_magnitude(policy.magnitude),) * len(ops)
        return cls(ops, applied, mags, tuple(bool(u > 0.5) for u in sign_uniform))


def draw(policy: RandAugmentPolicy | str, rng: np.random.Generator) -> RandAugmentDraw:
    """Draw one image's RandAugment from `rng` alone (no global random state).

    Same distributions as the official code; not its random stream (that one comes from Python's
    `random` and numpy's global state). Every call takes the same amount of randomness from `rng`
    (values for skipped ops are drawn and ignored), whatever is skipped.
    """
    if isinstance(policy, str):
        policy = parse_policy(policy)
    n = policy.num_ops
    weights = policy.choice_weights
    # the official np.random.choice(ops, n, replace=weights is None, p=weights)
    index = rng.choice(len(policy.ops), n, replace=weights is None, p=weights)
    apply_u = rng.random(n)
    if policy.magnitude_std == math.inf:
        mags = rng.uniform(0.0, policy.magnitude, n)  # random.uniform(0, magnitude)
    else:
        mags = rng.normal(policy.magnitude, max(policy.magnitude_std, 0.0), n)
    sign_u = rng.random(n)
    return RandAugmentDraw.from_samples(policy, index, apply_u, mags, sign_u)


def apply(image: np.ndarray, drawn: RandAugmentDraw,
          hparams: RandAugmentHparams = FINETUNE_HPARAMS) -> np.ndarray:
    """Apply a draw's ops in order to a uint8 RGB image (H, W, 3); returns a new uint8 (H, W, 3)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"RandAugment needs a uint8 (H, W, 3) image, got {image.dtype} "
                         f"{image.shape}")
    img = Image.fromarray(np.ascontiguousarray(image))
    for name, applied, magnitude, negate in zip(drawn.ops, drawn.applied, drawn.magnitudes,
                                                drawn.negate):
        if applied:
            op = OPS[name]
            img = op.apply(img, *op.level(magnitude, negate, hparams), hparams)
    return np.array(img)


def rand_augment(image: np.ndarray, rng: np.random.Generator,
                 policy: RandAugmentPolicy | str = FINETUNE_POLICY,
                 hparams: RandAugmentHparams = FINETUNE_HPARAMS) -> np.ndarray:
    """draw + apply: one image (H, W, 3) uint8 through RandAugment."""
    return apply(image, draw(policy, rng), hparams)
