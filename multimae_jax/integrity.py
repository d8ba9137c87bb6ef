"""Checks that a train state is what it should be: a checksum per array (written with every
checkpoint, verified at restore) and finiteness.

The checksum of an array x with n elements, read as unsigned integers b_i of its own width, is
sum_i b_i * (2 i + 1) * 0x9E3779B1 mod 2**32. Integer sums are exact and order-free, so it is
the same on any mesh or process count (computed sharded, never gathered), and the odd weights
make any single changed element change it; the position weights catch swapped elements.
"""
import jax
import jax.numpy as jnp
import numpy as np

_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def path_name(path) -> str:
    """'a/b/c' of a tree path: the name checkpoints record per array."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _checksum(x) -> jax.Array:
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    if x.dtype.itemsize not in _UINT:
        raise TypeError(f"no checksum for {x.dtype} arrays")
    bits = jax.lax.bitcast_convert_type(x, _UINT[x.dtype.itemsize]).astype(jnp.uint32)
    index = jnp.zeros(x.shape, jnp.uint32)
    for axis in range(x.ndim):  # row-major flat index, built without a reshape
        index = index * jnp.uint32(x.shape[axis]) + jax.lax.broadcasted_iota(
            jnp.uint32, x.shape, axis)
    weights = (index * jnp.uint32(2) + jnp.uint32(1)) * jnp.uint32(0x9E3779B1)
    return jnp.sum(bits * weights, dtype=jnp.uint32)


@jax.jit
def checksums(tree) -> dict:
    """{'a/b/c': uint32 checksum} of every array in `tree` (sharded jax.Arrays or numpy)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_name(p): _checksum(x) for p, x in flat}


def host_checksums(tree) -> dict:
    """`checksums` as plain ints (what a checkpoint records). Host (numpy) arrays are summed on
    the CPU (one of this process's: another process's device is not addressable), never copied
    to an accelerator."""
    on_host = all(isinstance(x, np.ndarray) for x in jax.tree.leaves(tree))
    with jax.default_device(jax.local_devices(backend="cpu")[0] if on_host else None):
        return {k: int(v) for k, v in jax.device_get(checksums(tree)).items()}


def mismatches(tree, expected: dict) -> list[str]:
    """Paths of arrays of `tree` whose checksum differs from `expected` (or that it lacks)."""
    got = host_checksums(tree)
    return [k for k, v in got.items() if expected.get(k) != v]


@jax.jit
def _non_finite(tree) -> dict:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_name(p): ~jnp.all(jnp.isfinite(x))
            for p, x in flat if jnp.issubdtype(x.dtype, jnp.inexact)}


def non_finite(tree) -> list[str]:
    """Paths of the floating-point arrays of `tree` holding a NaN or an infinity."""
    return [k for k, bad in jax.device_get(_non_finite(tree)).items() if bool(np.asarray(bad))]

