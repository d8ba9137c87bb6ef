"""Sin-cos embeddings and PyTorch-equivalent resizes vs the official outputs (posemb_resize)."""
import jax.numpy as jnp
import numpy as np
import pytest

from multimae_jax.models.posemb import build_2d_sincos_posemb
from multimae_jax.models.resize import resize_bicubic, resize_bilinear

ATOL = 1e-5


def nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("name", ["4x4x64", "14x14x768", "14x14x256"])
def test_sincos_layout(official_npz, name):
    h, w, d = map(int, name.split("x"))
    np.testing.assert_allclose(nchw(build_2d_sincos_posemb(h, w, d)),
                               official_npz("posemb_resize")[f"sincos/{name}"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("size", [16, 24, 32, 40])
def test_bicubic_and_bilinear_upsampling_of_the_14x14_grid(official_npz, size):
    data = official_npz("posemb_resize")
    grid = jnp.asarray(build_2d_sincos_posemb(14, 14, 64))
    np.testing.assert_allclose(nchw(resize_bicubic(grid, (size, size))),
                               data[f"bicubic14to{size}/d64"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(nchw(resize_bilinear(grid, (size, size))),
                               data[f"bilinear14to{size}/d64"], atol=ATOL, rtol=0)


def test_align_corners_upsampling(official_npz):
    data = official_npz("posemb_resize")
    x = jnp.asarray(data["ac_true_in"].transpose(0, 2, 3, 1))
    np.testing.assert_allclose(nchw(resize_bilinear(x, (16, 16), align_corners=True)),
                               data["ac_true_x2"], atol=ATOL, rtol=0)


def test_same_size_resizes_are_the_identity():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 5, 5, 3)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(resize_bicubic(x, (5, 5))), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(resize_bilinear(x, (5, 5))), np.asarray(x))
