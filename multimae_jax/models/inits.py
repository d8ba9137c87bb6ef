"""Initialisers that reproduce the official PyTorch initialisation
(`multimae/multimae.py: MultiMAE.__init__`, which re-initialises every Linear and patch Conv).

Flax kernels are laid out (in, out) for Dense and (kh, kw, in / groups, out) for Conv, so fans are
computed from those layouts here.
"""
import math

import jax
import jax.numpy as jnp
import flax.linen as nn

#: `nn.Linear` after MultiMAE's global re-init: xavier-uniform weight (fans in and out of the matrix).
xavier_uniform = nn.initializers.xavier_uniform()

#: Patch-embedding convs (names containing '.proj'): xavier over the weight viewed as (out, in*kh*kw).
patch_conv_kernel = nn.initializers.variance_scaling(
    1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=-1)

#: PyTorch's default conv init, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)).
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def split_xavier_uniform(num_splits: int):
    """Xavier-uniform for a fused Dense (qkv: 3, kv: 2) treated as `num_splits` separate matrices.

    The official code uses bound sqrt(6 / (out / num_splits + in)).
    """
    def init(key, shape, dtype=jnp.float32):
        fan_in, fan_out = shape
        bound = math.sqrt(6.0 / (fan_out / num_splits + fan_in))
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def torch_default_bias(fan_in: int):
    """PyTorch's default conv / linear bias init: U(+-1/sqrt(fan_in))."""
    def init(key, shape, dtype=jnp.float32):
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def trunc_normal_02(key, shape, dtype=jnp.float32):
    """The official trunc_normal_(std=0.02) truncates at +-2 *absolute*, i.e. at +-100 sigma."""
    return 0.02 * jax.random.truncated_normal(key, -100.0, 100.0, shape, dtype)
