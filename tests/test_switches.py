"""Model switches: each test fails when its switch is ignored.

Expected values are computed here by hand (numpy) from the module's own parameters.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multimae_jax.models.dense_heads import ConvNeXtAdapter
from multimae_jax.models.input_adapters import PatchedInputAdapter, SemSegInputAdapter
from multimae_jax.models.multimae import MultiMAE, MultiViT
from multimae_jax.models.output_adapters import LinearOutputAdapter, SpatialOutputAdapter
from multimae_jax.models.presets import pretrain_multimae

KEY = jax.random.key(0)


def _normal(seed: int, shape) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape)


def test_remat_recomputes_encoder_blocks_with_the_same_outputs_and_gradients():
    model = MultiMAE({"rgb": PatchedInputAdapter(3, 1, 8, image_size=16)}, None, dim_tokens=16,
                     depth=2, num_heads=2, drop_path_rate=0.5)
    x = {"rgb": _normal(1, (2, 16, 16, 3))}
    params = model.init(KEY, x, mask_inputs=False)

    def loss(m, p):  # train=True: drop-path must draw the same masks when recomputed
        out, _ = m.apply(p, x, mask_inputs=False, train=True, rngs={"dropout": jax.random.key(1)})
        return jnp.sum(out ** 2)

    # The primitive jax.checkpoint binds ('remat2' in JAX 0.10-0.12), as printed in a jaxpr.
    checkpoint = jax.make_jaxpr(jax.checkpoint(jnp.sin))(1.0).eqns[0].primitive.name + "["
    results = {}
    for remat in (False, True):
        m = model.clone(remat=remat)
        grad_jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: loss(m, p)))(params))
        assert grad_jaxpr.count(checkpoint) == (2 if remat else 0)  # one per block
        results[remat] = jax.jit(jax.value_and_grad(lambda p: loss(m, p)))(params)
    np.testing.assert_allclose(results[True][0], results[False][0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(results[True][1]), jax.tree.leaves(results[False][1])):
        assert np.abs(a - b).max() <= 1e-6 * np.abs(b).max()  # float32 summation order only


@pytest.mark.parametrize("adapter, x", [
    (PatchedInputAdapter(3, 1, 8, dim_tokens=16, image_size=32), _normal(1, (2, 32, 32, 3))),
    (SemSegInputAdapter(5, 4, 8, dim_tokens=16, image_size=32, dim_class_emb=6),
     jax.random.randint(KEY, (2, 8, 8), 0, 5))], ids=["patched", "semseg"])
def test_learnable_pos_emb_input_adapters_train_the_sincos_grid(adapter, x):
    fixed = adapter.init(KEY, x)
    assert "pos_emb" in fixed["buffers"] and "pos_emb" not in fixed["params"]
    learnable = adapter.clone(learnable_pos_emb=True)
    variables = learnable.init(KEY, x)
    assert "buffers" not in variables
    # Official: the sin-cos grid as a Parameter with requires_grad=True.
    np.testing.assert_array_equal(variables["params"]["pos_emb"], fixed["buffers"]["pos_emb"])
    # out = proj(x) + pos_emb at the native grid, so d sum(out * w) / d pos_emb = sum_b w.
    w = _normal(2, (2, 16, 16))
    grad = jax.grad(lambda p: jnp.sum(learnable.apply({"params": p}, x) * w))(variables["params"])
    np.testing.assert_allclose(grad["pos_emb"], np.sum(w, 0).reshape(1, 4, 4, 16), rtol=1e-6)


def _decoder_inputs(batch: int = 2):
    """Two context tasks of 2x2 tokens each (16 px, patch 8); 5 of the 8 visible, 1 global.

    Returns (encoder_tokens (B, 6, 12), input_info, ids_keep (B, 5), ids_restore (B, 8))."""
    perm = np.array([[3, 0, 6, 1, 5, 2, 4, 7], [7, 2, 0, 4, 1, 6, 5, 3]])[:batch]
    info = {"tasks": {"rgb": {"num_tokens": 4, "start_idx": 0, "end_idx": 4},
                      "depth": {"num_tokens": 4, "start_idx": 4, "end_idx": 8}},
            "image_size": (16, 16), "num_task_tokens": 8, "num_global_tokens": 1}
    return (_normal(3, (batch, 6, 12)), info, jnp.asarray(perm[:, :5]),
            jnp.asarray(np.argsort(perm, axis=1)))


def _decoder(**kwargs) -> SpatialOutputAdapter:
    return SpatialOutputAdapter(3, 1, 8, dim_tokens=16, depth=0, num_heads=2, image_size=16,
                                task="rgb", context_tasks=("rgb", "depth"), **kwargs)


def _decode_without_xattn_by_hand(variables, enc, ids_restore, task_queries: bool) -> np.ndarray:
    """The official decoder with use_xattn=False, depth 0: out_proj(queries), un-patchified.

    Queries: the rgb slice of [projected visible tokens, mask tokens] unshuffled, plus pos and
    task embeddings; or, without task queries, mask token + pos emb + the rgb task embedding."""
    p = jax.tree.map(np.asarray, variables["params"])
    pos = np.asarray(variables["buffers"]["pos_emb"]).reshape(1, 4, 16)
    task_emb = p["task_embeddings"]["rgb"]
    if task_queries:
        ctx = np.asarray(enc) @ p["proj_context"]["kernel"] + p["proj_context"]["bias"]
        fill = np.broadcast_to(p["mask_token"], (enc.shape[0], 3, 16))
        seq = np.concatenate([ctx[:, :5], fill], 1)
        seq = np.take_along_axis(seq, np.asarray(ids_restore)[..., None], 1)
        queries = seq[:, :4] + pos + task_emb
    else:
        queries = np.broadcast_to(p["mask_token"] + pos + task_emb, (enc.shape[0], 4, 16))
    out = queries @ p["out_proj"]["kernel"] + p["out_proj"]["bias"]  # (B, 4, 3 * 8 * 8)
    # token (nh, nw), features (c, ph, pw) -> pixel (nh * 8 + ph, nw * 8 + pw), channel c
    out = out.reshape(-1, 2, 2, 3, 8, 8).transpose(0, 1, 4, 2, 5, 3)
    return out.reshape(-1, 16, 16, 3)


def test_use_xattn_false_has_no_cross_attention_and_decodes_the_queries_directly():
    enc, info, keep, restore = _decoder_inputs()
    with_xattn = _decoder().init(KEY, enc, info, keep, restore)
    assert {"decoder", "query_norm", "context_norm", "out_norm", "mlp"} <= set(
        with_xattn["params"])
    decoder = _decoder(use_xattn=False)
    variables = decoder.init(KEY, enc, info, keep, restore)
    assert set(variables["params"]) == {"task_embeddings", "mask_token", "proj_context",
                                        "out_proj"}
    out = decoder.apply(variables, enc, info, keep, restore)
    expected = _decode_without_xattn_by_hand(variables, enc, restore, task_queries=True)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # The same shared weights with the cross-attention block give another output.
    xattn_out = _decoder().apply({**variables, "params": {**with_xattn["params"],
                                                          **variables["params"]}},
                                 enc, info, keep, restore)
    assert np.abs(np.asarray(xattn_out) - expected).max() > 1e-2


def test_use_task_queries_false_queries_carry_no_encoder_tokens():
    enc, info, keep, restore = _decoder_inputs()
    other = enc.at[:, :5].set(_normal(4, (2, 5, 12)))  # new visible tokens, same global token
    decoder = _decoder(use_xattn=False, use_task_queries=False)
    variables = decoder.init(KEY, enc, info, keep, restore)
    out = decoder.apply(variables, enc, info, keep, restore)
    expected = _decode_without_xattn_by_hand(variables, enc, restore, task_queries=False)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out, decoder.apply(variables, other, info, keep, restore))
    # With the cross-attention the visible tokens still reach the output, through the context.
    xattn = _decoder(use_task_queries=False)
    variables = xattn.init(KEY, enc, info, keep, restore)
    assert np.abs(np.asarray(xattn.apply(variables, enc, info, keep, restore)) -
                  np.asarray(xattn.apply(variables, other, info, keep, restore))).max() > 1e-3


def test_learnable_pos_emb_decoder_is_a_trunc_normal_parameter_with_a_gradient():
    enc, info, keep, restore = _decoder_inputs()
    decoder = _decoder(learnable_pos_emb=True)
    variables = decoder.init(KEY, enc, info, keep, restore)
    assert "buffers" not in variables
    pos = np.asarray(variables["params"]["pos_emb"])
    # Official SpatialOutputAdapter: trunc_normal_(std=0.02), not the sin-cos grid.
    assert pos.shape == (1, 2, 2, 16) and 0.01 < pos.std() < 0.03
    grad = jax.jit(jax.grad(lambda p: jnp.sum(
        decoder.apply({"params": p}, enc, info, keep, restore) ** 2)))(variables["params"])
    assert np.abs(np.asarray(grad["pos_emb"])).min() > 0


def test_interpolate_class_emb_averages_patches_then_projects_1x1():
    labels = jax.random.randint(KEY, (2, 8, 8), 0, 5)
    adapter = SemSegInputAdapter(5, 4, 8, dim_tokens=16, image_size=32, dim_class_emb=6,
                                 interpolate_class_emb=True)
    variables = adapter.init(KEY, labels)
    p = jax.tree.map(np.asarray, variables["params"])
    # Official `proj` = Sequential(Upsample, Conv2d(6, 16, 1)): only 'proj.1' has weights,
    # (16, 6, 1, 1) in PyTorch, (1, 1, 6, 16) here.
    assert jax.tree.map(np.shape, p["proj"]) == {"1": {"kernel": (1, 1, 6, 16), "bias": (16,)}}
    plain = adapter.clone(interpolate_class_emb=False).init(KEY, labels)["params"]["proj"]
    assert plain["kernel"].shape == (2, 2, 6, 16)
    # Bilinear down-sampling by 2 (align_corners False) averages each 2x2 block of embeddings.
    emb = p["class_emb"]["embedding"][np.asarray(labels)]  # (2, 8, 8, 6)
    pooled = emb.reshape(2, 4, 2, 4, 2, 6).mean((2, 4))
    expected = pooled @ p["proj"]["1"]["kernel"][0, 0] + p["proj"]["1"]["bias"]
    expected = (expected + np.asarray(variables["buffers"]["pos_emb"])).reshape(2, 16, 16)
    np.testing.assert_allclose(adapter.apply(variables, labels), expected, rtol=1e-5, atol=1e-6)


def test_apply_init_scale_gives_the_head_a_trunc_normal_init_of_std_0_02_times_scale():
    x = _normal(1, (2, 5, 64))
    stds = {}
    for apply in (False, True):
        head = LinearOutputAdapter(500, init_scale=0.1, apply_init_scale=apply)
        kernel = np.asarray(head.init(KEY, x)["params"]["head"]["kernel"])  # (64, 500)
        stds[apply] = kernel.std()
    assert abs(stds[True] / (0.02 * 0.1) - 1) < 0.03, stds
    assert abs(stds[False] / np.sqrt(2 / (64 + 500)) - 1) < 0.03, stds  # MultiMAE's xavier re-init


def test_interpolate_mode_nearest_repeats_the_final_layer_pixels():
    """preds_per_patch 9 on a 4x4 grid: a 12x12 map resized to 32x32 (a non-integer factor)."""
    tokens = _normal(1, (2, 17, 16))
    info = {"tasks": {"rgb": {"num_tokens": 16, "start_idx": 0, "end_idx": 16}},
            "image_size": (32, 32), "num_task_tokens": 16, "num_global_tokens": 1}
    head = ConvNeXtAdapter(2, embed_dim=18, preds_per_patch=9, patch_size=8, depth=1)
    variables = head.init(KEY, tokens, info)
    outputs = {}
    for mode in ("bilinear", "nearest"):
        outputs[mode], state = jax.jit(lambda v, t, m=head.clone(interpolate_mode=mode): m.apply(
            v, t, info, capture_intermediates=lambda mdl, _: mdl.name == "final_layer"))(
            variables, tokens)
    final = np.asarray(state["intermediates"]["final_layer"]["__call__"][0])
    assert final.shape == (2, 12, 12, 2)
    src = np.floor(np.arange(32) * 12 / 32).astype(int)  # PyTorch legacy 'nearest'
    np.testing.assert_array_equal(outputs["nearest"], final[:, src][:, :, src])
    assert np.abs(np.asarray(outputs["bilinear"]) - np.asarray(outputs["nearest"])).max() > 1e-3


def _grads_close(a, b, rtol: float):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.abs(x - y).max() <= rtol * np.abs(y).max()  # float32 summation order only


def test_scan_blocks_gives_the_unrolled_outputs_and_gradients_with_and_without_remat():
    model = MultiMAE({"rgb": PatchedInputAdapter(3, 1, 8, image_size=16)}, None, dim_tokens=16,
                     depth=3, num_heads=2)
    x = {"rgb": _normal(1, (2, 16, 16, 3))}
    params = model.init(KEY, x, mask_inputs=False)
    # the same parameter tree, blocks '0', '1', '2' (the official names)
    assert (jax.tree.structure(model.clone(scan_blocks=True).init(KEY, x, mask_inputs=False))
            == jax.tree.structure(params))
    assert sorted(params["params"]["encoder"]) == ["0", "1", "2"]

    def loss(m, p):  # train=True without drop path or dropout: nothing random
        out, _ = m.apply(p, x, mask_inputs=False, train=True, rngs={"dropout": KEY})
        return jnp.sum(out ** 2)
    want = jax.jit(jax.value_and_grad(lambda p: loss(model, p)))(params)
    for remat in (False, True):
        m = model.clone(scan_blocks=True, remat=remat)
        jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: loss(m, p)))(params))
        assert jaxpr.count("scan[") == 2  # one loop forward, one backward: not unrolled
        got = jax.jit(jax.value_and_grad(lambda p: loss(m, p)))(params)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
        _grads_close(got[1], want[1], 1e-6)
    # every block's output (MultiViT's return_all_layers, for DPT heads)
    vit = MultiViT({"rgb": PatchedInputAdapter(3, 1, 8, image_size=16)}, None, dim_tokens=16,
                   depth=3, num_heads=2)
    variables = vit.init(KEY, x)
    unrolled = vit.apply(variables, x, return_all_layers=True)
    scanned = vit.clone(scan_blocks=True).apply(variables, x, return_all_layers=True)
    assert len(scanned) == 3
    for a, b in zip(scanned, unrolled):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_scan_blocks_applies_drop_path():
    model = MultiViT({"rgb": PatchedInputAdapter(3, 1, 8, image_size=16)}, None, dim_tokens=16,
                     depth=2, num_heads=2, drop_path_rate=0.9, scan_blocks=True)
    x = {"rgb": _normal(1, (4, 16, 16, 3))}
    variables = model.init(KEY, x)
    evaluated = model.apply(variables, x)
    trained = [model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(k)})
               for k in range(2)]
    # block 1 (rate 0.9) drops or rescales each sample's branches by 1 / 0.1
    assert not np.allclose(trained[0], evaluated) and not np.allclose(trained[0], trained[1])


def test_gather_grad_gather_equals_the_autodiff_scatter():
    tasks = ("rgb", "depth", "semseg")  # semseg: the class embedding's gradient too
    model = pretrain_multimae("tiny", tasks, tasks, image_size=16, patch_size=8, decoder_dim=16,
                              decoder_depth=1, decoder_num_heads=2, dim_tokens=16, depth=2,
                              num_heads=2, num_classes=5)
    x = {"rgb": _normal(1, (2, 16, 16, 3)), "depth": _normal(2, (2, 16, 16, 1)),
         "semseg": jax.random.randint(jax.random.key(4), (2, 4, 4), 0, 5)}
    params = model.init(KEY, x, mask_inputs=False)

    def loss(m, p):
        preds, _ = m.apply(p, x, rngs={"masking": jax.random.key(3)}, num_encoded_tokens=5)
        return sum(jnp.sum(v ** 2) for v in preds.values()), preds
    results = {}
    for mode in ("gather", "scatter"):
        m = model.clone(gather_grad=mode)
        jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: loss(m, p)[0]))(params))
        # the transposes of the token gathers and of the class-embedding lookup
        # (tests/test_step_hlo.py counts them)
        assert ("scatter-add" in jaxpr) == (mode == "scatter")
        results[mode] = jax.jit(jax.value_and_grad(lambda p: loss(m, p), has_aux=True))(params)
    (_, gathered), g = results["gather"]
    (_, scattered), s = results["scatter"]
    jax.tree.map(np.testing.assert_array_equal, gathered, scattered)
    _grads_close(g, s, 1e-6)
