"""The grain pipeline: determinism, exact resumption, per-process slices, shards == folder,
corrupt-sample skipping, global arrays over 8 devices."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from data_helpers import TASKS, write_dataset
from multimae_jax.data.codecs import CorruptFileError
from multimae_jax.data.pack import pack
from multimae_jax.data.pipeline import global_batch, make_dataset, make_source


def batches(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    write_dataset(root, num_samples=12, size=40)
    return root


def dataset(path, **kw):
    kw = {"image_size": 16, "local_batch_size": 4, "seed": 3} | kw
    return make_dataset(make_source(str(path), TASKS), TASKS, **kw)


def test_batches_have_the_model_input_layout(folder):
    (b,) = batches(dataset(folder), 1)
    assert b["rgb"].shape == (4, 16, 16, 3) and b["rgb"].dtype == np.uint8
    assert b["depth"].shape == (4, 16, 16, 1) and b["depth"].dtype == np.int32  # PIL mode I
    assert b["semseg"].shape == (4, 4, 4) and b["semseg"].dtype == np.uint8
    assert b["label"].shape == (4,)


def test_deterministic_and_exactly_resumable(folder):
    assert_batches_equal(batches(dataset(folder), 5), batches(dataset(folder), 5))
    assert not np.array_equal(batches(dataset(folder), 1)[0]["depth"],
                              batches(dataset(folder, seed=4), 1)[0]["depth"])
    it = iter(dataset(folder))
    for _ in range(4):  # crosses an epoch boundary (12 samples, batch 4)
        next(it)
    state = it.get_state()
    rest = [next(it) for _ in range(3)]
    resumed = iter(dataset(folder))
    resumed.set_state(state)
    assert_batches_equal([next(resumed) for _ in range(3)], rest)


def test_process_slices_cover_each_sample_once_per_epoch(folder):
    source = make_source(str(folder), TASKS)
    seen = []
    for p in range(2):
        ds = make_dataset(source, TASKS, image_size=16, local_batch_size=2, seed=0,
                          process_index=p, process_count=2, num_epochs=1)
        # depth rows encode 1000 * sample index (see data_helpers.sample_arrays); without a
        # crop the row offset is small, so recover the index from the minimum value
        for b in ds:
            seen += [int(d.min()) // 1000 for d in b["depth"]]
    assert sorted(seen) == list(range(12))


def test_shards_yield_the_same_batches_as_the_folder(folder, tmp_path):
    pack(folder, tmp_path / "shards", TASKS, num_shards=3)
    assert_batches_equal(batches(dataset(tmp_path / "shards"), 4), batches(dataset(folder), 4))


def test_corrupt_files_stop_or_are_skipped(tmp_path, caplog):
    write_dataset(tmp_path, num_samples=8, size=40)
    bad = tmp_path / "rgb" / "n02" / "s004.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(CorruptFileError, match="s004.png"):
        batches(dataset(tmp_path, num_epochs=1), 2)
    got = list(dataset(tmp_path, num_epochs=1, skip_corrupt=True, local_batch_size=1))
    assert len(got) == 7
    assert "skipping corrupt sample" in caplog.text and "s004.png" in caplog.text


def test_worker_processes_are_deterministic_and_resume(folder):
    with_workers = batches(dataset(folder, num_workers=2), 3)
    assert_batches_equal(with_workers, batches(dataset(folder, num_workers=2), 3))
    # the same augmented samples as in-process, grouped into batches per worker
    single = batches(dataset(folder, local_batch_size=1), 8)
    depth = lambda bs: sorted(d.tobytes() for b in bs for d in b["depth"])
    assert depth(with_workers[:2]) == depth(single)
    it = iter(dataset(folder, num_workers=2))
    next(it), next(it)
    state = it.get_state()
    rest = [next(it) for _ in range(2)]
    resumed = iter(dataset(folder, num_workers=2))
    resumed.set_state(state)
    assert_batches_equal([next(resumed) for _ in range(2)], rest)


def test_synthetic_default_source_and_global_arrays():
    source = make_source("", TASKS, synthetic_samples=64, synthetic_size=32)
    (b,) = batches(make_dataset(source, TASKS, image_size=32, local_batch_size=8), 1)
    assert b["semseg"].shape == (8, 8, 8) and b["semseg"].max() < 8
    mesh = Mesh(np.array(jax.devices()), ("data",))
    arrays = global_batch(b, NamedSharding(mesh, P("data")))
    assert arrays["rgb"].shape == (8, 32, 32, 3)
    assert len(arrays["rgb"].sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(arrays["depth"]), b["depth"])


def test_bad_data_config_errors(tmp_path):
    with pytest.raises(ValueError, match="norm_rgb"):
        make_source("", ("rgb", "norm_rgb"))
    with pytest.raises(FileNotFoundError, match="rgb"):
        make_source(str(tmp_path), TASKS)


def test_tfds_source_plugs_into_the_pipeline():
    import tensorflow_datasets as tfds  # heavy: imported only here
    with tfds.testing.mock_data(num_examples=6):
        source = make_source("tfds:mnist:train", ("rgb",), tfds_fields={"rgb": "image"})
        assert len(source) == 6
        (b,) = batches(make_dataset(source, ("rgb",), image_size=16, local_batch_size=3), 1)
    assert b["rgb"].shape == (3, 16, 16, 3) and b["rgb"].dtype == np.uint8
    with pytest.raises(ValueError, match="no feature for tasks"):
        with tfds.testing.mock_data(num_examples=2):
            make_source("tfds:mnist", ("rgb", "depth"))
    with pytest.raises(ValueError, match="tfds:NAME"):
        make_source("tfds:", ("rgb",))


def test_global_batches_do_not_depend_on_the_process_count(folder):
    source = make_source(str(folder), TASKS)
    one = batches(make_dataset(source, TASKS, image_size=16, local_batch_size=4), 4)
    halves = [batches(make_dataset(source, TASKS, image_size=16, local_batch_size=2,
                                   process_index=p, process_count=2), 4) for p in range(2)]
    joined = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*halves)]
    assert_batches_equal(joined, one)
