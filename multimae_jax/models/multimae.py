"""MultiMAE (masked multi-modal encoder + decoders) and MultiViT (full forward), as
`multimae/multimae.py: MultiMAE.forward` and `MultiViT.forward`.

Adapters are passed as unbound Flax modules keyed by task; the model adopts them under the
official scopes `input_adapters/<task>` and `output_adapters/<task>`. Task order is the order of
`input_adapters` (not of the input dict, whose order `jit` does not keep).
"""
import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from multimae_jax import masking
from multimae_jax.models import inits
from multimae_jax.models.layers import BlockStack


class AdapterGroup(nn.Module):
    """Named adapters in one scope (the official `nn.ModuleDict`), each cloned with `overrides`."""
    adapters: Mapping[str, nn.Module]
    overrides: Mapping[str, Mapping[str, Any]]

    def setup(self):
        self.members = {name: module.clone(parent=self, name=name, **self.overrides.get(name, {}))
                        for name, module in self.adapters.items()}

    def __call__(self, name: str, *args, **kwargs):
        return self.members[name](*args, **kwargs)


def _fields(adapter: nn.Module, **values) -> dict:
    """The model-wide fields set on an adapter: `values` less those it lacks (heads without
    LayerNorms or residual inputs, e.g. DPT, have no `residual_dtype`; only the pre-training
    decoder has `attention`, it and the semseg input adapter `gather_grad`)."""
    names = {f.name for f in dataclasses.fields(adapter)}
    return {k: v for k, v in values.items() if k in names}


class _Backbone(nn.Module):
    """Fields, adapters and encoder shared by MultiMAE and MultiViT.

    `dtype` is the matmul dtype; `residual_dtype` that of the adapters' output tokens, the global
    tokens, the encoder's residual stream and every LayerNorm. The default (float32 with a
    bfloat16 `dtype`) is the official fp16 autocast's split; bfloat16 makes everything bf16.
    Adapters named in `fp32_output_adapters` run entirely in float32 (with 'xla' attention).

    How it computes, not what (the parameters and, up to float rounding, the outputs stay the
    same): `attention` ('xla' | 'cudnn': layers._attend) of the encoder and the decoders;
    `scan_blocks`, the encoder's blocks as one scan (layers.BlockStack); `gather_grad`
    ('gather' | 'scatter': masking.take_tokens, input_adapters.ClassEmbedding), the backward
    pass of the token gathers and of the class-embedding lookup."""
    input_adapters: Mapping[str, nn.Module]
    output_adapters: Mapping[str, nn.Module] | None = None
    num_global_tokens: int = 1
    dim_tokens: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    remat: bool = False
    fp32_output_adapters: Sequence[str] = ()
    dtype: Any = jnp.float32
    residual_dtype: Any = jnp.float32
    attention: str = "xla"
    scan_blocks: bool = False
    gather_grad: str = "gather"

    def setup(self):
        self.inputs = AdapterGroup(
            self.input_adapters,
            {t: {"dim_tokens": self.dim_tokens,
                 **_fields(a, dtype=self.dtype, residual_dtype=self.residual_dtype,
                           gather_grad=self.gather_grad)}
             for t, a in self.input_adapters.items()}, name="input_adapters")
        if self.output_adapters:
            fp32 = dict(dtype=jnp.float32, residual_dtype=jnp.float32, attention="xla")
            own = dict(dtype=self.dtype, residual_dtype=self.residual_dtype,
                       attention=self.attention)
            self.outputs = AdapterGroup(
                self.output_adapters,
                {t: _fields(a, gather_grad=self.gather_grad,
                            **(fp32 if t in self.fp32_output_adapters else own))
                 for t, a in self.output_adapters.items()}, name="output_adapters")
        self.global_tokens = self.param("global_tokens", inits.trunc_normal_02,
                                        (1, self.num_global_tokens, self.dim_tokens))
        self.encoder = BlockStack(self.depth, self.num_heads, self.mlp_ratio, self.qkv_bias,
                                  self.drop_rate, self.attn_drop_rate, self.drop_path_rate,
                                  self.remat, self.dtype, self.residual_dtype, self.attention,
                                  self.scan_blocks)

    def tokenize(self, x: Mapping[str, jax.Array]):
        """Runs the input adapters of the tasks present in x.

        Returns ({task: (B, N_t, D)} in adapter order, input_info) where input_info is the
        official dict: tasks -> {num_tokens, start_idx, end_idx}, image_size, num_task_tokens,
        num_global_tokens.
        """
        tasks = [t for t in self.input_adapters if t in x]
        if not tasks:
            raise ValueError(f"inputs {sorted(x)} contain none of the model's input tasks "
                             f"{list(self.input_adapters)}")
        first = x[tasks[0]]
        stride = self.input_adapters[tasks[0]].stride_level
        image_size = (first.shape[1] * stride, first.shape[2] * stride)
        tokens = {t: self.inputs(t, x[t]) for t in tasks}
        info, start = {}, 0
        for t in tasks:
            n = tokens[t].shape[1]
            info[t] = {"num_tokens": n, "start_idx": start, "end_idx": start + n}
            start += n
        return tokens, {"tasks": info, "image_size": image_size, "num_task_tokens": start,
                        "num_global_tokens": self.num_global_tokens}

    def with_global_tokens(self, tokens: jax.Array) -> jax.Array:
        """Appends the global tokens after the patch tokens: (B, K, D) -> (B, K + G, D)."""
        g = jnp.broadcast_to(self.global_tokens, (tokens.shape[0],) + self.global_tokens.shape[1:])
        return jnp.concatenate([tokens, g.astype(self.residual_dtype)], axis=1)


class MultiMAE(_Backbone):
    """Masked multi-modal autoencoder.

    Call with inputs {task: array} (images (B, H, W, C), semseg (B, H/4, W/4) int) and either
    `task_masks` {task: (B, N_t)} (1 = masked; every sample must keep the same number of visible
    tokens) or random masks drawn from the 'masking' RNG stream (Dirichlet split of
    `num_encoded_tokens`, default 128 as the official signature). Returns (preds, masks):
    preds {task: (B, H', W', C)} from the output adapters, or with no output adapters the encoder
    tokens (B, K + G, D); masks {task: (B, N_t)} int32.

    With given masks under `jit` the visible count cannot be read from the (traced) masks, so
    `num_encoded_tokens` must then be passed and every sample must keep exactly that many.
    """

    def __call__(self, x: Mapping[str, jax.Array], task_masks: Mapping[str, jax.Array] | None = None,
                 *, num_encoded_tokens: int | None = None, alphas=1.0,
                 sample_tasks_uniformly: bool = False, mask_inputs: bool = True,
                 train: bool = False):
        tokens, info = self.tokenize(x)
        num_tokens = {t: i["num_tokens"] for t, i in info["tasks"].items()}
        batch, total = next(iter(tokens.values())).shape[0], info["num_task_tokens"]
        if not mask_inputs:
            mask_all, ids_keep, ids_restore = masking.no_masking(batch, total)
        elif task_masks is None:
            mask_all, ids_keep, ids_restore = masking.random_masks(
                self.make_rng("masking"), list(num_tokens.values()), batch,
                128 if num_encoded_tokens is None else num_encoded_tokens, alphas,
                sample_tasks_uniformly)
        else:
            k = self._visible_count(task_masks, num_tokens, num_encoded_tokens)
            mask_all, ids_keep, ids_restore = masking.masks_to_ids(
                jnp.concatenate([jnp.asarray(task_masks[t], jnp.int32) for t in num_tokens], 1), k)

        seq = jnp.concatenate(list(tokens.values()), axis=1)
        seq = masking.take_tokens(seq, ids_keep, ids_restore, self.gather_grad)
        encoded = self.encoder(self.with_global_tokens(seq), train)
        masks = masking.split_by_task(mask_all, num_tokens)
        if not self.output_adapters:
            return encoded, masks
        preds = {}
        for task in self.output_adapters:
            inp = encoded.astype(jnp.float32) if task in self.fp32_output_adapters else encoded
            preds[task] = self.outputs(task, inp, info, ids_keep, ids_restore, train=train)
        return preds, masks

    @staticmethod
    def _visible_count(task_masks, num_tokens: dict, num_encoded_tokens: int | None) -> int:
        """Checks the given masks' shapes and returns the visible tokens per sample."""
        missing = [t for t in num_tokens if t not in task_masks]
        if missing:
            raise ValueError(f"task_masks: no mask for input task(s) {missing}")
        for t, n in num_tokens.items():
            if task_masks[t].ndim != 2 or task_masks[t].shape[1] != n:
                raise ValueError(f"task_masks['{t}']: expected shape (B, {n}), "
                                 f"got {tuple(task_masks[t].shape)}")
        try:
            concrete = np.concatenate([np.asarray(task_masks[t]) for t in num_tokens], 1)
        except jax.errors.TracerArrayConversionError:
            if num_encoded_tokens is None:
                raise ValueError("task_masks are traced (under jit): pass num_encoded_tokens, the "
                                 "number of visible tokens each sample keeps") from None
            return num_encoded_tokens
        k = masking.count_visible(concrete)
        if num_encoded_tokens is not None and k != num_encoded_tokens:
            raise ValueError(f"task_masks keep {k} visible tokens per sample, but "
                             f"num_encoded_tokens={num_encoded_tokens}")
        return k


class MultiViT(_Backbone):
    """The same network without masking (fine-tuning and feature extraction).

    Returns the encoder tokens (B, N + G, D) (or, with `return_all_layers`, the list of every
    block's output) when there are no output adapters, else {task: head output}; heads receive
    the last block's tokens and, as `all_layers`, every block's output (DPT uses them).
    """

    def __call__(self, x: Mapping[str, jax.Array], *, return_all_layers: bool = False,
                 train: bool = False):
        tokens, info = self.tokenize(x)
        seq = self.with_global_tokens(jnp.concatenate(list(tokens.values()), axis=1))
        layers = self.encoder(seq, train, return_all=True)
        if not self.output_adapters:
            return layers if return_all_layers else layers[-1]
        return {task: self.outputs(task, layers[-1], info, all_layers=layers, train=train)
                for task in self.output_adapters}
