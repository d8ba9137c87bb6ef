"""Broken and hostile weight files: `load_pretrained`, `finetune_init` and the convert CLI answer
with one `CheckpointFileError` line naming the file, and code in a pickle never runs."""
import os
import pickle
import shlex
import zipfile

import numpy as np
import pytest

from multimae_jax import finetune_init, load_pretrained
from multimae_jax.convert.__main__ import main as convert_main
from multimae_jax.convert.errors import CheckpointFileError
from multimae_jax.convert.export import save_state_dict


def _good(path):
    save_state_dict({"global_tokens": np.ones((1, 1, 1024), np.float32)}, path)
    return path


def _copy(src, path):
    path.write_bytes(src.read_bytes())
    return path


def _cut(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def _flipped(path):
    """16 bytes flipped in the middle (inside array data): the zip directory is intact, a CRC
    is not."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    data[start:start + 16] = bytes(b ^ 0xFF for b in data[start:start + 16])
    path.write_bytes(bytes(data))
    return path


def _write(data: bytes):
    return lambda path, _: path.write_bytes(data)


# name -> writer(path, official fixtures folder)
BROKEN = {
    "truncated.safetensors": lambda p, _: _cut(_good(p)),
    "random.safetensors": _write(np.random.default_rng(0).bytes(4096)),
    "empty.safetensors": _write(b""),
    "truncated.npz": lambda p, _: _cut(_good(p)),
    "random.npz": _write(np.random.default_rng(1).bytes(4096)),
    "empty.npz": _write(b""),
    "flipped.npz": lambda p, _: _flipped(_good(p)),
    # a list of dicts becomes a pickled object array
    "objects.npz": lambda p, _: np.savez(p, [{"a": 1}, {"b": 2}]),
    "truncated.pth": lambda p, d: _cut(_copy(d / "pretrain_tiny.pth", p)),
    "flipped.pth": lambda p, d: _flipped(_copy(d / "pretrain_tiny.pth", p)),
    "random.pth": _write(np.random.default_rng(2).bytes(4096)),
    "empty.pth": _write(b""),
}


def _assert_one_line_error(path, capsys):
    """load_pretrained, finetune_init and the CLI all refuse `path` with one line naming it."""
    for load in (load_pretrained, lambda p: finetune_init({}, p)):
        with pytest.raises(CheckpointFileError) as err:
            load(path)
        message = str(err.value)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
        assert "allow_pickle" not in message
    assert convert_main([str(path), str(path.parent / "out")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), lines
    assert not (path.parent / "out").exists()


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_file_is_one_line_naming_it(tmp_path, official_dir, capsys, name):
    path = tmp_path / name
    BROKEN[name](path, official_dir)
    _assert_one_line_error(path, capsys)


# --- code in a pickle ---------------------------------------------------------------------------


class _RunsCode:
    """Unpickling this object runs `touch marker` (the pickle calls os.system)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _live_payload(marker) -> bytes:
    """A checkpoint-shaped pickle that runs code; checked to be live once with plain pickle."""
    payload = pickle.dumps({"model": {"w": _RunsCode(marker)}}, protocol=2)
    pickle.loads(payload)
    assert marker.exists(), "the payload should run code under a plain pickle.load"
    marker.unlink()
    return payload


def _zip_pth(path, payload):
    with zipfile.ZipFile(path, "w") as archive:  # the torch.save layout
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")


def _legacy_pth(path, payload):
    # magic number, protocol version, sys_info, then the object (torch/serialization.py: _save)
    path.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001)
                     + pickle.dumps({"little_endian": True}) + payload)


@pytest.mark.parametrize("name,write", [("evil.pth", _zip_pth), ("legacy_evil.pth", _legacy_pth)])
def test_pth_whose_pickle_runs_code_is_refused(tmp_path, capsys, name, write):
    marker = tmp_path / "MARKER"
    path = tmp_path / name
    write(path, _live_payload(marker))
    _assert_one_line_error(path, capsys)
    assert not marker.exists()


def test_npz_whose_object_array_runs_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.npz"
    np.savez(path, w=np.array([_RunsCode(marker)], dtype=object))
    with np.load(path, allow_pickle=True) as npz:
        npz["w"]  # live: unpickling it runs the code
    assert marker.exists()
    marker.unlink()
    _assert_one_line_error(path, capsys)
    assert not marker.exists()
