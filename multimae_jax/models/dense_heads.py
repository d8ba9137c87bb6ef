"""Dense prediction heads for MultiViT fine-tuning (`multimae/output_adapters.py:
ConvNeXtAdapter`, `DPTOutputAdapter`): the ConvNeXt semantic-segmentation head and the DPT head.

Both heads are called as `head(encoder_tokens, input_info, all_layers=..., train=...)`, where
`encoder_tokens` is the last encoder block's output (B, N_total + G, D), `all_layers` the list of
every block's output, and `input_info` the dict {'tasks': {task: {'num_tokens', 'start_idx',
'end_idx'}}, 'image_size': (H, W), 'num_task_tokens', 'num_global_tokens'}. Outputs are NHWC
(B, H, W, num_classes). Submodule names equal the official module names (see convert/official.py).
"""
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from multimae_jax.models import inits
from multimae_jax.models.layers import DropPath, dense, layer_norm
from multimae_jax.models.input_adapters import pair
from multimae_jax.models.resize import resize_bilinear, resize_nearest

Dtype = Any


def _conv(x: jax.Array, features: int, kernel: int, name: str, dtype: Dtype, *, stride: int = 1,
          padding: int = 0, use_bias: bool = True) -> jax.Array:
    """A PyTorch `nn.Conv2d` (default init, symmetric padding) applied to x: (B, H, W, C_in).

    Padding is explicit because Flax 'SAME' pads (0, 1) for stride 2 on even inputs, PyTorch (1, 1).
    """
    fan_in = x.shape[-1] * kernel * kernel
    return nn.Conv(features, (kernel, kernel), strides=stride, padding=((padding, padding),) * 2,
                   use_bias=use_bias, dtype=dtype,
                   kernel_init=inits.torch_default_kernel,
                   bias_init=inits.torch_default_bias(fan_in), name=name)(x)


def depthwise_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array, shifted: bool) -> jax.Array:
    """A depthwise `nn.Conv2d(C, C, k, padding=k // 2, groups=C)`: x (B, H, W, C), kernel
    (k, k, 1, C) (Flax's grouped-conv layout), bias (C,) -> (B, H, W, C).

    shifted=True computes it as k x k shifted multiply-adds of the padded input, accumulated in
    float32 (the same products; XLA:CPU runs the backward pass of a grouped convolution about
    20x slower than this: 26 s against 1.2 s for 128 x 128 x 384, the ConvNeXt head at 512 px);
    False as a grouped convolution (GPUs and TPUs have fast kernels for it)."""
    k = kernel.shape[0]
    if not shifted:
        y = jax.lax.conv_general_dilated(x, kernel, (1, 1), [(k // 2, k // 2)] * 2,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         feature_group_count=x.shape[-1])
        return y + bias
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    y = sum(xp[:, i:i + h, j:j + w, :].astype(jnp.float32) * kernel[i, j, 0].astype(jnp.float32)
            for i in range(k) for j in range(k))
    return (y + bias.astype(jnp.float32)).astype(x.dtype)


class DepthwiseConv(nn.Module):
    """The official depthwise `nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim)` with PyTorch's
    default init, parameters as Flax's grouped nn.Conv names them ('kernel' (k, k, 1, dim),
    'bias'); computed by `depthwise_conv`, shifted on CPUs."""
    kernel_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, c = self.kernel_size, x.shape[-1]
        kernel = self.param("kernel", inits.torch_default_kernel, (k, k, 1, c))
        bias = self.param("bias", inits.torch_default_bias(k * k), (c,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return depthwise_conv(x, kernel, bias, shifted=jax.default_backend() == "cpu")


def _upsample2x(x: jax.Array) -> jax.Array:
    """Official DPT `interpolate(scale_factor=2, mode='bilinear', align_corners=True)`, NHWC."""
    return resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]), align_corners=True)


def _main_task_grid(tokens: jax.Array, input_info: dict, main_tasks: Sequence[str],
                    grid: tuple[int, int]) -> jax.Array:
    """Main-task tokens as a feature map: (B, N_total + G, D) -> (B, N_H, N_W, D * len(main_tasks)).

    Each task's slice [start_idx, end_idx) is taken (this drops the global tokens) and the tasks
    are concatenated on channels, so every main task must have N_H * N_W tokens.
    """
    parts = []
    for task in main_tasks:
        info = input_info["tasks"][task]
        part = tokens[:, info["start_idx"]:info["end_idx"]]
        if part.shape[1] != grid[0] * grid[1]:
            raise ValueError(f"main task {task!r} has {part.shape[1]} tokens, the head expects a "
                             f"{grid[0]}x{grid[1]} grid")
        parts.append(part)
    x = jnp.concatenate(parts, axis=-1)
    return x.reshape(x.shape[0], grid[0], grid[1], x.shape[-1])


class ConvNeXtBlock(nn.Module):
    """dwconv 7x7 -> LayerNorm -> pwconv1 -> GELU -> pwconv2 -> residual, as the official block
    with layer_scale_init_value 0 (no `gamma`). x: (B, H, W, dim) -> (B, H, W, dim).

    The LayerNorm computes in `residual_dtype`; the stream itself is the `dtype` output of
    `proj_dec` (under the official autocast it is fp16 too)."""
    dim: int
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32
    residual_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = DepthwiseConv(7, self.dtype, name="dwconv")(x)
        y = layer_norm("norm", self.residual_dtype)(y)
        y = dense(4 * self.dim, "pwconv1", self.dtype)(y)
        y = nn.gelu(y, approximate=False)
        y = dense(self.dim, "pwconv2", self.dtype)(y)
        return x + DropPath(self.drop_path)(y, train)


class _ConvNeXtBlocks(nn.Module):
    """The official `blocks` nn.Sequential: `depth` ConvNeXtBlocks named '0', '1', ..."""
    dim: int
    depth: int
    dtype: Dtype = jnp.float32
    residual_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i in range(self.depth):
            x = ConvNeXtBlock(self.dim, dtype=self.dtype, residual_dtype=self.residual_dtype,
                              name=str(i))(x, train)
        return x


# The official semseg script offers these two; bilinear runs with align_corners False.
_INTERPOLATE = {"bilinear": resize_bilinear, "nearest": resize_nearest}


class ConvNeXtAdapter(nn.Module):
    """ConvNeXt semantic-segmentation head (the paper's semseg head).

    Main-task tokens (B, N, D * n_main) -> `proj_dec` (B, N, embed_dim); each token's vector splits
    as (ph, pw, c) with position outermost into a sqrt(p) x sqrt(p) block of class_dim =
    embed_dim / preds_per_patch channels, giving (B, sqrt(p) N_H, sqrt(p) N_W, class_dim) ->
    `blocks` -> `final_layer` 1x1 conv -> resize to (H, W). Output (B, H, W, num_classes).
    """
    num_classes: int
    embed_dim: int = 6144
    preds_per_patch: int = 16
    main_tasks: Sequence[str] = ("rgb",)
    patch_size: int = 16
    depth: int = 4
    interpolate_mode: str = "bilinear"
    dtype: Dtype = jnp.float32
    residual_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, encoder_tokens: jax.Array, input_info: dict, *,
                 all_layers: Sequence[jax.Array] | None = None, train: bool = False) -> jax.Array:
        del all_layers  # only the last layer is used; the argument keeps one call for all heads
        if self.interpolate_mode not in _INTERPOLATE:
            raise NotImplementedError(f"interpolate_mode {self.interpolate_mode!r}; "
                                      f"supported: {sorted(_INTERPOLATE)}")
        side = round(self.preds_per_patch ** 0.5)
        if side * side != self.preds_per_patch:
            raise ValueError(f"preds_per_patch must be a square, got {self.preds_per_patch}")
        class_dim = self.embed_dim // self.preds_per_patch
        h, w = input_info["image_size"]
        n_h, n_w = h // self.patch_size, w // self.patch_size

        x = _main_task_grid(encoder_tokens, input_info, self.main_tasks, (n_h, n_w))
        x = dense(self.embed_dim, "proj_dec", self.dtype)(x)
        b = x.shape[0]
        x = x.reshape(b, n_h, n_w, side, side, class_dim).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, n_h * side, n_w * side, class_dim)
        x = _ConvNeXtBlocks(class_dim, self.depth, self.dtype, self.residual_dtype,
                            name="blocks")(x, train)
        x = _conv(x, self.num_classes, 1, "final_layer", self.dtype)
        return _INTERPOLATE[self.interpolate_mode](x, (h, w))


class _Reassemble(nn.Module):
    """An official `act_{i}_postprocess` Sequential: '0' = 1x1 conv to `features`, then '1' =
    resampling by `scale`: 4 or 2 -> ConvTranspose (kernel = stride = scale), 1 -> none,
    0.5 -> 3x3 conv with stride 2, padding 1. x: (B, N_H, N_W, C) -> (B, scale N_H, scale N_W, features)."""
    features: int
    scale: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _conv(x, self.features, 1, "0", self.dtype)
        if self.scale > 1:
            k = int(self.scale)
            # transpose_kernel=True makes the Flax kernel (kh, kw, out, in) apply exactly like
            # PyTorch's (in, out, kh, kw) weight permuted (2, 3, 1, 0); the plain Flax
            # ConvTranspose would apply it spatially flipped. PyTorch's fan_in here is out*k*k.
            x = nn.ConvTranspose(self.features, (k, k), strides=(k, k), padding="VALID",
                                 transpose_kernel=True, dtype=self.dtype,
                                 kernel_init=inits.torch_default_kernel,
                                 bias_init=inits.torch_default_bias(self.features * k * k),
                                 name="1")(x)
        elif self.scale < 1:
            x = _conv(x, self.features, 3, "1", self.dtype, stride=2, padding=1)
        return x


class _ResidualConvUnit(nn.Module):
    """Official `ResidualConvUnit_custom` (bn False): conv2(relu(conv1(relu(x)))) + x.

    The official ReLU is not in-place, so the skip uses the un-activated x. x: (B, H, W, C)."""
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        y = _conv(nn.relu(x), c, 3, "conv1", self.dtype, padding=1)
        y = _conv(nn.relu(y), c, 3, "conv2", self.dtype, padding=1)
        return y + x


class _FeatureFusion(nn.Module):
    """Official `FeatureFusionBlock_custom`: out = x (+ resConfUnit1(skip)) -> resConfUnit2 ->
    bilinear x2 (align_corners True) -> out_conv 1x1. (B, H, W, C) -> (B, 2H, 2W, C)."""
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array | None = None) -> jax.Array:
        rcu1 = _ResidualConvUnit(self.dtype, name="resConfUnit1")
        if skip is not None:
            x = x + rcu1(skip)
        elif self.is_initializing():
            # refinenet4 gets no skip, so its resConfUnit1 is never used, but the official
            # state_dict holds its weights; create them so checkpoints round-trip.
            rcu1(x)
        x = _ResidualConvUnit(self.dtype, name="resConfUnit2")(x)
        return _conv(_upsample2x(x), x.shape[-1], 1, "out_conv", self.dtype)


class _Scratch(nn.Module):
    """Official `scratch`: `layer{i}_rn` 3x3 convs (no bias) project the four reassembled maps to
    `features`, then `refinenet4` ... `refinenet1` fuse them from coarse to fine.
    Maps at 1/4, 1/8, 1/16, 1/32 of the image -> (B, H / 2, W / 2, features)."""
    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, maps: Sequence[jax.Array]) -> jax.Array:
        l1, l2, l3, l4 = [_conv(m, self.features, 3, f"layer{i + 1}_rn", self.dtype, padding=1,
                                use_bias=False) for i, m in enumerate(maps)]
        path = _FeatureFusion(self.dtype, name="refinenet4")(l4)
        path = _FeatureFusion(self.dtype, name="refinenet3")(path, l3)
        path = _FeatureFusion(self.dtype, name="refinenet2")(path, l2)
        return _FeatureFusion(self.dtype, name="refinenet1")(path, l1)


class _RegressionHead(nn.Module):
    """Official DPT 'regression' head: '0' conv 3x3 (C -> C/2) -> bilinear x2 (align_corners) ->
    '2' conv 3x3 (-> 32) -> ReLU -> '4' conv 1x1 (-> num_classes); no final activation."""
    num_classes: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = _conv(x, x.shape[-1] // 2, 3, "0", self.dtype, padding=1)
        x = _conv(_upsample2x(x), 32, 3, "2", self.dtype, padding=1)
        return _conv(nn.relu(x), self.num_classes, 1, "4", self.dtype)


class _SemsegHead(nn.Module):
    """Official DPT 'semseg' head (use_bn False): '0' conv 3x3 without bias -> ReLU ->
    Dropout(0.1) -> '4' conv 1x1 (-> num_classes) -> bilinear x2 (align_corners)."""
    num_classes: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = _conv(x, x.shape[-1], 3, "0", self.dtype, padding=1, use_bias=False)
        x = nn.Dropout(0.1, deterministic=not train)(nn.relu(x))
        return _upsample2x(_conv(x, self.num_classes, 1, "4", self.dtype))


_DPT_HEADS = {"regression": _RegressionHead, "semseg": _SemsegHead}
_REASSEMBLE_SCALES = (4, 2, 1, 0.5)  # act_1..4: 1/4, 1/8, 1/16, 1/32 of the image (stride 1)


class DPTOutputAdapter(nn.Module):
    """DPT head over four encoder layers (`hooks`), for ViT-style token grids.

    Each hooked layer's main-task tokens become a (B, N_H, N_W, D * n_main) map, are reassembled
    to four resolutions (`act_{1..4}_postprocess`, channels `layer_dims`), fused by `scratch`
    and decoded by `head`. N_H and N_W must be even (the image a multiple of 32 at patch 16) so
    that the fusion resolutions line up. Output (B, H, W, num_classes).
    """
    num_classes: int = 3
    stride_level: int = 1
    patch_size: Any = 16
    main_tasks: Sequence[str] = ("rgb",)
    hooks: Sequence[int] = (2, 5, 8, 11)
    layer_dims: Sequence[int] = (96, 192, 384, 768)
    feature_dim: int = 256
    use_bn: bool = False
    head_type: str = "regression"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, encoder_tokens: jax.Array, input_info: dict, *,
                 all_layers: Sequence[jax.Array] | None = None, train: bool = False) -> jax.Array:
        del encoder_tokens  # the hooked layers come from all_layers
        if all_layers is None:
            raise ValueError("DPTOutputAdapter needs every encoder block's output: pass "
                             "all_layers (the encoder's return_all_layers output)")
        if self.use_bn:
            raise NotImplementedError("DPTOutputAdapter(use_bn=True) is not implemented (no "
                                      "official config uses it)")
        if self.head_type not in _DPT_HEADS:
            raise ValueError('DPT head_type must be "regression" or "semseg".')
        h, w = input_info["image_size"]
        # Official: P = max(1, patch // stride_level), N = H // (stride_level * P).
        p_h, p_w = (max(1, p // self.stride_level) for p in pair(self.patch_size))
        grid = (h // (self.stride_level * p_h), w // (self.stride_level * p_w))

        maps = []
        for i, hook in enumerate(self.hooks):
            x = _main_task_grid(all_layers[hook], input_info, self.main_tasks, grid)
            maps.append(_Reassemble(self.layer_dims[i], _REASSEMBLE_SCALES[i], self.dtype,
                                    name=f"act_{i + 1}_postprocess")(x))
        x = _Scratch(self.feature_dim, self.dtype, name="scratch")(maps)
        return _DPT_HEADS[self.head_type](self.num_classes, self.dtype, name="head")(x, train)
