"""The MAE linear-probing head (facebookresearch/mae `main_linprobe.py`):

    model.head = Sequential(BatchNorm1d(D, affine=False, eps=1e-6), model.head)

with `model.head` a Linear(D, num_classes) re-initialised as `trunc_normal_(weight, std=0.01)`
(following MoCo v3), bias 0. Only the head trains; the BatchNorm has no parameters, only running
statistics.

`TorchBatchNorm` is torch's BatchNorm1d, which `flax.linen.BatchNorm` is not: in train mode
torch normalises with the batch mean and the *biased* batch variance but moves running_var
towards the *unbiased* one (flax keeps the biased variance), and torch's momentum weighs the new
batch (running = 0.9 running + 0.1 batch), flax's the old statistics.
"""
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

#: The variable collection of the running statistics (the repo's collection of non-trained
#: arrays: fixed positional embeddings live there too).
BUFFERS = "buffers"


def trunc_normal_01(key, shape, dtype=jnp.float32):
    """timm's trunc_normal_(std=0.01): truncated at +-2 *absolute*, i.e. at +-200 sigma."""
    return 0.01 * jax.random.truncated_normal(key, -200.0, 200.0, shape, dtype)


class TorchBatchNorm(nn.Module):
    """`torch.nn.BatchNorm1d(D, affine=False, eps=epsilon, momentum=momentum)` on (B, D) inputs.

    Running statistics `running_mean` (init 0) and `running_var` (init 1), shape (D,), float32,
    in the 'buffers' collection (torch's buffer names). `train=True`: normalises with the batch
    mean and biased variance and updates the running statistics with the batch mean and the
    unbiased variance (the 'buffers' collection must then be mutable in `apply`; initialisation
    does not update them); `train=False`: normalises with the running statistics. Computed and
    returned in float32 whatever the input dtype.

    The statistics are over the whole (B, D) array the module sees, so under a data-parallel
    `jit` over a global batch they are the global batch's. torch's are per GPU (MAE's linear
    probing uses a plain BatchNorm1d, not SyncBatchNorm): `groups` G > 1 mimics G GPUs, each of
    the G equal slices of the batch normalised with its own statistics, and the running
    statistics those of the first slice (rank 0's, the ones MAE's checkpoint saves).
    """
    epsilon: float = 1e-6
    momentum: float = 0.1
    groups: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if x.ndim != 2:
            raise ValueError(f"TorchBatchNorm: expected (B, D) input, got shape {x.shape}")
        x = x.astype(jnp.float32)
        batch, dim = x.shape
        running_mean = self.variable(BUFFERS, "running_mean", jnp.zeros, (dim,), jnp.float32)
        running_var = self.variable(BUFFERS, "running_var", jnp.ones, (dim,), jnp.float32)
        if not train:
            mean, var = running_mean.value, running_var.value
            return (x - mean) * jax.lax.rsqrt(var + self.epsilon)
        size = batch // self.groups
        if batch % self.groups or size < 2:  # torch: "Expected more than 1 value per channel"
            raise ValueError(f"TorchBatchNorm: train mode needs groups={self.groups} slices of "
                             f"more than 1 sample each, got a batch of {batch}")
        slices = x.reshape(self.groups, size, dim)
        mean = slices.mean(axis=1, keepdims=True)
        var = jnp.square(slices - mean).mean(axis=1, keepdims=True)  # biased: normalises
        if not self.is_initializing():
            m = self.momentum
            running_mean.value = (1 - m) * running_mean.value + m * mean[0, 0]
            running_var.value = (1 - m) * running_var.value + m * var[0, 0] * (size / (size - 1))
        return ((slices - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(batch, dim)


class LinearProbeHead(nn.Module):
    """MAE's linear-probing head on the encoder tokens, with the call signature of the repo's
    output adapters (so it can sit in MultiViT's output_adapters): pool -> TorchBatchNorm
    (collection 'buffers') -> Dense(num_classes) (kernel trunc-normal std 0.01, bias 0).

    pool 'mean': the mean of all tokens, global tokens included (as LinearOutputAdapter with
    mean pooling); 'global': the last token, i.e. the last global token, which MultiViT appends
    after the patch tokens (as LinearOutputAdapter without mean pooling). MAE's own choices are the
    cls token (its default, after the encoder's final LayerNorm) or, with --global_pool, the mean
    of the patch tokens only (after fc_norm); MultiViT's encoder has no final LayerNorm, and none
    is added here.

    Pass `train` as MultiViT does (its `train` keyword reaches every head); with train=True,
    `apply` needs mutable=['buffers']. The BatchNorm is float32; the Dense runs in `dtype` (set
    by MultiViT) with float32 parameters. Output (B, num_classes) in `dtype`.
    """
    num_classes: int
    pool: str = "mean"
    bn_groups: int = 1  # TorchBatchNorm.groups: > 1 mimics per-GPU statistics
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, encoder_tokens: jax.Array, input_info: dict | None = None, *,
                 all_layers=None, train: bool = False) -> jax.Array:
        del input_info, all_layers
        if self.pool == "mean":
            x = encoder_tokens.astype(jnp.float32).mean(axis=1)
        elif self.pool == "global":
            x = encoder_tokens[:, -1]
        else:
            raise ValueError(f"LinearProbeHead.pool: 'mean' or 'global', got {self.pool!r}")
        x = TorchBatchNorm(groups=self.bn_groups, name="bn")(x, train)
        return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=trunc_normal_01,
                        bias_init=nn.initializers.zeros, name="head")(x)
