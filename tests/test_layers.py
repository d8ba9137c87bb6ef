"""Stochastic depth, dropout and mixed precision of the building blocks."""
import jax
import jax.numpy as jnp
import numpy as np

from multimae_jax.models.layers import DropPath
from multimae_jax.models.presets import pretrain_multimae
from multimae_jax.models.spec import example_inputs


def test_drop_path_is_per_sample_and_rescaled():
    x = jnp.ones((1000, 4, 8))
    assert DropPath(0.3).apply({}, x, train=False) is x
    y = np.asarray(DropPath(0.3).apply({}, x, train=True, rngs={"dropout": jax.random.key(0)}))
    per_sample = y.reshape(1000, -1)
    kept = per_sample.min(1) != 0
    np.testing.assert_allclose(per_sample[kept], 1 / 0.7, rtol=1e-6)
    np.testing.assert_array_equal(per_sample.min(1), per_sample.max(1))  # whole samples dropped
    assert 0.25 < (per_sample[:, 0] == 0).mean() < 0.35


def test_bfloat16_compute_keeps_fp32_params_and_the_fp32_semseg_decoder():
    fp32 = pretrain_multimae("base", image_size=64, dim_tokens=64, depth=1, num_heads=4,
                             decoder_dim=32, decoder_depth=1, decoder_num_heads=4,
                             semseg_num_classes=10, dim_class_emb=16)
    bf16 = fp32.clone(dtype=jnp.bfloat16)
    x = example_inputs(fp32, batch=2)
    x["rgb"] = jax.random.normal(jax.random.key(1), x["rgb"].shape)
    init = lambda m: jax.jit(lambda x: m.init(jax.random.key(0), x, mask_inputs=False))(x)
    variables = init(fp32)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(init(bf16)))  # master weights
    run = lambda m: jax.jit(lambda v, x: m.apply(v, x, rngs={"masking": jax.random.key(2)},
                                                 num_encoded_tokens=6)[0])(variables, x)
    ref, low = run(fp32), run(bf16)
    assert low["rgb"].dtype == jnp.bfloat16 and low["semseg"].dtype == jnp.float32
    for t in ref:
        err = np.abs(np.asarray(low[t], np.float32) - np.asarray(ref[t]))
        assert err.max() < 0.02 * np.abs(np.asarray(ref[t])).max() + 0.02, t
