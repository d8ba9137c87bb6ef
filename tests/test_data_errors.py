"""Bad samples are named: a label beyond its modality's classes, modalities of different sizes,
an 8-bit depth PNG. Training stops naming the file, or with skip_corrupt drops the sample (one
log line) and delivers the others; data.check reports them with the classes of the run's config."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_helpers import write_dataset
from multimae_jax import modalities
from multimae_jax.data.check import main as check_main
from multimae_jax.data.codecs import CorruptFileError
from multimae_jax.data.pipeline import make_dataset, make_source

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "pretrain.py") + ":tiny"
NUM_CLASSES = 8  # semseg classes of configs/pretrain.py:tiny
MODS = (modalities.get("rgb"), modalities.get("depth"),
        modalities.get("semseg").replace(num_classes=NUM_CLASSES))
SIZE, NUM_SAMPLES, BAD = 32, 6, 3  # sample 3 is n01/s003 (classes cycle n01, n02, n03)


def label_9(root: Path) -> Path:
    path = root / "semseg" / "n01" / f"s{BAD:03d}.png"
    Image.fromarray(np.full((SIZE, SIZE), 9, np.uint8)).save(path)
    return path


def depth_of_another_size(root: Path) -> Path:
    path = root / "depth" / "n01" / f"s{BAD:03d}.png"
    Image.fromarray(np.full((SIZE // 2, SIZE), 3000, np.uint16)).save(path)
    return path


def depth_8_bit(root: Path) -> Path:
    path = root / "depth" / "n01" / f"s{BAD:03d}.png"
    Image.fromarray(np.full((SIZE, SIZE), 200, np.uint8)).save(path)  # mode L
    return path


# (how to break sample BAD, what the message says besides the file; {path} is the file)
CASES = {
    "label": (label_9, "semseg label 9 >= 8 classes"),
    "size": (depth_of_another_size, f"modalities differ in size: {{root}}/rgb/n01/s003.png "
                                    f"{SIZE}x{SIZE}, {{path}} {SIZE // 2}x{SIZE}"),
    "8bit": (depth_8_bit, "depth expects a 16-bit PNG, got 8-bit mode L"),
}


def break_sample(root: Path, case: str) -> tuple[Path, str]:
    """Breaks sample BAD of the dataset in `root`; returns the file and the expected message."""
    breaker, message = CASES[case]
    path = breaker(root)
    return path, message.format(root=root, path=path)


def dataset(root: Path, **kw):
    return make_dataset(make_source(str(root), MODS), MODS, image_size=16, local_batch_size=1,
                        num_epochs=1, num_workers=0, **kw)


@pytest.mark.parametrize("case", CASES)
def test_training_stops_naming_the_file(tmp_path, case):
    write_dataset(tmp_path, num_samples=NUM_SAMPLES, size=SIZE)
    path, message = break_sample(tmp_path, case)
    with pytest.raises(CorruptFileError) as err:
        list(dataset(tmp_path))
    assert str(path) in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("case", CASES)
def test_skip_corrupt_drops_the_sample_and_logs_it(tmp_path, case, caplog):
    write_dataset(tmp_path, num_samples=NUM_SAMPLES, size=SIZE)
    path, message = break_sample(tmp_path, case)
    got = list(dataset(tmp_path, skip_corrupt=True))
    # depth = 1000 * sample index + row (data_helpers.sample_arrays): the samples delivered
    assert sorted(int(b["depth"].min()) // 1000 for b in got) == [0, 1, 2, 4, 5]
    named = [r for r in caplog.records if str(path) in r.getMessage()]
    assert len(named) == 1 and "skipping corrupt sample" in named[0].getMessage()
    assert message in named[0].getMessage()


@pytest.mark.parametrize("case", ["label", "8bit"])
def test_check_reports_it_with_the_config_classes(tmp_path, case, capsys):
    write_dataset(tmp_path, num_samples=NUM_SAMPLES, size=SIZE)
    assert check_main([str(tmp_path), "--config", CONFIG, "--num_workers", "1"]) == 0
    path, message = break_sample(tmp_path, case)
    capsys.readouterr()
    assert check_main([str(tmp_path), "--config", CONFIG, "--num_workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "1 problem(s)" in out and f"{path}: {message}" in out
    if case == "label":  # the registry's 133 classes hold a 9: only the config's 8 do not
        assert check_main([str(tmp_path), "--num_workers", "1"]) == 0
