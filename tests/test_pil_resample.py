"""pil_resample (PIL's BICUBIC resize in numpy) against PIL, pixel for pixel.

Two references: the installed Pillow, on shapes where every Pillow from 8.4 to 13 computes the
same pixels; and golden files made by the Pillow of the official code
(tests/official/make_pil_fixtures.py), on every case, including those where Pillow 13 differs.
"""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multimae_jax.data.pil_resample import (_coefficients, resize_bicubic_int32,
                                            resize_bicubic_uint8)
from pil_helpers import pass_order_matters_in_pillow13

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "pil"

# (in_h, in_w) -> (out_h, out_w): upscales, downscales, mixed, one axis unchanged, extreme ratios.
LIVE_SHAPES = [((100, 150), (224, 224)), ((300, 400), (224, 224)), ((150, 300), (224, 224)),
               ((250, 330), (224, 224)), ((224, 300), (224, 224)), ((400, 224), (224, 224)),
               ((37, 53), (61, 24)), ((60, 1000), (17, 9)), ((1, 1), (3, 4)), ((5, 7), (5, 7))]


def _pil_size(out_hw):
    return out_hw[1], out_hw[0]


@pytest.mark.parametrize("in_hw,out_hw", LIVE_SHAPES)
@pytest.mark.parametrize("channels", [None, 1, 3])
def test_uint8_equals_installed_pil(in_hw, out_hw, channels):
    assert not pass_order_matters_in_pillow13(in_hw, out_hw)
    rng = np.random.default_rng(in_hw[0] * 1000 + in_hw[1])
    x = rng.integers(0, 256, in_hw + ((channels,) if channels else ()), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(x[..., 0] if channels == 1 else x)
                     .resize(_pil_size(out_hw), Image.BICUBIC))
    out = resize_bicubic_uint8(x, out_hw)
    assert out.dtype == np.uint8 and out.shape == out_hw + x.shape[2:]
    np.testing.assert_array_equal(out.reshape(ref.shape), ref)


@pytest.mark.parametrize("in_hw,out_hw", LIVE_SHAPES)
def test_int32_equals_installed_pil_mode_i(in_hw, out_hw):
    """The official depth path: a 16-bit map as a mode 'I' image."""
    assert not pass_order_matters_in_pillow13(in_hw, out_hw)
    x = np.random.default_rng(in_hw[1]).integers(0, 2 ** 16, in_hw, dtype=np.uint16)
    ref = np.asarray(Image.fromarray(x.astype(np.int32), "I").resize(_pil_size(out_hw),
                                                                     Image.BICUBIC))
    out = resize_bicubic_int32(x, out_hw)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, ref)


def test_int32_is_not_clipped():
    """Upscaling a 0 | 65535 step overshoots on both sides; mode 'I' keeps the overshoot."""
    x = np.zeros((6, 8), np.int32)
    x[:, 4:] = 65535
    ref = np.asarray(Image.fromarray(x, "I").resize((29, 13), Image.BICUBIC))
    out = resize_bicubic_int32(x, (13, 29))
    np.testing.assert_array_equal(out, ref)
    assert out.min() < 0 and out.max() > 65535


def _golden(name):
    data = np.load(GOLDEN / name)
    cases = sorted({k.split("/")[0] for k in data.files if "/" in k})
    return data, cases


@pytest.fixture(scope="module")
def golden():
    return _golden("bicubic_golden.npz")


def test_golden_covers_pillow13_changes(golden):
    data, cases = golden
    assert str(data["pillow_version"]).startswith("9.")
    shapes = [(data[f"{c}/rgb"].shape[:2], tuple(data[f"{c}/size"])) for c in cases]
    assert sum(pass_order_matters_in_pillow13(*s) for s in shapes) >= 4
    assert len(cases) >= 12


def test_uint8_equals_pillow9_golden(golden):
    data, cases = golden
    for case in cases:
        out = resize_bicubic_uint8(data[f"{case}/rgb"], tuple(data[f"{case}/size"]))
        np.testing.assert_array_equal(out, data[f"{case}/rgb_resized"], err_msg=case)


def test_int32_equals_pillow9_golden(golden):
    data, cases = golden
    for case in cases:
        out = resize_bicubic_int32(data[f"{case}/depth"], tuple(data[f"{case}/size"]))
        np.testing.assert_array_equal(out, data[f"{case}/depth_resized_I"], err_msg=case)


@pytest.mark.parametrize("fn,x,size,match", [
    (resize_bicubic_uint8, np.zeros((4, 4), np.uint16), (2, 2), "uint8"),
    (resize_bicubic_uint8, np.zeros((4, 4, 3, 1), np.uint8), (2, 2), "uint8"),
    (resize_bicubic_uint8, np.zeros((4, 4), np.uint8), (0, 2), "positive"),
    (resize_bicubic_int32, np.zeros((4, 4), np.int64), (2, 2), "int32"),
    (resize_bicubic_int32, np.zeros((4, 4, 1), np.int32), (2, 2), "single-channel"),
])
def test_rejects_bad_input(fn, x, size, match):
    with pytest.raises(ValueError, match=match):
        fn(x, size)


def _scalar_weights(n_in, n_out):
    """Resample.c: precompute_coeffs for BICUBIC, one output at a time in plain Python floats."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    rows = []
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in) - xmin
        ws = []
        for x in range(xmax):
            t = abs((x + xmin - center + 0.5) * (1.0 / filterscale))
            ws.append(((1.5 * t - 2.5) * t * t + 1) if t < 1 else
                      ((((t - 5) * t + 8) * t - 4) * -0.5) if t < 2 else 0.0)
        total = 0.0
        for w in ws:
            total += w
        rows.append((xmin, [w / total for w in ws]))
    return rows


@pytest.mark.parametrize("n_in,n_out", [(500, 224), (1000, 9), (150, 224), (7, 7)])
def test_weights_equal_scalar_transcription(n_in, n_out):
    """Bit-exact weights, windows over 8 taps included (where np.sum would pair terms and move
    the last bit; the pixel tests above rarely see that)."""
    index, weight, _ = _coefficients(n_in, n_out)
    for o, (xmin, ws) in enumerate(_scalar_weights(n_in, n_out)):
        assert index[o, 0] == xmin and index[o, len(ws) - 1] == xmin + len(ws) - 1
        assert weight[o, :len(ws)].tolist() == ws and not weight[o, len(ws):].any()
