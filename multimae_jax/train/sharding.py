"""Device mesh and sharding rules (big_vision / MaxText style).

The mesh has a 'data' and an 'fsdp' axis; the batch is split over both. Parameters and optimizer
state are replicated, or (FSDP) split over 'fsdp' along their largest dimension divisible by the
axis size when they have at least `fsdp_min_size` elements. Nothing is ever created whole on one
device: the state is initialised by a jitted function with these output shardings.
"""
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")


def mesh_shape(spec: dict, num_devices: int) -> tuple[int, int]:
    """{'data': d, 'fsdp': f} with at most one -1 (filled with the remaining devices)."""
    sizes = [int(spec.get(a, 1)) for a in AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(zip(AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"config.mesh: {num_devices} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"config.mesh: {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, "
                         f"there are {num_devices}")
    return tuple(sizes)


def make_mesh(spec: dict, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(spec, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device."""
    return NamedSharding(mesh, P(AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _fsdp_spec(shape, fsdp_size: int, min_size: int) -> P:
    if fsdp_size == 1 or math.prod(shape) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def state_shardings(abstract_state, mesh: Mesh, fsdp_min_size: int = 2 ** 18):
    """A NamedSharding for every leaf of an abstract (jax.eval_shape) state tree."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(
        lambda leaf: NamedSharding(mesh, _fsdp_spec(leaf.shape, fsdp, fsdp_min_size)),
        abstract_state)
