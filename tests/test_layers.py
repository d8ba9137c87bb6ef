"""Stochastic depth of the building blocks (mixed precision: test_precision.py)."""
import jax
import jax.numpy as jnp
import numpy as np

from multimae_jax.models.layers import DropPath


def test_drop_path_is_per_sample_and_rescaled():
    x = jnp.ones((1000, 4, 8))
    assert DropPath(0.3).apply({}, x, train=False) is x
    y = np.asarray(DropPath(0.3).apply({}, x, train=True, rngs={"dropout": jax.random.key(0)}))
    per_sample = y.reshape(1000, -1)
    kept = per_sample.min(1) != 0
    np.testing.assert_allclose(per_sample[kept], 1 / 0.7, rtol=1e-6)
    np.testing.assert_array_equal(per_sample.min(1), per_sample.max(1))  # whole samples dropped
    assert 0.25 < (per_sample[:, 0] == 0).mean() < 0.35

