"""Output adapters: the pre-training decoder and the classification head
(`multimae/output_adapters.py: SpatialOutputAdapter`, `LinearOutputAdapter`)."""
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from multimae_jax.masking import take_tokens
from multimae_jax.models import inits
from multimae_jax.models.input_adapters import pair, patch_dims, pos_emb_variable
from multimae_jax.models.layers import BlockStack, CrossAttention, Mlp, dense, layer_norm
from multimae_jax.models.resize import resize_bilinear


class TaskEmbeddings(nn.Module):
    """One (1, 1, dim) embedding per context task, named by task (official `task_embeddings.<task>`)."""
    tasks: Sequence[str]
    dim: int

    @nn.compact
    def __call__(self) -> dict[str, jax.Array]:
        return {t: self.param(t, inits.trunc_normal_02, (1, 1, self.dim)) for t in self.tasks}


class SpatialOutputAdapter(nn.Module):
    """Cross-attention decoder of one output task (the pre-training decoder).

    Queries are this task's full token grid (projected visible encoder tokens, mask tokens
    elsewhere, plus task and positional embeddings); the context is the visible tokens plus the
    global tokens. One cross-attention (no residual around it, as in the official code) and an
    MLP, then `depth` self-attention blocks, then `out_proj` and un-patchify with feature order
    (c, ph, pw). Output (B, H / stride, W / stride, num_channels), in `dtype`.

    Precision as under the official autocast: queries and context (projected tokens plus mask
    token and embeddings) are in `residual_dtype`, but the cross-attention has no residual, so
    with use_xattn the stream after it is in `dtype` (the official one is fp16 there too).

    `attention` (layers._attend) and `gather_grad` (masking.take_tokens: the backward pass of
    putting the visible tokens back in place and of gathering them for the context) choose how
    it computes, not what.
    """
    # `SpatialOutputAdapter.no_weight_decay()`; 'task_embeddings' names a ParameterDict (its
    # parameters are task_embeddings.<task>), so matched exactly it exempts nothing
    no_weight_decay = ("pos_emb", "mask_token", "task_embeddings")
    num_channels: int
    stride_level: int = 1
    patch_size_full: Any = 16
    dim_tokens: int = 256
    depth: int = 0
    learnable_pos_emb: bool = False
    image_size: Any = 224
    mlp_ratio: float = 4.0
    num_heads: int = 8
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    use_task_queries: bool = True
    task: str | None = None
    context_tasks: Sequence[str] | None = None
    use_xattn: bool = True
    dtype: Any = jnp.float32
    residual_dtype: Any = jnp.float32
    attention: str = "xla"
    gather_grad: str = "gather"

    @nn.compact
    def __call__(self, encoder_tokens: jax.Array, input_info: dict, ids_keep: jax.Array,
                 ids_restore: jax.Array, train: bool = False) -> jax.Array:
        """encoder_tokens (B, K + G, D_enc); ids_keep (B, K); ids_restore (B, N_total)."""
        ph, pw = patch_dims(self.patch_size_full, self.stride_level)
        ih, iw = pair(self.image_size)
        # Official: a fixed sin-cos grid, or with learnable_pos_emb a trunc-normal parameter.
        learnable = self.learnable_pos_emb
        pos = pos_emb_variable(self, (ih // (self.stride_level * ph), iw // (self.stride_level * pw)),
                               self.dim_tokens, not learnable, learnable)
        task_emb = (TaskEmbeddings(tuple(self.context_tasks), self.dim_tokens, name="task_embeddings")()
                    if self.context_tasks is not None else {})
        mask_token = self.param("mask_token", nn.initializers.zeros, (1, 1, self.dim_tokens))

        height, width = input_info["image_size"]
        nh, nw = height // (self.stride_level * ph), width // (self.stride_level * pw)
        pos = resize_bilinear(pos, (nh, nw)).reshape(1, nh * nw, self.dim_tokens)
        b = encoder_tokens.shape[0]
        num_global = input_info["num_global_tokens"]
        num_visible = encoder_tokens.shape[1] - num_global

        rd = self.residual_dtype
        ctx = dense(self.dim_tokens, "proj_context", self.dtype)(encoder_tokens)
        # Full sequence in original task order: the visible tokens put back in place (zeros
        # elsewhere), the mask token where ids_restore points past the K visible ones.
        seq = jnp.where((ids_restore < num_visible)[..., None],
                        take_tokens(ctx[:, :num_visible].astype(rd), ids_restore, ids_keep,
                                    self.gather_grad), mask_token.astype(rd))
        embeddings = []
        for t, info in input_info["tasks"].items():
            if info["num_tokens"] != nh * nw:
                raise ValueError(f"{self.name}: task {t} has {info['num_tokens']} tokens, the "
                                 f"decoder grid is {nh}x{nw}")
            embeddings.append(pos + task_emb.get(t, jnp.zeros((1, 1, self.dim_tokens))))
        seq = seq + jnp.concatenate(embeddings, axis=1).astype(rd)

        if self.use_task_queries and self.task in input_info["tasks"]:
            info = input_info["tasks"][self.task]
            queries = seq[:, info["start_idx"]:info["end_idx"]]
        else:
            queries = mask_token + pos
            if self.task in task_emb:
                queries = queries + task_emb[self.task]
            queries = jnp.broadcast_to(queries, (b, nh * nw, self.dim_tokens)).astype(rd)
        context = jnp.concatenate([take_tokens(seq, ids_keep, ids_restore, self.gather_grad),
                                   ctx[:, num_visible:].astype(rd)], axis=1)

        x = queries
        if self.use_xattn:
            x = CrossAttention(self.num_heads, self.qkv_bias, self.attn_drop_rate, self.drop_rate,
                               self.dtype, self.attention, name="decoder")(
                layer_norm("query_norm", rd)(queries), layer_norm("context_norm", rd)(context),
                train)
            x = x + Mlp(int(self.dim_tokens * self.mlp_ratio), dtype=self.dtype, name="mlp")(
                layer_norm("out_norm", rd)(x), train)
        if self.depth > 0:
            x = BlockStack(self.depth, self.num_heads, self.mlp_ratio, self.qkv_bias, self.drop_rate,
                           self.attn_drop_rate, self.drop_path_rate, dtype=self.dtype,
                           residual_dtype=rd, attention=self.attention,
                           name="decoder_transformer")(x, train)
        x = dense(self.num_channels * ph * pw, "out_proj", self.dtype)(x)
        x = x.reshape(b, nh, nw, self.num_channels, ph, pw).transpose(0, 1, 4, 2, 5, 3)
        return x.reshape(b, nh * ph, nw * pw, self.num_channels)


class LinearOutputAdapter(nn.Module):
    """Classification head: LayerNorm then Dense on the mean of *all* tokens (global token
    included) or, without mean pooling, on the last token. Output (B, num_classes).

    The official head init (trunc-normal 0.02 times `init_scale`) is overwritten by MultiMAE's
    global xavier re-init, so by default the head is xavier-initialised; `apply_init_scale=True`
    keeps the intended trunc-normal * init_scale init (as MAE / BEiT do).
    """
    num_classes: int
    use_mean_pooling: bool = True
    init_scale: float = 1.0
    apply_init_scale: bool = False
    dtype: Any = jnp.float32
    residual_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, encoder_tokens: jax.Array, input_info: dict | None = None, *,
                 all_layers=None, train: bool = False) -> jax.Array:
        x = encoder_tokens.mean(axis=1) if self.use_mean_pooling else encoder_tokens[:, -1]
        x = layer_norm("norm", self.residual_dtype)(x)
        if self.num_classes == 0:
            return x
        init = inits.xavier_uniform
        if self.apply_init_scale:
            init = lambda k, s, d=jnp.float32: inits.trunc_normal_02(k, s, d) * self.init_scale
        return dense(self.num_classes, "head", self.dtype, kernel_init=init)(x)
