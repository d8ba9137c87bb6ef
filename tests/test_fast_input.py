"""The input pipeline's fast paths (issue 12): pre-resized packing, JPEG draft decoding,
device-side augmentation, decoding threads, and their config checks."""
import jax
import numpy as np
import pytest
from PIL import Image

from multimae_jax.data.codecs import decode_draft
from multimae_jax.data.device_augment import box_key, crop_resize_batch
from multimae_jax.data.pack import pack
from multimae_jax.data.pil_resample import resize_bicubic_int32, resize_bicubic_uint8
from multimae_jax.data.pipeline import global_batch, make_dataset, make_source
from multimae_jax.data.records import decode_record
from multimae_jax.data.synthetic import SyntheticScenes, write_samples
from multimae_jax.data.transforms import PretrainAugment
from multimae_jax.modalities import resolve
from multimae_jax.train import sharding
from multimae_jax.train.objectives import make_objective
from multimae_jax.train.pretrain import pretrain_trainer
from multimae_jax.train.validate import ConfigError, validate
from train_helpers import small_config

TASKS = ("rgb", "depth", "semseg")
MODS = tuple(resolve(TASKS).values())
RGB, DEPTH, SEMSEG = MODS
SHAPES = ((120, 160), (160, 100), (64, 80))  # landscape, portrait, small (shorter side 64)


class _Scenes:
    """Synthetic scenes cut to the sizes of SHAPES in turn."""
    MODALITIES = TASKS

    def __init__(self, n):
        self.scenes = SyntheticScenes(n, 160, seed=3)

    def __len__(self):
        return len(self.scenes)

    def __getitem__(self, i):
        h, w = SHAPES[i % len(SHAPES)]
        return {k: v[:h, :w] for k, v in self.scenes[i].items()}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """9 samples, rgb JPEG q90 4:2:0 as photos are stored."""
    root = tmp_path_factory.mktemp("fast_input") / "folder"
    write_samples(_Scenes(9), root, folders=3, jpeg_quality=90, jpeg_subsampling=2)
    return root


def _first_batch(source, size=32, batch=9, **switches):
    it = iter(make_dataset(source, MODS, image_size=size, local_batch_size=batch, seed=5,
                           **switches))
    return next(it)


def _samples(batches) -> list[bytes]:
    """Every sample of a list of batches as bytes of its arrays, sorted (order-free)."""
    return sorted(b"".join(np.ascontiguousarray(b[k][i]).tobytes() for k in sorted(b))
                  for b in batches for i in range(len(b["label"])))


def test_pack_max_size_bounds_the_shorter_side_and_keeps_modalities_aligned(folder, tmp_path):
    meta = pack(folder, tmp_path / "small", TASKS, num_shards=2, max_size=72, jpeg_quality=90)
    assert meta["max_size"] == 72 and meta["jpeg_quality"] == 90
    original, small = make_source(str(folder), TASKS), make_source(str(tmp_path / "small"), TASKS)
    for i in range(len(original)):
        full, got = decode_record(original[i], MODS), decode_record(small[i], MODS)
        (h, w), (gh, gw) = full["rgb"].shape[:2], got["rgb"].shape[:2]
        assert {got[t].shape[:2] for t in TASKS} == {(gh, gw)}
        if min(h, w) <= 72:  # small enough: the original files, untouched
            assert all(small[i][t] == original[i][t] for t in TASKS)
            continue
        assert min(gh, gw) == 72 and abs(gh / gw - h / w) < 0.02
        # every stored pixel shows what the original has at the same relative position
        rows = ((np.arange(gh) + 0.5) * h / gh).astype(int)
        cols = ((np.arange(gw) + 0.5) * w / gw).astype(int)
        assert (got["semseg"] == full["semseg"][rows][:, cols]).mean() > 0.99
        rel = np.abs(got["depth"] / full["depth"][rows][:, cols].astype(float) - 1)
        assert np.median(rel) < 0.01
        assert np.abs(got["rgb"].astype(float) - full["rgb"][rows][:, cols]).mean() < 12


def test_pack_can_store_some_tasks_decoded(folder, tmp_path):
    meta = pack(folder, tmp_path / "mixed", TASKS, num_shards=1, max_size=72, decoded=["depth"])
    assert meta["decoded"] == ["depth"]
    record = make_source(str(tmp_path / "mixed"), TASKS)[0]
    assert isinstance(record["depth"], np.ndarray) and isinstance(record["rgb"], bytes)
    with pytest.raises(ValueError, match="normals"):
        pack(folder, tmp_path / "bad", TASKS, num_shards=1, decoded=["normals"])


def test_jpeg_draft_is_close_to_the_full_decode_with_the_same_box(folder):
    record = make_source(str(folder), TASKS)[0]  # 120 x 160
    augment = PretrainAugment(MODS, 32)
    box = (3, 5, 110, 150, True)
    assert augment.draft_factor(box) == 2  # 110 px >= 2 x 32 but < 4 x 32
    full = decode_record(record, MODS)
    drafted = decode_record(record, MODS, draft={"rgb": 2})
    assert drafted["drafted"] == {"rgb": 2} and drafted["rgb"].shape == (60, 80, 3)
    want, got = augment.crop(full, box), augment.crop(drafted, box, drafted["drafted"])
    for t in ("depth", "semseg"):
        np.testing.assert_array_equal(got[t], want[t])
    assert got["rgb"].shape == want["rgb"].shape
    delta = np.abs(got["rgb"].astype(float) - want["rgb"]).mean()
    assert 0 < delta < 1.5, delta

    # through the pipeline: same boxes, so depth and semseg are untouched
    exact, fast = _first_batch(make_source(str(folder), TASKS)), _first_batch(
        make_source(str(folder), TASKS), jpeg_draft=True)
    for t in ("depth", "semseg", "label"):
        np.testing.assert_array_equal(fast[t], exact[t])
    assert np.abs(fast["rgb"].astype(float) - exact["rgb"]).mean() < 3


def test_box_resize_equals_pillow_in_one_of_its_pass_orders():
    """`pil_resample`'s box = PIL's resize(box=...); Pillow 13 may run the vertical pass first
    (tests/pil_helpers.py), so either order's pixels are accepted."""
    rng = np.random.default_rng(0)
    for _ in range(12):
        x = rng.integers(0, 2 ** 16, (70, 90)).astype(np.int32)
        top, left = rng.integers(0, 30, 2) + rng.choice([0, 0.5, 0.25], 2)
        h, w = rng.integers(8, 35, 2) + rng.choice([0, 0.5, 0.125], 2)
        size = tuple(int(v) for v in rng.integers(5, 50, 2))
        pil_box = (left, top, left + w, top + h)
        for img, ours in ((x, resize_bicubic_int32), (x.astype(np.uint8), resize_bicubic_uint8)):
            ref = np.asarray(Image.fromarray(img).resize(size[::-1], Image.BICUBIC, box=pil_box))
            rows_first = ours(img, size, (top, left, h, w))
            cols_first = ours(img.T.copy(), size[::-1], (left, top, w, h)).T
            assert np.array_equal(ref, rows_first) or np.array_equal(ref, cols_first)


@pytest.mark.parametrize("canvas,rgb_bound,depth_bound", [(160, 0.01, 0.05), (96, 2.0, 200)])
def test_device_augmentation_matches_the_host_path(folder, canvas, rgb_bound, depth_bound):
    """canvas 160 holds every image: PIL's arithmetic up to float32 rounding (rgb in levels,
    depth in 16-bit units); canvas 96 makes the host downscale the larger images first: close,
    not equal."""
    source = make_source(str(folder), TASKS)
    host = _first_batch(source)
    raw = _first_batch(source, augment="device", device_canvas=canvas)
    assert raw["rgb"].shape == (9, canvas, canvas, 3) and raw["rgb"].dtype == np.uint8
    assert raw["depth"].shape == (9, canvas, canvas, 1) and raw["depth"].dtype == np.uint16
    assert raw[box_key("rgb")].shape == (9, 5) and raw[box_key("rgb")].dtype == np.float32
    dev = jax.device_get(jax.jit(lambda b: crop_resize_batch(b, MODS, 32))(raw))
    assert set(dev) == set(host)
    for t in TASKS:
        assert dev[t].shape == host[t].shape and dev[t].dtype == host[t].dtype
    np.testing.assert_array_equal(dev["semseg"], host["semseg"])  # cropped on the host
    np.testing.assert_array_equal(dev["label"], host["label"])
    assert np.abs(dev["rgb"].astype(float) - host["rgb"]).mean() < rgb_bound
    assert np.abs(dev["depth"].astype(float) - host["depth"]).mean() < depth_bound


def test_thread_workers_yield_the_samples_of_the_other_modes(folder):
    source = make_source(str(folder), TASKS)

    def make(**kw):
        return make_dataset(source, MODS, image_size=24, local_batch_size=3, seed=1, **kw)

    def first(n, **kw):
        it = iter(make(**kw))
        return [next(it) for _ in range(n)]

    threads = first(6, num_workers=3, worker_mode="thread")
    for a, b in zip(threads, first(6)):  # the very batches of the in-process pipeline
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # worker processes group samples into batches per worker, so compare the samples only
    assert _samples(threads) == _samples(first(6, num_workers=2))
    it = iter(make(num_workers=3, worker_mode="thread"))
    next(it)
    resumed = iter(make(num_workers=3, worker_mode="thread"))
    resumed.set_state(it.get_state())  # as a checkpoint restores it
    np.testing.assert_array_equal(next(resumed)["rgb"], threads[1]["rgb"])


def test_a_training_step_on_device_augmented_batches_sharded_over_8_devices():
    c = small_config(**{"data.augment": "device", "data.device_canvas": 40})
    assert jax.device_count() == 8
    validate(c, jax.device_count(), 1)
    objective = make_objective(c)
    _, dataset = objective.train_data(0, 1)
    local = next(iter(dataset))
    assert set(objective.batch_keys) == set(TASKS) | {box_key("rgb"), box_key("depth")}
    mesh = sharding.make_mesh(c.mesh.to_dict())
    runner = pretrain_trainer(c, mesh, total_steps=4, warmup_steps=1, base_lr=1e-3)
    batch = global_batch({k: local[k] for k in objective.batch_keys}, runner.batch_sharding)
    for k, v in batch.items():  # boxes are split along the batch like the images
        assert v.sharding == runner.batch_sharding, k
        assert {s.data.shape[0] for s in v.addressable_shards} == {1}, k
    layout = lambda b: {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in b.items()}
    assert layout(objective.random_batch(jax.random.key(0), 8)) == layout(batch)
    state, metrics = runner.step(runner.init(runner.key), batch)
    assert np.isfinite(float(metrics["loss"]))
    inputs, _, _ = runner.predict(state, batch, 2)  # pictures read the augmented inputs
    assert inputs["rgb"].shape == (2, 32, 32, 3) and inputs["semseg"].shape == (2, 8, 8)


@pytest.mark.parametrize("field,value,message", [
    ("data.augment", "gpu", "config.data.augment='gpu'"),
    ("data.worker_mode", "fork", "config.data.worker_mode='fork'"),
    ("data.device_canvas", 16, "config.data.device_canvas=16"),
])
def test_bad_fast_path_fields_are_config_errors(field, value, message):
    c = small_config(**{"data.augment": "device", field: value})
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate(c, 8, 1)


def test_bad_switches_of_make_dataset_and_decode_are_refused(folder):
    source = make_source(str(folder), TASKS)
    with pytest.raises(ValueError, match="augment"):
        make_dataset(source, MODS, image_size=32, local_batch_size=2, augment="gpu")
    with pytest.raises(ValueError, match="worker_mode"):
        make_dataset(source, MODS, image_size=32, local_batch_size=2, worker_mode="fork")
    with pytest.raises(ValueError, match="--max_size"):
        pack(folder, folder.parent / "bad", TASKS, num_shards=1, max_size=0)
    # a PNG is never drafted: decoded at full size
    depth, factor, full = decode_draft(DEPTH, source[0]["depth"], "x", 2)
    assert factor == 1 and depth.shape == full == (120, 160)
