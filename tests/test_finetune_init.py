"""Loading a pre-trained checkpoint for fine-tuning as the official scripts do (reference §1.7)."""
import jax
import numpy as np

from multimae_jax import LinearOutputAdapter, finetune_init, multivit
from multimae_jax.convert.finetune import finetune_init as finetune_init_sd
from multimae_jax.convert.official import flax_to_official
from multimae_jax.models.spec import example_inputs

TINY = dict(dim_tokens=64, depth=1, num_heads=4)


def init(model):
    return jax.jit(lambda x: model.init(jax.random.key(0), x))(example_inputs(model))


def test_pos_emb_is_the_bicubically_upsampled_checkpoint_grid(official_npz):
    source = multivit("base", ("rgb",), image_size=224, **TINY)  # 14x14 sin-cos grid
    target = multivit("base", ("rgb",), image_size=512, **TINY)  # 32x32 grid
    sd = flax_to_official(init(source))
    variables, report = finetune_init_sd(init(target), sd)
    got = np.asarray(variables["buffers"]["input_adapters"]["rgb"]["pos_emb"]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, official_npz("posemb_resize")["bicubic14to32/d64"], atol=1e-5)
    assert "input_adapters.rgb.pos_emb" in report["loaded"]


def test_decoders_dropped_class_emb_padded_head_kept(official_dir, official_state_dict):
    target = multivit("base", ("rgb", "depth", "semseg"), image_size=64, semseg_num_classes=10, dim_class_emb=16,
                      emb_padding_idx=10, heads={"cls": LinearOutputAdapter(5)}, **dict(TINY, depth=4))
    fresh = init(target)
    variables, report = finetune_init(fresh, official_dir / "pretrain_tiny.pth")
    want = official_state_dict("pretrain_tiny")
    emb = np.asarray(variables["params"]["input_adapters"]["semseg"]["class_emb"]["embedding"])
    assert emb.shape == (11, 16)
    np.testing.assert_array_equal(emb[:10], want["input_adapters.semseg.class_emb.weight"])
    np.testing.assert_array_equal(emb[10], 0)
    np.testing.assert_array_equal(
        np.asarray(variables["params"]["encoder"]["3"]["mlp"]["fc2"]["bias"]),
        want["encoder.3.mlp.fc2.bias"])
    np.testing.assert_array_equal(np.asarray(variables["params"]["output_adapters"]["cls"]["head"]["kernel"]),
                                  np.asarray(fresh["params"]["output_adapters"]["cls"]["head"]["kernel"]))
    assert report["kept_init"] == ["output_adapters.cls.head.bias", "output_adapters.cls.head.weight",
                                   "output_adapters.cls.norm.bias", "output_adapters.cls.norm.weight"]
    assert not any(k.startswith("output_adapters") for k in report["loaded"] + report["ignored"])
