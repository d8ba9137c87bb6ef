"""Dense fine-tuning data: the folder, shard, Taskonomy and synthetic sources read what was
written; batches have the documented layout; evaluation covers every sample once across
processes; training is deterministic and resumes exactly; bad data names its file."""
import csv

import numpy as np
import pytest
from PIL import Image

from multimae_jax.data.codecs import CorruptFileError
from multimae_jax.data.dense_pipeline import eval_dataset, train_dataset
from multimae_jax.data.dense_recipes import DepthRecipe, SemsegRecipe, TaskonomyRecipe
from multimae_jax.data.dense_sources import dense_folder, make_dense_source, official_subset
from multimae_jax.data.dense_transforms import NyuAugment, SemsegAugment, depth_input
from multimae_jax.data.pack import pack
from multimae_jax.data.synthetic import SyntheticScenes
from multimae_jax.data.taskonomy_source import read_split_csv
from multimae_jax.data.taskonomy_transforms import TASKONOMY_TASKS
from multimae_jax.modalities import Modality

MASK = Modality("mask_valid", channels=1, storage="uint8", resample="nearest", draw="colormap")
MODS = ("rgb", "depth", "semseg", MASK)
KEYS = ("rgb", "depth", "semseg", "mask_valid")


def arrays(i: int, h: int = 12, w: int = 10) -> dict:
    """Sample i's stored arrays; values depend on i so misaligned pairs show."""
    rng = np.random.default_rng(i)
    mask = np.full((h, w), 255, np.uint8)
    mask[0, :3] = 0
    return {"rgb": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            "depth": rng.integers(1, 65535, (h, w), dtype=np.uint16),
            "semseg": np.arange(h * w).reshape(h, w).astype(np.uint8) % 41,  # 0..40: NYUv2
            "mask_valid": mask}


def write_png(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_split(root, names, keys=KEYS, sizes=None) -> None:
    """root/<key>/data/<name>.png (the layout of tools/prepare_nyuv2.py)."""
    for i, name in enumerate(names):
        for key in keys:
            a = arrays(i, *(sizes or {}).get((name, key), (12, 10)))[key]
            write_png(root / key / "data" / f"{name}.png", a)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("nyu") / "train"
    write_split(root, [f"{i:04d}" for i in range(5)])
    return root


def test_folder_reads_every_file_exactly(split):
    source = dense_folder(split, MODS)
    assert len(source) == 5 and str(split) in repr(source)
    for i in range(5):
        sample, want = source[i], arrays(i)
        assert sample["key"] == f"data/{i:04d}"
        assert sample["paths"]["semseg"] == str(split / "semseg" / "data" / f"{i:04d}.png")
        np.testing.assert_array_equal(sample["rgb"], want["rgb"])
        assert sample["depth"].dtype == np.uint16
        np.testing.assert_array_equal(sample["depth"], want["depth"])
        np.testing.assert_array_equal(sample["semseg"], want["semseg"])
        np.testing.assert_array_equal(sample["mask_valid"][..., 0], want["mask_valid"])


def test_folder_order_and_subset_are_the_official_ones(tmp_path):
    # The official loader sorts file names with their extension: 'a-b.png' < 'a.png', while
    # the names alone sort 'a' < 'a-b'. Its max_images subset permutes that order.
    write_split(tmp_path, ["a", "a-b", "b"], keys=("rgb",))
    assert [s["key"] for s in dense_folder(tmp_path, ("rgb",))] == ["data/a-b", "data/a", "data/b"]
    np.random.seed(0)
    assert official_subset(10, 4).tolist() == np.random.permutation(10)[:4].tolist()
    subset = make_dense_source(str(tmp_path), ("rgb",), max_images=2)
    order = np.random.RandomState(0).permutation(3)[:2]
    assert [s["key"] for s in subset] == [["data/a-b", "data/a", "data/b"][i] for i in order]


def test_shards_hold_the_folder_samples(split, tmp_path):
    pack(split, tmp_path / "shards", MODS, num_shards=2)
    shards = make_dense_source(str(tmp_path / "shards"), MODS)
    folder = {s["key"]: s for s in dense_folder(split, MODS)}
    assert len(shards) == len(folder) == 5
    for s in shards:
        for k in KEYS:
            np.testing.assert_array_equal(s[k], folder[s["key"]][k])


def test_synthetic_dense_source_is_full_resolution_with_a_depth_range_mask():
    scenes = SyntheticScenes(12, 32, 6, seed=1)
    source = make_dense_source("", ("rgb", "depth", "semseg", MASK), mask="mask_valid",
                               synthetic_scenes=scenes, synthetic_start=8, synthetic_samples=4)
    assert len(source) == 4
    sample, scene = source[1], scenes[9]
    np.testing.assert_array_equal(sample["semseg"], scene["semseg"])  # (32, 32), not 1/4
    np.testing.assert_array_equal(sample["depth"], scene["depth"])
    far = scene["depth"] > 40000  # 10 m in 1/4000 m units
    assert far.any() and not far.all()
    np.testing.assert_array_equal(sample["mask_valid"][..., 0], np.where(far, 0, 255))
    with pytest.raises(ValueError, match="normal"):
        make_dense_source("", ("rgb", "normal"), synthetic_scenes=scenes)


def write_taskonomy(root, rows):
    for i, (b, p, v) in enumerate(rows):
        stem = f"point_{p}_view_{v}_domain_"
        a = arrays(i, 8, 8)
        write_png(root / "rgb" / b / f"{stem}rgb.png", a["rgb"])
        write_png(root / "depth_zbuffer" / b / f"{stem}depth_zbuffer.png", a["depth"])
        write_png(root / "mask_valid" / b / f"{stem}depth_zbuffer.png", a["mask_valid"])
    csv_path = root / "tiny_train.csv"
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows([("building", "point", "view"), *rows])
    return csv_path


def test_taskonomy_reads_the_first_rows_of_the_split(tmp_path):
    rows = [("ihlen", "0", "1"), ("darden", "12", "3"), ("ihlen", "7", "0")]
    csv_path = write_taskonomy(tmp_path, rows)
    tasks = ("rgb", "depth_zbuffer", "mask_valid")
    source = make_dense_source(str(tmp_path), tasks, split_csv=str(csv_path), max_images=2)
    assert len(source) == 2 and read_split_csv(csv_path) == rows
    sample = source[1]
    assert sample["key"] == "darden/point_12_view_3"
    want = arrays(1, 8, 8)
    np.testing.assert_array_equal(sample["rgb"], want["rgb"])
    assert sample["depth_zbuffer"].dtype == np.uint16
    np.testing.assert_array_equal(sample["depth_zbuffer"], want["depth"])
    np.testing.assert_array_equal(sample["mask_valid"], want["mask_valid"])
    (tmp_path / "rgb" / "darden" / "point_12_view_3_domain_rgb.png").unlink()
    with pytest.raises(FileNotFoundError, match="point_12_view_3_domain_rgb.png"):
        make_dense_source(str(tmp_path), tasks, split_csv=str(csv_path))
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("building,pt,view\nihlen,0,1\n")
    with pytest.raises(ValueError, match="building, point, view"):
        read_split_csv(bad_csv)


def taskonomy_recipe(size):
    return TaskonomyRecipe({"rgb": TASKONOMY_TASKS["rgb"],
                            "depth_zbuffer": TASKONOMY_TASKS["depth_zbuffer"]},
                           inputs=("rgb",), mask="mask_valid", image_size=size)


def test_taskonomy_batches(tmp_path):
    csv_path = write_taskonomy(tmp_path, [("a", "0", "0"), ("a", "1", "0"), ("b", "2", "1")])
    source = make_dense_source(str(tmp_path), ("rgb", "depth_zbuffer", "mask_valid"),
                               split_csv=str(csv_path))
    (b,) = list(eval_dataset(source, taskonomy_recipe(8), local_batch_size=4))
    assert b["valid"].tolist() == [True, True, True, False]
    np.testing.assert_array_equal(b["rgb"][2], arrays(2, 8, 8)["rgb"])  # uint8, same size
    assert b["depth_zbuffer"].shape == (4, 8, 8, 1) and b["depth_zbuffer"].dtype == np.float32
    # 16-bit / 65535, clamped to 8000 / 65535, rescaled to [0, 1]
    want = np.minimum(arrays(0, 8, 8)["depth"] / 65535.0, 8000 / 65535.0) / (8000 / 65535.0)
    np.testing.assert_allclose(b["depth_zbuffer"][0, ..., 0], want, rtol=1e-5)
    # invalid pixels (row 0, columns 0-2) spread to their whole 4x4 block: rows 0-3, cols 0-3
    expected = np.ones((8, 8), bool)
    expected[:4, :4] = False
    np.testing.assert_array_equal(b["mask_valid"][0, ..., 0], expected)


def semseg_recipe(train: bool, size: int = 12, depth: bool = True) -> SemsegRecipe:
    masks = ("depth", "semseg", "mask_valid") if depth else ("semseg",)
    return SemsegRecipe(SemsegAugment(("rgb",), masks, input_size=size, train=train), "semseg",
                        num_classes=40, depth_inputs=("depth",) if depth else (),
                        mask="mask_valid" if depth else None)


def test_semseg_batches_have_the_documented_layout(split):
    source = dense_folder(split, MODS)
    (b, _) = list(eval_dataset(source, semseg_recipe(False), local_batch_size=4))
    assert set(b) == {"rgb", "depth", "semseg", "valid"}
    assert b["rgb"].dtype == np.uint8 and b["rgb"].shape == (4, 12, 12, 3)
    assert b["semseg"].dtype == np.int32 and b["semseg"].shape == (4, 12, 12)
    assert b["depth"].dtype == np.float32 and b["depth"].shape == (4, 12, 12, 1)
    want = arrays(1)
    np.testing.assert_array_equal(b["rgb"][1, :, :10], want["rgb"])
    assert (b["rgb"][1, :, 10:] == 128).all()  # padded at the right with the image pad value
    labels = want["semseg"].astype(np.int32) - 1  # reduce_zero_label: 0 -> ignore, c -> c - 1
    labels[labels < 0] = 255
    np.testing.assert_array_equal(b["semseg"][1, :, :10], labels)
    assert (b["semseg"][1, :, 10:] == 255).all()
    assert (b["depth"][1, 0, :3] == 0).all() and (b["depth"][1, :, 10:] == 0).all()
    padded_depth = np.full((12, 12), 254, np.uint16)
    padded_depth[:, :10] = want["depth"]
    padded_mask = np.full((12, 12, 1), 254, np.uint8)
    padded_mask[:, :10, 0] = want["mask_valid"]
    np.testing.assert_array_equal(b["depth"][1], depth_input(padded_depth, padded_mask))
    t = next(iter(train_dataset(source, semseg_recipe(True), local_batch_size=2)))
    assert {k: (v.dtype, v.shape) for k, v in t.items()} == {
        "rgb": (np.uint8, (2, 12, 12, 3)), "depth": (np.float32, (2, 12, 12, 1)),
        "semseg": (np.int32, (2, 12, 12))}


def test_depth_batches_have_the_documented_layout(split):
    recipe = DepthRecipe(NyuAugment(("rgb",), ("depth", "mask_valid"), input_size=10,
                                    train=False), target="depth", mask="mask_valid",
                         mean=1000.0, std=10.0)
    (b,) = list(eval_dataset(dense_folder(split, MODS), recipe, local_batch_size=8))
    assert b["valid"].tolist() == [True] * 5 + [False] * 3
    assert b["depth"].dtype == np.float32 and b["depth"].shape == (8, 10, 10, 1)
    assert b["mask_valid"].dtype == bool and b["mask_valid"].shape == (8, 10, 10, 1)
    want = arrays(3)  # centre crop of 12 x 10: rows 1..10
    np.testing.assert_array_equal(b["rgb"][3], want["rgb"][1:11])
    valid = want["mask_valid"][1:11] == 255
    np.testing.assert_array_equal(b["mask_valid"][3, ..., 0], valid)
    target = (want["depth"][1:11].astype(np.float64) - 1000.0) / 10.0
    np.testing.assert_allclose(b["depth"][3, ..., 0], np.where(valid, target, 0), rtol=1e-6)


class Index:
    """A source whose sample i is its index, and the recipe that keeps only it."""
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"index": np.int32(i)}


def keep_index(sample, rng):
    assert rng is None  # evaluation draws nothing
    return dict(sample)


@pytest.mark.parametrize("processes", [1, 2])
def test_eval_covers_every_sample_once_across_processes(processes):
    n, local = 7, 2
    per_process = [list(eval_dataset(Index(n), keep_index, local_batch_size=local,
                                     process_index=p, process_count=processes))
                   for p in range(processes)]
    batches = -(-n // (local * processes))
    assert [len(bs) for bs in per_process] == [batches] * processes
    # the global batches as global_batch assembles them: process 0's rows, then process 1's
    rows = [(int(i), bool(v)) for g in range(batches) for p in range(processes)
            for i, v in zip(per_process[p][g]["index"], per_process[p][g]["valid"])]
    assert len(rows) == batches * local * processes
    assert [i for i, v in rows if v] == list(range(n))
    assert all(not v for _, v in rows[n:])


def test_eval_refuses_a_training_augmentation(split):
    with pytest.raises(ValueError, match="needs an rng"):
        list(eval_dataset(dense_folder(split, MODS), semseg_recipe(True), local_batch_size=2))


def synthetic(n=6):
    return make_dense_source("", MODS, mask="mask_valid",
                             synthetic_scenes=SyntheticScenes(n, 24, 6, seed=2))


def take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_training_is_deterministic_resumable_and_independent_of_processes():
    source, recipe = synthetic(), semseg_recipe(True, size=16)
    ds = lambda **kw: train_dataset(source, recipe, **({"local_batch_size": 2, "seed": 5} | kw))
    assert_same(take(ds(), 5), take(ds(), 5))
    assert not np.array_equal(take(ds(), 1)[0]["depth"], take(ds(seed=6), 1)[0]["depth"])
    it = iter(ds())
    for _ in range(4):  # past the first epoch (6 samples, batches of 2)
        next(it)
    state = it.get_state()
    rest = [next(it) for _ in range(2)]
    resumed = iter(ds())
    resumed.set_state(state)
    assert_same([next(resumed) for _ in range(2)], rest)
    # two processes with one row each make the same global batches as one process with two
    halves = [take(ds(local_batch_size=1, process_index=p, process_count=2), 3) for p in (0, 1)]
    joined = [{k: np.concatenate([h0[k], h1[k]]) for k in h0} for h0, h1 in zip(*halves)]
    assert_same(joined, take(ds(), 3))


def test_missing_mask_folder_is_named(tmp_path):
    write_split(tmp_path, ["0000"], keys=("rgb", "depth", "semseg"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "mask_valid")):
        dense_folder(tmp_path, MODS)


def test_missing_file_is_named(tmp_path):
    write_split(tmp_path, ["0000", "0001"])
    (tmp_path / "depth" / "data" / "0001.png").unlink()
    with pytest.raises(ValueError, match="no depth file.*data/0001"):
        dense_folder(tmp_path, MODS)


def test_images_outside_a_subfolder_are_a_named_layout_error(tmp_path):
    write_png(tmp_path / "rgb" / "0000.png", arrays(0)["rgb"])
    with pytest.raises(ValueError, match=f"{tmp_path / 'rgb'}: images lie directly"):
        dense_folder(tmp_path, ("rgb",))


def test_sizes_that_differ_name_the_files(tmp_path):
    write_split(tmp_path, ["0000"], sizes={("0000", "semseg"): (12, 9)})
    with pytest.raises(CorruptFileError,
                       match=r"rgb/data/0000.png 12x10.*semseg/data/0000.png 12x9"):
        dense_folder(tmp_path, MODS)[0]


def test_labels_beyond_the_classes_name_the_file_and_value(tmp_path):
    write_split(tmp_path, ["0000", "0001"])
    labels = arrays(1)["semseg"]
    labels[5, 5] = 255  # ignore: allowed
    write_png(tmp_path / "semseg" / "data" / "0000.png", labels)
    bad = labels.copy()
    bad[0, 0] = 200
    write_png(tmp_path / "semseg" / "data" / "0001.png", bad)
    source, recipe = dense_folder(tmp_path, MODS), semseg_recipe(False)
    assert recipe(source[0])["semseg"][5, 5] == 255
    with pytest.raises(CorruptFileError, match=r"semseg/data/0001.png: .*\[200\]"):
        recipe(source[1])


def test_recipes_check_their_keys():
    with pytest.raises(ValueError, match=r"\['mask_valid'\] must be among"):
        SemsegRecipe(SemsegAugment(("rgb",), ("semseg",)), "semseg", 40, mask="mask_valid")
    with pytest.raises(ValueError, match=r"\['depth'\] must be among"):
        DepthRecipe(NyuAugment(("rgb",), ("mask_valid",)), "depth", "mask_valid")


def test_training_iterator_saves_with_the_checkpoint_handler(tmp_path):
    """The iterator state goes through grain's Orbax handler, as train.checkpoint.save does."""
    import grain
    import orbax.checkpoint as ocp
    source, recipe = synthetic(), semseg_recipe(True, size=16)
    it = iter(train_dataset(source, recipe, local_batch_size=2, seed=5))
    for _ in range(3):
        next(it)
    handlers = {"data": grain.checkpoint.CheckpointHandler()}
    with ocp.CheckpointManager(tmp_path, item_handlers=handlers) as mngr:
        mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
        rest = [next(it) for _ in range(2)]
        resumed = iter(train_dataset(source, recipe, local_batch_size=2, seed=5))
        mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
    assert_same([next(resumed) for _ in range(2)], rest)
