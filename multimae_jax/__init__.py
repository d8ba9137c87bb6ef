"""multimae-jax: MultiMAE (Bachmann et al., ECCV 2022) in JAX/Flax."""
from multimae_jax import losses, masking, modalities
from multimae_jax.checkpoint_format import save_checkpoint
from multimae_jax.models.dense_heads import ConvNeXtAdapter, DPTOutputAdapter
from multimae_jax.models.input_adapters import PatchedInputAdapter, SemSegInputAdapter
from multimae_jax.models.multimae import MultiMAE, MultiViT
from multimae_jax.models.output_adapters import LinearOutputAdapter, SpatialOutputAdapter
from multimae_jax.models.presets import multivit, pretrain_multimae
from multimae_jax.pretrained import finetune_init, load_pretrained

__all__ = [
    "ConvNeXtAdapter", "DPTOutputAdapter", "LinearOutputAdapter", "MultiMAE", "MultiViT",
    "PatchedInputAdapter", "SemSegInputAdapter", "SpatialOutputAdapter", "finetune_init",
    "load_pretrained",
    "losses", "masking", "modalities", "multivit", "pretrain_multimae", "save_checkpoint",
]
