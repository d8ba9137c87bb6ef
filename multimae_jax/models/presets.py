"""Model factories: ViT presets and the official pre-training / fine-tuning models."""
from typing import Any, Sequence

import jax.numpy as jnp

from multimae_jax import modalities
from multimae_jax.models.input_adapters import PatchedInputAdapter, SemSegInputAdapter
from multimae_jax.models.multimae import MultiMAE, MultiViT
from multimae_jax.models.output_adapters import SpatialOutputAdapter

#: Encoder sizes at patch 16: width, depth, heads.
VIT_PRESETS = {
    "tiny": dict(dim_tokens=192, depth=12, num_heads=3),
    "small": dict(dim_tokens=384, depth=12, num_heads=6),
    "base": dict(dim_tokens=768, depth=12, num_heads=12),
    "large": dict(dim_tokens=1024, depth=24, num_heads=16),
}


def vit_preset(size: str) -> dict:
    if size not in VIT_PRESETS:
        raise ValueError(f"unknown ViT size '{size}'; choose one of {sorted(VIT_PRESETS)}")
    return dict(VIT_PRESETS[size])


def input_adapter(task: str, image_size=224, patch_size: int = 16, num_classes: int | None = None,
                  dim_class_emb: int = 64, emb_padding_idx: int | None = None, **kwargs):
    """The official input adapter of a registered modality (semseg: class embedding, stride 4)."""
    m = modalities.get(task)
    if m.kind == "labels":
        return SemSegInputAdapter(num_classes or m.channels, m.stride_level, patch_size,
                                  image_size=image_size, dim_class_emb=dim_class_emb,
                                  emb_padding_idx=emb_padding_idx, **kwargs)
    return PatchedInputAdapter(m.channels, m.stride_level, patch_size, image_size=image_size,
                               **kwargs)


def spatial_decoder(task: str, context_tasks: Sequence[str], image_size=224, patch_size: int = 16,
                    dim: int = 256, depth: int = 2, num_heads: int = 8,
                    num_classes: int | None = None, **kwargs) -> SpatialOutputAdapter:
    """The pre-training decoder of a registered output (norm_rgb queries with the rgb tokens)."""
    m = modalities.get(task)
    return SpatialOutputAdapter(num_classes or m.channels if m.kind == "labels" else m.channels,
                                m.stride_level, patch_size, dim_tokens=dim, depth=depth,
                                num_heads=num_heads, image_size=image_size, task=m.target,
                                context_tasks=tuple(context_tasks), **kwargs)


def pretrain_multimae(size: str = "base", input_tasks: Sequence[str] = ("rgb", "depth", "semseg"),
                      output_tasks: Sequence[str] = ("rgb", "depth", "semseg", "norm_rgb"),
                      image_size=224, patch_size: int = 16, decoder_dim: int = 256,
                      decoder_depth: int = 2, decoder_num_heads: int = 8,
                      semseg_num_classes: int = 133, dim_class_emb: int = 64,
                      num_global_tokens: int = 1, fp32_output_adapters: Sequence[str] = ("semseg",),
                      dtype: Any = jnp.float32, **encoder_kwargs) -> MultiMAE:
    """The official `pretrain_multimae_<size>` with rgb/depth/semseg in and rgb/depth/semseg/
    norm_rgb decoders (ViT-B: 97,917,072 trainable parameters)."""
    inputs = {t: input_adapter(t, image_size, patch_size, semseg_num_classes, dim_class_emb)
              for t in input_tasks}
    outputs = {t: spatial_decoder(t, input_tasks, image_size, patch_size, decoder_dim,
                                  decoder_depth, decoder_num_heads, semseg_num_classes)
               for t in output_tasks}
    kwargs = vit_preset(size) | encoder_kwargs
    return MultiMAE(inputs, outputs, num_global_tokens=num_global_tokens,
                    fp32_output_adapters=tuple(fp32_output_adapters), dtype=dtype, **kwargs)


def multivit(size: str = "base", input_tasks: Sequence[str] = ("rgb",), heads: dict | None = None,
             image_size=224, patch_size: int = 16, semseg_num_classes: int = 133,
             dim_class_emb: int = 64, emb_padding_idx: int | None = None,
             num_global_tokens: int = 1,
             dtype: Any = jnp.float32, **encoder_kwargs) -> MultiViT:
    """The official `multivit_<size>` for fine-tuning: input adapters at `image_size` plus
    `heads` ({name: head module}, e.g. LinearOutputAdapter, ConvNeXtAdapter, DPTOutputAdapter)."""
    inputs = {t: input_adapter(t, image_size, patch_size, semseg_num_classes, dim_class_emb,
                               emb_padding_idx) for t in input_tasks}
    kwargs = vit_preset(size) | encoder_kwargs
    return MultiViT(inputs, heads or None, num_global_tokens=num_global_tokens, dtype=dtype,
                    **kwargs)
