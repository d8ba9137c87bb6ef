"""Tests for the torch-free checkpoint reader and the state_dict exporter."""

from __future__ import annotations

import argparse
import json
import pickle
import zipfile

import numpy as np
import pytest

from multimae_jax.convert.export import load_exported, save_state_dict
from multimae_jax.convert.pth_reader import extract_state_dict, load_state_dict, read_pth


def _assert_same(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        np.testing.assert_array_equal(actual[key], value, err_msg=key)


# --- official fixtures -------------------------------------------------------


@pytest.mark.parametrize("name", ["pretrain_tiny", "multivit_heads_tiny"])
def test_fixture_matches_npz(official_dir, official_state_dict, name):
    # These files hold non-contiguous tensors (pos_emb with stride (1024, 1, 256, 64)).
    _assert_same(load_state_dict(official_dir / f"{name}.pth"), official_state_dict(name))


def test_pretrain_extra_entries(official_dir):
    ckpt = read_pth(official_dir / "pretrain_tiny.pth")
    assert set(ckpt) == {"model", "epoch", "args"}
    assert ckpt["epoch"] == 3
    assert ckpt["args"].in_domains == ["rgb", "depth", "semseg"]


def test_dpt_aliases_are_equal(official_dir):
    sd = load_state_dict(official_dir / "multivit_heads_tiny.pth")
    dpt = "output_adapters.depth_dpt."
    for i in range(4):
        for kind in ("weight", "bias"):
            np.testing.assert_array_equal(
                sd[f"{dpt}act_postprocess.{i}.0.{kind}"], sd[f"{dpt}act_{i + 1}_postprocess.0.{kind}"]
            )
        np.testing.assert_array_equal(
            sd[f"{dpt}scratch.layer_rn.{i}.weight"], sd[f"{dpt}scratch.layer{i + 1}_rn.weight"]
        )


def test_timm_vit_matches_multivit_encoder(official_dir, official_state_dict):
    sd = load_state_dict(official_dir / "vit_tiny_timm.pth")
    shapes = json.loads((official_dir / "vit_tiny_timm.json").read_text())["keys"]
    assert {k: list(v.shape) for k, v in sd.items()} == shapes

    multivit = official_state_dict("multivit_heads_tiny")
    blocks = {k: v for k, v in sd.items() if k.startswith("blocks.")}
    _assert_same(blocks, {k: multivit["encoder." + k[len("blocks."):]] for k in blocks})
    for kind in ("weight", "bias"):
        np.testing.assert_array_equal(
            sd[f"patch_embed.proj.{kind}"], multivit[f"input_adapters.rgb.proj.{kind}"]
        )
    np.testing.assert_array_equal(sd["cls_token"], multivit["global_tokens"])
    assert not sd["pos_embed"][0, 0].any()
    rgb_pos = multivit["input_adapters.rgb.pos_emb"]  # (1, D, h, w)
    np.testing.assert_array_equal(sd["pos_embed"][0, 1:], rgb_pos[0].reshape(rgb_pos.shape[1], -1).T)


# --- synthetic checkpoints -----------------------------------------------------


def _global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _lit(value) -> bytes:
    """Pickle opcodes (protocol 2, no PROTO/STOP) that push ``value``."""
    return pickle.dumps(value, protocol=2)[2:-1]


def _tensor(storage: str, key: str, numel: int, offset: int, size: tuple, stride: tuple) -> bytes:
    """Opcodes that push a tensor as torch.save writes it."""
    pid = b"(" + _lit("storage") + _global("torch", storage) + _lit(key) + _lit("cpu") + _lit(numel)
    hooks = _global("collections", "OrderedDict") + b")R"
    args = _lit(offset) + _lit(size) + _lit(stride) + _lit(False) + hooks
    return _global("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + b"tQ" + args + b"tR"


def _checkpoint(path, entries: dict[str, bytes], storages=None, byteorder="little"):
    """Write a torch.save-style zip whose data.pkl is a dict of ``entries`` (opcodes)."""
    body = b"".join(_lit(key) + value for key, value in entries.items())
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}(" + body + b"u.")
        archive.writestr("archive/byteorder", byteorder)
        for key, data in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", data)
    return path


def _layout(view: np.ndarray, base: np.ndarray) -> tuple:
    """(storage_offset, size, stride) in elements of a numpy view of ``base``."""
    offset = (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // base.itemsize
    return offset, view.shape, tuple(s // base.itemsize for s in view.strides)


def test_strides_offsets_and_shared_storage(tmp_path):
    base = np.arange(24, dtype=np.float32)
    cube = base.reshape(2, 3, 4)
    views = {  # all share storage "0"
        "cube": cube,
        "transposed": cube.transpose(2, 0, 1),
        "offset": cube[1, 1:, ::2],
        "scalar": base[7:8].reshape(()),
        "expanded": np.broadcast_to(base[2:3], (3,)),
    }
    entries = {k: _tensor("FloatStorage", "0", 24, *_layout(v, base)) for k, v in views.items()}
    out = read_pth(_checkpoint(tmp_path / "c.pth", entries, {"0": base.tobytes()}))
    _assert_same(out, views)


def test_dtypes_big_endian_parameter_and_scalars(tmp_path):
    halves = np.array([0.5, -1.5], np.float16)
    longs = np.array([-3, 2**40], np.int64)
    bf16_bits = np.array([0x3F80, 0xC020, 0x4049], ">u2")  # 1.0, -2.5, 3.140625
    param = (_global("torch._utils", "_rebuild_parameter") + b"("
             + _tensor("LongStorage", "1", 2, 0, (2,), (1,)) + _lit(False)
             + _global("collections", "OrderedDict") + b")RtR")
    entries = {
        "half": _tensor("HalfStorage", "0", 2, 0, (2,), (1,)),
        "long": param,
        "bf16": _tensor("BFloat16Storage", "2", 3, 0, (3,), (1,)),
        "bool": _tensor("BoolStorage", "3", 2, 0, (2,), (1,)),
        "epoch": _lit(np.int64(5)),
        "best": _lit(np.float64(0.25)).replace(b"numpy._core.", b"numpy.core."),  # numpy 1.x
        "dtype": _global("torch", "bfloat16"),
        "args": _lit(argparse.Namespace(lr=0.1, tasks=["rgb"])),
    }
    storages = {"0": halves.astype(">f2").tobytes(), "1": longs.astype(">i8").tobytes(),
                "2": bf16_bits.tobytes(), "3": b"\x01\x00"}
    out = read_pth(_checkpoint(tmp_path / "c.pth", entries, storages, byteorder="big"))
    tensors = {k: out[k] for k in ("half", "long", "bf16", "bool")}
    _assert_same(tensors, {"half": halves, "long": longs, "bool": np.array([True, False]),
                           "bf16": np.array([1.0, -2.5, 3.140625], np.float32)})
    assert out["epoch"] == 5 and out["best"] == 0.25 and out["dtype"] == "torch.bfloat16"
    assert (out["args"].lr, out["args"].tasks) == (0.1, ["rgb"])


def test_layout_outside_storage_is_rejected(tmp_path):
    entries = {"w": _tensor("FloatStorage", "0", 4, 1, (2, 2), (2, 1))}
    path = _checkpoint(tmp_path / "c.pth", entries, {"0": np.zeros(4, np.float32).tobytes()})
    with pytest.raises(ValueError, match=r"c\.pth: tensor of size .* exceeds its storage"):
        read_pth(path)


def test_disallowed_global_is_refused(tmp_path):
    path = _checkpoint(tmp_path / "evil.pth", {"x": _global("os", "system") + _lit(("true",)) + b"R"})
    with pytest.raises(ValueError, match=r"evil\.pth.*'os\.system'"):
        read_pth(path)


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.pth: not a PyTorch checkpoint"):
        read_pth(text)
    other_zip = tmp_path / "other.pth"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("readme.txt", "hi")
    with pytest.raises(ValueError, match=r"other\.pth: not a PyTorch checkpoint"):
        read_pth(other_zip)


def test_legacy_checkpoint(tmp_path):
    legacy = tmp_path / "old.pth"
    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"rest")
    with pytest.raises(ValueError, match=r"old\.pth: legacy.*re-save"):
        read_pth(legacy)


def test_extract_state_dict():
    w = np.ones(2, np.float32)
    assert extract_state_dict({"state_dict": {"module.a": w, "module.b": w}}, "p") == {"a": w, "b": w}
    assert extract_state_dict({"a": w}, "p") == {"a": w}
    with pytest.raises(ValueError, match=r"ckpt\.pth: no state_dict.*\['optimizer', 'epoch'\]"):
        extract_state_dict({"optimizer": {"state": {}}, "epoch": 3}, "ckpt.pth")


# --- export --------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_export_round_trip(official_dir, tmp_path, suffix):
    sd = load_state_dict(official_dir / "multivit_heads_tiny.pth")
    sd["int"] = np.arange(6, dtype=np.int64).reshape(2, 3).T  # non-contiguous
    sd["flag"] = np.array([True, False])
    sd["half"] = np.array(1.5, np.float16)
    path = tmp_path / f"weights{suffix}"
    save_state_dict(sd, path)
    _assert_same(load_exported(path), sd)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


def test_export_bad_extension(tmp_path):
    with pytest.raises(ValueError, match="unsupported extension '.pt'"):
        save_state_dict({"a": np.zeros(1)}, tmp_path / "w.pt")
    assert not any(tmp_path.iterdir())
