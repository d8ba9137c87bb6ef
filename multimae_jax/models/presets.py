"""Model factories: ViT presets and the official pre-training / fine-tuning models."""
from typing import Any, Sequence

import jax.numpy as jnp

from multimae_jax.modalities import Modality, get, resolve
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


def _labels_with(tasks, num_classes: int | None, dim_class_emb: int | None
                 ) -> dict[str, Modality]:
    """{name: Modality} of `tasks`, labels modalities with the given fields replaced."""
    changes = {k: v for k, v in (("num_classes", num_classes), ("dim_class_emb", dim_class_emb))
               if v is not None}
    return {t: m.replace(**changes) if m.kind == "labels" and changes else m
            for t, m in resolve(tasks).items()}


def input_adapter(modality: str | Modality, image_size=224, patch_size: int = 16,
                  emb_padding_idx: int | None = None, **kwargs):
    """The official input adapter of a modality: labels get a class embedding
    (`SemSegInputAdapter`), images a patch projection (`PatchedInputAdapter`)."""
    m = get(modality)
    if m.kind == "labels":
        return SemSegInputAdapter(m.num_classes, m.stride_level, patch_size,
                                  image_size=image_size, dim_class_emb=m.dim_class_emb,
                                  emb_padding_idx=emb_padding_idx, **kwargs)
    return PatchedInputAdapter(m.channels, m.stride_level, patch_size, image_size=image_size,
                               **kwargs)


def spatial_decoder(modality: str | Modality, context_tasks: Sequence[str], image_size=224,
                    patch_size: int = 16, dim: int = 256, depth: int = 2, num_heads: int = 8,
                    **kwargs) -> SpatialOutputAdapter:
    """The pre-training decoder of an output modality; its queries are the tokens of the
    modality's `source` (norm_rgb: rgb)."""
    m = get(modality)
    return SpatialOutputAdapter(m.out_channels, m.stride_level, patch_size, dim_tokens=dim,
                                depth=depth, num_heads=num_heads, image_size=image_size,
                                task=m.source, context_tasks=tuple(context_tasks), **kwargs)


def pretrain_multimae(size: str = "base",
                      input_tasks: Sequence[str | Modality] = ("rgb", "depth", "semseg"),
                      output_tasks: Sequence[str | Modality] = ("rgb", "depth", "semseg",
                                                                "norm_rgb"),
                      image_size=224, patch_size: int = 16, decoder_dim: int = 256,
                      decoder_depth: int = 2, decoder_num_heads: int = 8,
                      num_classes: int | None = None, dim_class_emb: int | None = None,
                      num_global_tokens: int = 1, fp32_output_adapters: Sequence[str] = ("semseg",),
                      dtype: Any = jnp.float32, **encoder_kwargs) -> MultiMAE:
    """The official `pretrain_multimae_<size>` (ViT-B with rgb/depth/semseg in and rgb/depth/
    semseg/norm_rgb decoders: 97,917,072 trainable parameters). Tasks are Modality objects or
    names of the default entries; num_classes / dim_class_emb override labels modalities'."""
    ins = _labels_with(input_tasks, num_classes, dim_class_emb)
    outs = _labels_with(output_tasks, num_classes, dim_class_emb)
    inputs = {t: input_adapter(m, image_size, patch_size) for t, m in ins.items()}
    outputs = {t: spatial_decoder(m, tuple(ins), image_size, patch_size, decoder_dim,
                                  decoder_depth, decoder_num_heads)
               for t, m in outs.items()}
    kwargs = vit_preset(size) | encoder_kwargs
    return MultiMAE(inputs, outputs, num_global_tokens=num_global_tokens,
                    fp32_output_adapters=tuple(fp32_output_adapters), dtype=dtype, **kwargs)


def multivit(size: str = "base", input_tasks: Sequence[str | Modality] = ("rgb",),
             heads: dict | None = None, image_size=224, patch_size: int = 16,
             num_classes: int | None = None, dim_class_emb: int | None = None,
             emb_padding_idx: int | None = None, num_global_tokens: int = 1,
             dtype: Any = jnp.float32, **encoder_kwargs) -> MultiViT:
    """The official `multivit_<size>` for fine-tuning: input adapters at `image_size` plus
    `heads` ({name: head module}, e.g. LinearOutputAdapter, ConvNeXtAdapter, DPTOutputAdapter)."""
    inputs = {t: input_adapter(m, image_size, patch_size, emb_padding_idx)
              for t, m in _labels_with(input_tasks, num_classes, dim_class_emb).items()}
    kwargs = vit_preset(size) | encoder_kwargs
    return MultiViT(inputs, heads or None, num_global_tokens=num_global_tokens, dtype=dtype,
                    **kwargs)
