"""The official folder layout: pairing by path, clear errors, the validator and the packer."""
import os

import numpy as np
import pytest

from data_helpers import TASKS, sample_arrays, write_dataset
from multimae_jax.data.check import main as check_main
from multimae_jax import modalities
from multimae_jax.data.codecs import CorruptFileError, encode
from multimae_jax.data.folder import FolderSource
from multimae_jax.data.pack import main as pack_main
from multimae_jax.data.records import decode_record
from multimae_jax.data.shards import ShardSource, shard_name


def index_of(key: str) -> int:
    return int(key.rsplit("/s", 1)[1])


def test_samples_are_paired_by_path_not_by_position(tmp_path):
    keys = write_dataset(tmp_path)
    # one depth file is missing: pairing by position would shift every later sample.
    os.remove(tmp_path / "depth" / "n02" / "s004.png")
    with pytest.raises(ValueError, match=r"1 sample\(s\) have no depth file .*n02/s004"):
        FolderSource(tmp_path, TASKS)
    source = FolderSource(tmp_path, TASKS, allow_incomplete=True)
    assert len(source) == len(keys) - 1 and "n02/s004" not in source.scan.samples
    for i in range(len(source)):
        record = decode_record(source[i], TASKS)
        want = sample_arrays(index_of(record["key"]))
        for task in TASKS:
            np.testing.assert_array_equal(record[task], want[task], err_msg=record["key"])
        assert source.classes[record["label"]] == record["key"].split("/")[0]


def test_extra_and_duplicate_files_are_reported(tmp_path):
    write_dataset(tmp_path, num_samples=6)
    (tmp_path / "semseg" / "n01" / "s100.png").write_bytes(b"x")  # no rgb/depth partner
    (tmp_path / "rgb" / "n01" / "s000.jpg").write_bytes(b"x")  # second rgb file for s000
    with pytest.raises(ValueError) as err:
        FolderSource(tmp_path, TASKS)
    assert "no rgb file" in str(err.value) and "n01/s100" in str(err.value)
    assert "several rgb files" in str(err.value) and "n01/s000" in str(err.value)


def test_missing_modality_folder(tmp_path):
    write_dataset(tmp_path, num_samples=3)
    with pytest.raises(FileNotFoundError, match="normal: missing; the layout is ROOT/<modality>"):
        FolderSource(tmp_path, ("rgb", "normal"))


def test_corrupt_file_error_names_the_file(tmp_path):
    write_dataset(tmp_path, num_samples=3)
    bad = tmp_path / "depth" / "n02" / "s001.png"
    bad.write_bytes(b"\x89PNG truncated")
    source = FolderSource(tmp_path, TASKS)
    i = source.scan.samples.index("n02/s001")
    with pytest.raises(CorruptFileError, match=str(bad)):
        decode_record(source[i], TASKS)
    assert decode_record(source[i], TASKS, skip_corrupt=True) is None


def test_check_reports_counts_and_problems(tmp_path, capsys):
    write_dataset(tmp_path, num_samples=9)
    assert check_main([str(tmp_path), "--num_workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "9 complete samples in 3 classes" in out and "n01: 3" in out and "no problems" in out
    (tmp_path / "depth" / "n01" / "s000.png").write_bytes(b"junk")
    os.remove(tmp_path / "semseg" / "n02" / "s001.png")
    big = sample_arrays(3, size=40)
    (tmp_path / "rgb" / "n01" / "s003.png").write_bytes(encode(modalities.get("rgb"), big["rgb"]))
    assert check_main([str(tmp_path), "--num_workers", "1", "--num_classes", "5"]) == 1
    out = capsys.readouterr().out
    assert "n02/s001: no semseg file" in out
    assert "s000.png: cannot decode" in out
    assert "n01/s003: modalities differ in size" in out
    assert "label 6 >= 5 classes" in out  # sample 6 has label 6 % 7 = 6


def test_pack_restartable_and_equal_to_folder(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "shards"
    write_dataset(src, num_samples=10, rgb_ext=".jpg")
    assert pack_main([str(src), str(out), "--num_shards", "3"]) == 0
    folder, shards = FolderSource(src, TASKS), ShardSource(out, TASKS)
    assert len(shards) == len(folder) == 10 and shards.classes == folder.classes
    for i in range(10):
        a, b = decode_record(folder[i], TASKS), decode_record(shards[i], TASKS)
        assert a["key"] == b["key"] and a["label"] == b["label"]
        for task in TASKS:
            np.testing.assert_array_equal(a[task], b[task])
    # an interrupted packing: one shard lost; the re-run writes only that one
    kept = out / shard_name(0, 3)
    stamp = kept.stat().st_mtime_ns
    os.remove(out / shard_name(1, 3))
    with pytest.raises(ValueError, match="incomplete packing"):
        ShardSource(out, TASKS)
    assert pack_main([str(src), str(out), "--num_shards", "3"]) == 0
    assert kept.stat().st_mtime_ns == stamp and len(ShardSource(out, TASKS)) == 10
    assert pack_main([str(src), str(out), "--num_shards", "4"]) == 2  # another packing
    assert "another packing" in capsys.readouterr().err


def test_decoded_shards_hold_arrays(tmp_path):
    src, out = tmp_path / "src", tmp_path / "shards"
    write_dataset(src, num_samples=4)
    assert pack_main([str(src), str(out), "--num_shards", "2", "--decoded"]) == 0
    record = ShardSource(out, TASKS)[2]
    assert isinstance(record["depth"], np.ndarray)
    np.testing.assert_array_equal(decode_record(record, TASKS)["depth"],
                                  sample_arrays(index_of(record["key"]))["depth"])
