"""Weights in and out: official / timm .pth -> Flax -> official layout, and our checkpoints."""
import json

import chex
import jax
import numpy as np
import pytest

from multimae_jax import load_pretrained, save_checkpoint
from multimae_jax.convert import export, official, pth_reader, timm
from multimae_jax.convert.__main__ import main as convert_main
from multimae_jax.models.presets import pretrain_multimae
from multimae_jax.models.spec import abstract_variables, from_spec, to_spec

ATOL = 1e-4
TINY_HEADS = dict(num_heads=4, decoder_num_heads=4)  # the fixtures' heads; weights do not record them


def pretrain_inputs(data):
    inputs = {"rgb": data["input/rgb"].transpose(0, 2, 3, 1),
              "depth": data["input/depth"].transpose(0, 2, 3, 1),
              "semseg": data["input/semseg"].astype(np.int32)}
    masks = {t: data[f"mask/{t}"].astype(np.int32) for t in inputs}
    return inputs, masks


def assert_preds_match(model, variables, data):
    inputs, masks = pretrain_inputs(data)
    preds, _ = model.apply(variables, inputs, masks)
    assert set(preds) == {"rgb", "depth", "semseg", "norm_rgb"}
    for task, pred in preds.items():
        np.testing.assert_allclose(np.asarray(pred), data[f"pred/{task}"].transpose(0, 2, 3, 1),
                                   atol=ATOL, rtol=0, err_msg=task)


def test_convert_cli_then_load_reproduces_official(official_dir, official_npz, tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert convert_main([str(official_dir / "pretrain_tiny.pth"), str(out),
                         "--num_heads", "4", "--decoder_num_heads", "4"]) == 0
    assert "MultiMAE" in capsys.readouterr().out
    model, variables = load_pretrained(out)
    assert_preds_match(model, variables, official_npz("pretrain_tiny"))


def test_relative_paths_reach_orbax_as_absolute(official_dir, official_npz, official_state_dict,
                                                tmp_path, monkeypatch):
    """The README's commands with relative paths (Orbax itself accepts only absolute ones)."""
    monkeypatch.chdir(tmp_path)
    assert convert_main([str(official_dir / "pretrain_tiny.pth"), "ckpt", "--num_heads", "4",
                         "--decoder_num_heads", "4"]) == 0
    assert convert_main(["ckpt", "back.safetensors"]) == 0
    chex.assert_trees_all_equal(export.load_exported("back.safetensors"),
                                official_state_dict("pretrain_tiny"))
    model, variables = load_pretrained("ckpt")
    assert_preds_match(model, variables, official_npz("pretrain_tiny"))
    save_checkpoint(model, variables, "again")
    chex.assert_trees_all_equal(load_pretrained("again")[1], variables)


def test_export_roundtrip_is_the_official_state_dict(official_dir, official_state_dict, tmp_path):
    for name in ("pretrain_tiny", "multivit_heads_tiny"):
        model, variables = load_pretrained(official_dir / f"{name}.pth", **TINY_HEADS)
        path = tmp_path / f"{name}.safetensors"
        export.save_state_dict(official.flax_to_official(variables), path)
        back = export.load_exported(path)
        want = official_state_dict(name)
        assert set(back) == set(want), set(back) ^ set(want)  # DPT aliases included
        for key, value in want.items():
            np.testing.assert_array_equal(back[key], value, err_msg=key)
        # and the exported file loads back as a model
        model2, variables2 = load_pretrained(path, **TINY_HEADS)
        assert to_spec(model2) == to_spec(model)
        chex.assert_trees_all_equal(variables2, variables)


def test_timm_export_is_the_official_multimae_to_vit(official_dir, tmp_path, capsys):
    """vit_tiny_timm.pth is the official multimae_to_vit of multivit_heads_tiny.pth."""
    want = pth_reader.load_state_dict(official_dir / "vit_tiny_timm.pth")
    for suffix in (".safetensors", ".npz"):
        out = tmp_path / f"vit{suffix}"
        assert convert_main([str(official_dir / "multivit_heads_tiny.pth"), str(out),
                             "--format", "timm", "--num_heads", "4"]) == 0
        assert "timm ViT" in capsys.readouterr().out
        got = export.load_exported(out)
        assert set(got) == set(want), set(got) ^ set(want)
        for key, value in want.items():
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
            assert got[key].tobytes() == value.tobytes(), key  # bit-equal


def test_timm_layout_roundtrips(official_dir, official_state_dict):
    vit = pth_reader.load_state_dict(official_dir / "vit_tiny_timm.pth")
    chex.assert_trees_all_equal(timm.official_to_timm(timm.timm_to_official(vit)), vit)
    # the other way: the rgb encoder of a MultiViT comes back, the rest is dropped
    multivit = official_state_dict("multivit_heads_tiny")
    rgb_encoder = {k: v for k, v in multivit.items()
                   if k.startswith(("global_tokens", "input_adapters.rgb.", "encoder."))}
    chex.assert_trees_all_equal(timm.timm_to_official(timm.official_to_timm(multivit)),
                                rgb_encoder)


def test_timm_export_refusals(official_state_dict, tmp_path, capsys):
    sd = official_state_dict("multivit_heads_tiny")
    two_tokens = sd | {"global_tokens": np.concatenate([sd["global_tokens"]] * 2, axis=1)}
    with pytest.raises(ValueError, match="has 2 global tokens.*without --format timm"):
        timm.official_to_timm(two_tokens)
    no_rgb = {k: v for k, v in sd.items() if not k.startswith("input_adapters.rgb.")}
    with pytest.raises(ValueError, match="no rgb input adapter.*export a checkpoint with an rgb"):
        timm.official_to_timm(no_rgb)
    # through the CLI: exit status 2 and the reason, naming the file
    src = tmp_path / "no_rgb.safetensors"
    export.save_state_dict(no_rgb, src)
    assert convert_main([str(src), str(tmp_path / "vit.npz"), "--format", "timm",
                         "--num_heads", "4"]) == 2
    assert "no_rgb.safetensors: has no rgb input adapter" in capsys.readouterr().err
    assert not (tmp_path / "vit.npz").exists()
    with pytest.raises(SystemExit):  # a checkpoint folder has no timm layout
        convert_main([str(src), str(tmp_path / "ckpt"), "--format", "timm"])


def test_spec_roundtrip_builds_the_same_model():
    model = pretrain_multimae(dim_tokens=64, depth=2, num_heads=4, image_size=64, decoder_dim=32)
    again = from_spec(json.loads(json.dumps(to_spec(model))))
    shapes = lambda m: jax.tree.map(lambda a: a.shape, abstract_variables(m))
    assert shapes(again) == shapes(model)
    assert to_spec(again) == to_spec(model)


def test_mismatch_lists_missing_unexpected_and_wrong_shapes(official_state_dict):
    model = pretrain_multimae(dim_tokens=64, depth=4, num_heads=4, image_size=64, decoder_dim=32,
                              decoder_depth=1, decoder_num_heads=4, num_classes=10,
                              dim_class_emb=16)
    sd = dict(official_state_dict("pretrain_tiny"))
    sd.pop("encoder.0.attn.qkv.weight")
    sd["encoder.1.mlp.fc1.weight"] = sd["encoder.1.mlp.fc1.weight"][:10]
    sd["extra.thing"] = np.zeros(3)
    with pytest.raises(ValueError) as err:
        official.official_to_flax(sd, abstract_variables(model), "file.pth")
    msg = str(err.value)
    assert "file.pth" in msg and "missing" in msg and "encoder/0/attn/qkv/kernel" in msg
    assert "unexpected" in msg and "extra.thing" in msg
    assert "wrong shape" in msg and "encoder.1.mlp.fc1.weight" in msg


def test_bad_checkpoint_path_errors(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    assert convert_main([str(bad), str(tmp_path / "out")]) == 2
    assert "notes.txt" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        load_pretrained(tmp_path / "missing.pth")
