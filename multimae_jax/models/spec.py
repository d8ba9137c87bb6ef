"""Models as JSON-able specs: {'class': name, field: value, ...}, adapters nested.

Checkpoints store the spec beside the weights, so a checkpoint rebuilds its own model.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from multimae_jax.models import dense_heads, input_adapters, multimae, output_adapters, probe

_CLASSES = {cls.__name__: cls for cls in (
    multimae.MultiMAE, multimae.MultiViT,
    input_adapters.PatchedInputAdapter, input_adapters.SemSegInputAdapter,
    output_adapters.SpatialOutputAdapter, output_adapters.LinearOutputAdapter,
    dense_heads.ConvNeXtAdapter, dense_heads.DPTOutputAdapter, probe.LinearProbeHead)}


def _encode(value):
    if isinstance(value, nn.Module):
        return to_spec(value)
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    if isinstance(value, (type, np.dtype)):  # dtypes: jnp.float32, np.dtype('bfloat16'), ...
        return {"dtype": jnp.dtype(value).name}
    return value


def _decode(value):
    if isinstance(value, dict) and "class" in value:
        return from_spec(value)
    if isinstance(value, dict) and set(value) == {"dtype"}:
        return jnp.dtype(value["dtype"])
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_decode(v) for v in value)
    return value


#: Fields that choose how a model computes, not what: a spec leaves them out, so that a
#: checkpoint trained with cuDNN attention (GPU only) or scanned blocks loads anywhere.
COMPUTE_FIELDS = ("attention", "scan_blocks", "gather_grad")


def to_spec(module: nn.Module) -> dict:
    """A model or adapter -> nested dict of its constructor fields (less `COMPUTE_FIELDS`)."""
    fields = {f.name: _encode(getattr(module, f.name)) for f in dataclasses.fields(module)
              if f.init and f.name not in ("parent", "name", *COMPUTE_FIELDS)}
    return {"class": type(module).__name__, **fields}


def from_spec(spec: dict) -> nn.Module:
    """Inverse of `to_spec`."""
    spec = dict(spec)
    name = spec.pop("class")
    if name not in _CLASSES:
        raise ValueError(f"model spec: unknown class '{name}'; known: {sorted(_CLASSES)}")
    return _CLASSES[name](**{k: _decode(v) for k, v in spec.items()})


def example_inputs(model: nn.Module, batch: int = 1) -> dict:
    """Zero inputs of the model's native size for every input adapter (for init / eval_shape)."""
    out = {}
    for task, adapter in model.input_adapters.items():
        h, w = input_adapters.pair(adapter.image_size)
        h, w = h // adapter.stride_level, w // adapter.stride_level
        if isinstance(adapter, input_adapters.SemSegInputAdapter):
            out[task] = jnp.zeros((batch, h, w), jnp.int32)
        else:
            out[task] = jnp.zeros((batch, h, w, adapter.num_channels), jnp.float32)
    return out


def abstract_variables(model: nn.Module) -> dict:
    """The model's variables as shapes only (nothing is allocated)."""
    kwargs = {"mask_inputs": False} if isinstance(model, multimae.MultiMAE) else {}
    return jax.eval_shape(lambda: model.init(jax.random.key(0), example_inputs(model), **kwargs))
