"""Weights in and out: official / timm .pth -> Flax -> official layout, and our checkpoints."""
import json

import chex
import jax
import numpy as np
import pytest

from multimae_jax import load_pretrained, save_checkpoint
from multimae_jax.convert import export, official
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
