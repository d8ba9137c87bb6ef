"""The fine-tuning param groups against the official ones: (weight decay, lr scale) of every
parameter of a ViT-B MultiViT as `utils/optim_factory.py: create_optimizer` builds them in the
fine-tuning scripts (tests/fixtures/official/finetune_param_groups.json), and one AdamW step
applying them as torch does."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from multimae_jax.convert.official import official_key
from multimae_jax.models.dense_heads import ConvNeXtAdapter, DPTOutputAdapter
from multimae_jax.models.multimae import MultiViT
from multimae_jax.models.presets import input_adapter, vit_preset
from multimae_jax.train.optimizer import lr_multipliers, path_names
from multimae_jax.train.param_groups import (finetune_decay_mask, finetune_optimizer,
                                             finetune_optimizer_fields, layer_decay_rules,
                                             no_weight_decay_names)

SIZE = 64  # parameter names and layer ids do not depend on it


def vit_b(tasks, heads, **adapter_kwargs) -> MultiViT:
    """The fine-tuning MultiViT-B as the official scripts build it (semseg: COCO's 133 classes
    plus the padding row)."""
    inputs = {t: input_adapter(t, SIZE, 16, 133 if t == "semseg" else None, **adapter_kwargs)
              for t in tasks}
    return MultiViT(inputs, heads, **vit_preset("base"))


MODELS = {  # the cases of tests/official/param_group_cases.py
    "semseg_rgbd": lambda: vit_b(("rgb", "depth"), {"semseg": ConvNeXtAdapter(150)}),
    "semseg_learnable_pos_emb": lambda: vit_b(("rgb", "depth", "semseg"),
                                              {"semseg": ConvNeXtAdapter(150)},
                                              learnable_pos_emb=True),
    "depth_no_scale_input_lr": lambda: vit_b(("rgb",), {"depth": DPTOutputAdapter(1)}),
}


def abstract_params(model):
    x = {"rgb": jnp.zeros((1, SIZE, SIZE, 3)), "depth": jnp.zeros((1, SIZE, SIZE, 1)),
         "semseg": jnp.zeros((1, SIZE // 4, SIZE // 4), jnp.int32)}
    x = {t: v for t, v in x.items() if t in model.input_adapters}
    return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


@pytest.fixture(scope="module")
def cases(official_dir):
    return json.loads((official_dir / "finetune_param_groups.json").read_text())["cases"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_weight_decay_and_lr_scale_of_every_parameter_equal_the_official(cases, name):
    case = cases[name]
    model = MODELS[name]()
    trainable = {"params": abstract_params(model)}
    assert model.depth == case["num_layers"]
    skip = no_weight_decay_names(model)
    assert skip == set(case["skip_list"])
    decays = finetune_decay_mask(trainable, skip)
    mults = lr_multipliers(trainable, layer_decay_rules(model.depth, case["layer_decay"],
                                                        case["scale_input_lr"]))
    ours = {official_key(path.split("/")[1:]): (case["weight_decay"] if d else 0.0, m)
            for path, d, m in zip(jax.tree.leaves(path_names(trainable)),
                                  jax.tree.leaves(decays), jax.tree.leaves(mults))}
    # every trainable parameter has a group, and no other (the frozen sin-cos pos_emb neither)
    assert sorted(ours) == sorted(case["params"])
    for key, (wd, scale) in case["params"].items():
        assert ours[key][0] == wd, key
        assert ours[key][1] == pytest.approx(scale, rel=1e-12), key


def test_the_fixture_covers_the_exact_name_rule(cases):
    """The skip list matches whole names: a 4-D learnable pos_emb is exempt, the semseg adapter's
    listed 'class_emb' (a module) exempts nothing, so class_emb.weight is decayed."""
    groups = cases["semseg_learnable_pos_emb"]["params"]
    assert groups["input_adapters.rgb.pos_emb"][0] == 0.0
    assert groups["input_adapters.semseg.class_emb.weight"][0] > 0
    assert "input_adapters.semseg.class_emb" in cases["semseg_learnable_pos_emb"]["skip_list"]


def test_layer_decay_outside_zero_one_is_an_error():
    assert layer_decay_rules(12, 1.0) == ()  # the official `--layer_decay 1`: no assigner
    with pytest.raises(ValueError, match=r"config\.optimizer\.layer_decay=1\.5"):
        layer_decay_rules(12, 1.5)


def test_one_adamw_step_applies_lr_scale_and_decoupled_decay_as_torch():
    """torch.optim.AdamW's first step for a group with lr = lr x lr_scale and weight decay wd:
    p <- p (1 - lr lr_scale wd) - lr lr_scale g / (|g| + eps), on a tree with MultiViT paths;
    layer decay 0.5 over 2 blocks, weight decay 0.1, and an lr_mults rule that overrides the
    layer decay of block 1."""
    model = MultiViT({"rgb": input_adapter("rgb", SIZE, 16)}, {"semseg": ConvNeXtAdapter(5)},
                     dim_tokens=4, depth=2, num_heads=1)
    # path: (shape, lr_scale, decayed); by hand from the official layer ids and skip rule
    table = {
        "global_tokens": ((1, 1, 4), 0.125, False),  # layer 0; exempt by name
        "input_adapters/rgb/proj/kernel": ((2, 2, 3, 4), 0.125, True),
        "input_adapters/rgb/proj/bias": ((4,), 0.125, False),
        "encoder/0/norm1/scale": ((4,), 0.25, False),  # 1-D
        "encoder/0/mlp/fc1/kernel": ((4, 8), 0.25, True),
        "encoder/1/attn/qkv/kernel": ((4, 12), 3.0, True),  # lr_mults before layer decay
        "output_adapters/semseg/proj_dec/kernel": ((4, 6), 1.0, True),  # the head: layer L + 1
        "output_adapters/semseg/blocks/0/gamma": ((6,), 1.0, False),
        "output_adapters/semseg/extra/bias": ((2, 6), 1.0, False),  # '.bias' whatever its shape
    }
    rng = np.random.default_rng(0)
    flat_p = {k: rng.normal(size=s).astype(np.float32) for k, (s, _, _) in table.items()}
    flat_g = {k: rng.normal(size=s).astype(np.float32) for k, (s, _, _) in table.items()}

    def nest(flat):
        tree = {}
        for path, value in flat.items():
            *parents, leaf = path.split("/")
            node = tree
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return {"params": tree}

    o = finetune_optimizer_fields()
    o.layer_decay, o.weight_decay = 0.5, 0.1
    o.lr_mults = (("params/encoder/1/.*", 3.0),)
    lr = 1e-2
    tx = finetune_optimizer(o, model, lambda step: lr, lambda step: o.weight_decay)
    params = nest(flat_p)
    updates, _ = tx.update(nest(flat_g), tx.init(params), params, step=0)
    got = dict(zip(jax.tree.leaves(path_names(params)),
                   jax.tree.leaves(optax.apply_updates(params, updates))))
    for path, (_, scale, decayed) in table.items():
        p, g = flat_p[path].astype(np.float64), flat_g[path].astype(np.float64)
        step_lr = lr * scale
        want = p * (1 - step_lr * (0.1 if decayed else 0.0)) - step_lr * g / (np.abs(g) + o.eps)
        np.testing.assert_allclose(got["params/" + path], want, rtol=1e-5, atol=1e-7,
                                   err_msg=path)
