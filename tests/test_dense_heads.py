"""ConvNeXt and DPT heads against the official PyTorch outputs in multivit_heads_tiny.npz.

The fixture holds every encoder block's output (`layer/<i>`, tokens [rgb(16), depth(16),
global(1)], D = 64, image 64x64), the heads' weights and their NCHW outputs.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multimae_jax.convert.official import flax_to_official, official_to_flax
from multimae_jax.models import dense_heads as dh
from multimae_jax.models.dense_heads import ConvNeXtAdapter, DPTOutputAdapter
from multimae_jax.models.resize import resize_nearest

FIXTURE = "multivit_heads_tiny"
INPUT_INFO = {
    "tasks": {"rgb": {"num_tokens": 16, "start_idx": 0, "end_idx": 16},
              "depth": {"num_tokens": 16, "start_idx": 16, "end_idx": 32}},
    "image_size": (64, 64),
    "num_task_tokens": 32,
    "num_global_tokens": 1,
}
HEADS = {  # fixture head name -> the module configured as in the fixture
    "semseg_convnext": ConvNeXtAdapter(7, embed_dim=128, preds_per_patch=16, depth=2),
    "semseg_convnext_rgbd": ConvNeXtAdapter(7, embed_dim=128, preds_per_patch=16,
                                            main_tasks=("rgb", "depth"), depth=1),
    "depth_dpt": DPTOutputAdapter(1, hooks=(0, 1, 2, 3), layer_dims=(8, 16, 32, 64),
                                  feature_dim=16),
}


def _layers(npz):
    return [jnp.asarray(npz[f"layer/{i}"]) for i in range(4)]


def _apply(module, variables, layers, **kw):
    return module.apply(variables, layers[-1], INPUT_INFO, all_layers=layers, **kw)


def _head_state_dict(npz, name):
    """The head's official keys with the `output_adapters.<name>.` prefix stripped."""
    prefix = f"param/output_adapters.{name}."
    return {k[len(prefix):]: v for k, v in npz.items() if k.startswith(prefix)}


# The converter recognises the DPT alias keys (`act_postprocess.i`, `scratch.layer_rn.i`) only
# after a '.', i.e. inside a full model key, so these two helpers convert under a dummy prefix.
def _to_flax(state_dict, abstract):
    nest = lambda tree: {c: {"h": sub} for c, sub in tree.items()}
    variables = official_to_flax({f"h.{k}": v for k, v in state_dict.items()}, nest(abstract))
    return {c: sub["h"] for c, sub in variables.items()}


def _to_official(variables):
    full = flax_to_official({c: {"h": sub} for c, sub in variables.items()})
    return {k[len("h."):]: v for k, v in full.items()}


@pytest.mark.parametrize("name", HEADS)
def test_matches_official(official_npz, name):
    npz, module = official_npz(FIXTURE), HEADS[name]
    layers = _layers(npz)
    # input_info must stay static Python (its indices slice), so it is closed over, not traced.
    init = lambda key: module.init(key, layers[-1], INPUT_INFO, all_layers=layers)
    variables = _to_flax(_head_state_dict(npz, name), jax.eval_shape(init, jax.random.key(0)))
    out = np.asarray(_apply(module, variables, layers))
    want = npz[f"head/{name}"].transpose(0, 2, 3, 1)
    assert out.shape == want.shape
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def fresh_params():
    """name -> init'd variables of HEADS[name] (cached: initialising on CPU is slow)."""
    layers = [jnp.zeros((1, 33, 64))] * 4
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = HEADS[name].init(jax.random.key(0), layers[-1], INPUT_INFO,
                                           all_layers=layers)
        return cache[name]

    return get


@pytest.mark.parametrize("name", HEADS)
def test_init_has_official_parameter_shapes(official_npz, fresh_params, name):
    """flax_to_official of fresh init'd variables (DPT aliases included) = the official keys."""
    got = {k: v.shape for k, v in _to_official(fresh_params(name)).items()}
    npz = official_npz(FIXTURE)
    assert got == {k: v.shape for k, v in _head_state_dict(npz, name).items()}


def test_dpt_semseg_head_shapes_and_dropout():
    """The 'semseg' head variant: official keys head.0.weight (no bias) and head.4.*; its dropout
    is active only with train=True."""
    layers = [jax.random.normal(jax.random.key(i), (2, 33, 64)) for i in range(4)]
    module = DPTOutputAdapter(5, hooks=(0, 1, 2, 3), layer_dims=(8, 16, 32, 64), feature_dim=16,
                              head_type="semseg")
    variables = module.init(jax.random.key(0), layers[-1], INPUT_INFO, all_layers=layers)
    keys = {k for k in _to_official(variables) if k.startswith("head.")}
    assert keys == {"head.0.weight", "head.4.weight", "head.4.bias"}
    out = _apply(module, variables, layers)
    assert out.shape == (2, 64, 64, 5)
    noisy = _apply(module, variables, layers, train=True, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(out, noisy)


def test_dpt_errors():
    layers = [jnp.zeros((1, 33, 64))] * 4
    module = HEADS["depth_dpt"]
    with pytest.raises(ValueError, match="all_layers"):
        module.init(jax.random.key(0), layers[-1], INPUT_INFO)
    with pytest.raises(NotImplementedError, match="use_bn"):
        module.clone(use_bn=True).init(jax.random.key(0), layers[-1], INPUT_INFO,
                                       all_layers=layers)


def test_conv_init_matches_pytorch_default_bounds(fresh_params):
    """Convs keep PyTorch's default init, U(+-1/sqrt(fan_in)) for kernel and bias; for the
    ConvTranspose fan_in is out * k * k. Linears are xavier with zero bias."""
    deconv = fresh_params("depth_dpt")["params"]["act_1_postprocess"]["1"]  # 8 -> 8, k = 4
    for leaf in (deconv["kernel"], deconv["bias"]):
        assert np.abs(leaf).max() <= 1 / np.sqrt(8 * 16)
    assert np.abs(deconv["kernel"]).max() > 0.8 / np.sqrt(8 * 16)
    convnext = fresh_params("semseg_convnext")["params"]
    dw = convnext["blocks"]["0"]["dwconv"]["kernel"]  # depthwise: fan_in = 1 * 7 * 7
    assert dw.shape == (7, 7, 1, 8)
    assert 0.8 / 7 < np.abs(dw).max() <= 1 / 7
    assert not np.any(convnext["proj_dec"]["bias"])


def test_resize_nearest_is_pytorch_legacy_nearest():
    x = jnp.arange(3.0).reshape(1, 3, 1, 1)
    # PyTorch: 3 -> 5 picks floor(i * 0.6) = [0, 0, 1, 1, 2]; 3 -> 6 repeats each row twice.
    np.testing.assert_array_equal(resize_nearest(x, (5, 1))[0, :, 0, 0], [0, 0, 1, 1, 2])
    np.testing.assert_array_equal(resize_nearest(x, (6, 1))[0, :, 0, 0], [0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_depthwise_conv_shifted_equals_the_grouped_convolution(dtype, tol):
    """The CPU form (shifted multiply-adds) and the grouped convolution of other platforms give
    the same outputs and gradients."""
    r = np.random.default_rng(0)
    x = jnp.asarray(r.normal(size=(2, 9, 11, 5)), dtype)
    kernel = jnp.asarray(r.normal(size=(7, 7, 1, 5)), dtype)
    bias = jnp.asarray(r.normal(size=(5,)), dtype)
    target = jnp.asarray(r.normal(size=(2, 9, 11, 5)), jnp.float32)

    def loss(shifted, *args):
        return jnp.sum((dh.depthwise_conv(*args, shifted=shifted).astype(jnp.float32) - target) ** 2)

    for shifted in (True, False):
        assert dh.depthwise_conv(x, kernel, bias, shifted).dtype == dtype
    got = jax.value_and_grad(lambda *a: loss(True, *a), argnums=(0, 1, 2))(x, kernel, bias)
    want = jax.value_and_grad(lambda *a: loss(False, *a), argnums=(0, 1, 2))(x, kernel, bias)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                                   rtol=tol, atol=tol * float(np.abs(np.asarray(w, np.float32)).max()))
