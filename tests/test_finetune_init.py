"""Loading a pre-trained checkpoint for fine-tuning as the official scripts do
(`run_finetuning_semseg.py: main`, `utils/pos_embed.py: interpolate_pos_embed_multimae`)."""
import chex
import jax
import numpy as np

from multimae_jax import (LinearOutputAdapter, finetune_init, load_pretrained, multivit,
                          save_checkpoint)
from multimae_jax.convert.finetune import load_for_finetuning
from multimae_jax.convert.official import flax_to_official
from multimae_jax.models.spec import example_inputs

TINY = dict(dim_tokens=64, depth=1, num_heads=4)


def init(model):
    return jax.jit(lambda x: model.init(jax.random.key(0), x))(example_inputs(model))


def test_pos_emb_is_the_bicubically_upsampled_checkpoint_grid(official_npz):
    source = multivit("base", ("rgb",), image_size=224, **TINY)  # 14x14 sin-cos grid
    target = multivit("base", ("rgb",), image_size=512, **TINY)  # 32x32 grid
    sd = flax_to_official(init(source))
    variables, report = load_for_finetuning(init(target), sd)
    got = np.asarray(variables["buffers"]["input_adapters"]["rgb"]["pos_emb"]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, official_npz("posemb_resize")["bicubic14to32/d64"], atol=1e-5)
    assert "input_adapters.rgb.pos_emb" in report["loaded"]


def test_decoders_dropped_class_emb_padded_head_kept(official_dir, official_state_dict):
    target = multivit("base", ("rgb", "depth", "semseg"), image_size=64, num_classes=10, dim_class_emb=16,
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


def test_our_checkpoint_at_a_relative_path_loads_as_its_pth(official_dir, tmp_path, monkeypatch):
    target = multivit("base", ("rgb", "depth"), image_size=96, **dict(TINY, depth=4))
    fresh = init(target)
    from_pth, report = finetune_init(fresh, official_dir / "pretrain_tiny.pth")
    monkeypatch.chdir(tmp_path)
    save_checkpoint(*load_pretrained(official_dir / "pretrain_tiny.pth", num_heads=4,
                                     decoder_num_heads=4), "ckpt")
    from_ours, report_ours = finetune_init(fresh, "ckpt")
    chex.assert_trees_all_equal(from_ours, from_pth)
    assert {k: sorted(v) for k, v in report_ours.items()} == {k: sorted(v) for k, v in report.items()}
    assert "input_adapters.rgb.pos_emb" in report["loaded"]
