"""The ViT-B pre-training model has the released parameter names, shapes and count, and the
official initialisation."""
import json
import math

import jax
import numpy as np

from multimae_jax.convert.official import flax_to_official
from multimae_jax.models.posemb import build_2d_sincos_posemb
from multimae_jax.models.presets import pretrain_multimae
from multimae_jax.models.spec import abstract_variables, example_inputs


def test_vit_b_matches_the_released_checkpoint_keys(official_dir):
    abstract = abstract_variables(pretrain_multimae("base"))
    assert sum(math.prod(a.shape) for a in jax.tree.leaves(abstract["params"])) == 97_917_072
    released = json.loads((official_dir / "multimae_b_pretrain_keys.json").read_text())["keys"]
    ours = flax_to_official(jax.tree.map(lambda a: np.zeros(a.shape, np.float32), abstract))
    assert set(ours) == set(released)
    for key, shape in released.items():
        assert list(ours[key].shape) == shape, key


def test_official_initialisation():
    model = pretrain_multimae("small", image_size=64, decoder_dim=64, decoder_num_heads=2)
    v = jax.jit(lambda x: model.init(jax.random.key(0), x, mask_inputs=False))(example_inputs(model))
    p, b = v["params"], v["buffers"]
    d = 384
    qkv = np.asarray(p["encoder"]["0"]["attn"]["qkv"]["kernel"])  # (in, 3 out)
    bound = math.sqrt(6 / (d + d))  # split xavier: out / 3 + in
    assert np.abs(qkv).max() <= bound and np.abs(qkv).max() > 0.95 * bound
    fc1 = np.asarray(p["encoder"]["0"]["mlp"]["fc1"]["kernel"])
    assert 0.95 * math.sqrt(6 / (d + 4 * d)) < np.abs(fc1).max() <= math.sqrt(6 / (d + 4 * d))
    np.testing.assert_array_equal(np.asarray(p["encoder"]["0"]["mlp"]["fc1"]["bias"]), 0)
    np.testing.assert_array_equal(np.asarray(p["encoder"]["0"]["norm1"]["scale"]), 1)
    proj = p["input_adapters"]["rgb"]["proj"]
    proj_bound = math.sqrt(6 / (d + 3 * 256))  # xavier over (out, in * kh * kw)
    assert 0.95 * proj_bound < np.abs(np.asarray(proj["kernel"])).max() <= proj_bound
    bias_bound = 1 / math.sqrt(3 * 256)  # PyTorch default conv bias
    assert 0.8 * bias_bound < np.abs(np.asarray(proj["bias"])).max() <= bias_bound
    assert abs(float(np.std(p["global_tokens"])) - 0.02) < 0.004
    np.testing.assert_array_equal(np.asarray(p["output_adapters"]["rgb"]["mask_token"]), 0)
    assert abs(float(np.std(p["input_adapters"]["semseg"]["class_emb"]["embedding"])) - 0.02) < 0.002
    np.testing.assert_allclose(np.asarray(b["input_adapters"]["rgb"]["pos_emb"]),
                               build_2d_sincos_posemb(4, 4, d))
    assert "pos_emb" not in p["input_adapters"]["rgb"]  # fixed, not trained
