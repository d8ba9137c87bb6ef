"""Checkpoints are either good or reported: checksums, a fallback past a damaged newest
checkpoint, a non-finite guard that covers the update, and a failed save that stops the run."""
import re
import shutil
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import multimae_jax as mm
from multimae_jax import integrity
from multimae_jax.train import step as step_module
from multimae_jax.train.checkpoint import CorruptCheckpointError, restore_state_only
from multimae_jax.train.loop import NonFiniteError, train

import chaos
from train_helpers import FINISHED, SMALL, small_config, subprocess_env

REPO = Path(__file__).resolve().parents[1]


def test_checksum_is_the_documented_formula():
    x = np.array([[1.5, -2.0], [0.0, np.inf]], np.float32)
    bits = x.view(np.uint32).astype(np.uint64).ravel()
    weights = (2 * np.arange(4, dtype=np.uint64) + 1) * 0x9E3779B1
    want = int(np.sum((bits * weights) % 2 ** 32) % 2 ** 32)
    labels = np.array([3, 7], np.uint8)
    want_labels = int((3 * 0x9E3779B1 + 7 * 3 * 0x9E3779B1) % 2 ** 32)
    assert integrity.host_checksums({"x": x, "y": {"z": labels}}) == {"x": want,
                                                                      "y/z": want_labels}
    # the same on a sharded array, whatever the layout
    mesh = jax.make_mesh((2,), ("d",), devices=jax.devices()[:2])
    sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.P("d")))
    assert integrity.host_checksums({"x": sharded})["x"] == want


def largest_state_file(step_dir: Path) -> Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)


def truncate(step_dir: Path) -> str:
    f = largest_state_file(step_dir)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return "is unreadable"


def flip_4kb(step_dir: Path) -> str:
    f = largest_state_file(step_dir)
    data = bytearray(f.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(b ^ 0xFF for b in data[middle:middle + 4096])
    f.write_bytes(bytes(data))
    return "is unreadable|the checksum of"  # depending on where the bytes fall


def delete(name: str):
    def damage(step_dir: Path) -> str:
        (step_dir / name).unlink()
        return re.escape(f"{step_dir / name} is missing")
    return damage


def change_checksum(step_dir: Path) -> str:
    """An array that Orbax reads without complaint but that is not what was saved."""
    sums = step_dir / "checksums" / "metadata"
    text = sums.read_text()
    key = '"params/global_tokens": '
    start = text.index(key) + len(key)
    end = start + len(text[start:].split(",")[0].split("}")[0])
    sums.write_text(text[:start] + str((int(text[start:end]) + 1) % 2 ** 32) + text[end:])
    return re.escape("the checksum of 1 array(s) differs from the one saved, e.g. "
                     "params/global_tokens")


@pytest.mark.parametrize("damages", [
    {8: truncate, 6: delete("state/_METADATA"), 4: delete("data/process_0-of-1.json")},
    {8: flip_4kb, 6: change_checksum},
], ids=["truncated_no_metadata_no_iterator", "flipped_4kb_changed_array"])
def test_damaged_newest_checkpoints_fall_back_to_the_newest_good_one(finished_run, tmp_path,
                                                                     capsys, damages):
    workdir = Path(shutil.copytree(finished_run, tmp_path / "run"))
    expected = {step: damage(workdir / "checkpoints" / str(step))
                for step, damage in damages.items()}
    train(small_config(**FINISHED), workdir)
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning: checkpoint")]
    assert len(warnings) == len(damages), out
    for line, (step, words) in zip(warnings, expected.items()):  # newest first, one line each
        assert line.startswith(f"warning: checkpoint step {step}"), line
        assert re.search(words, line), line
        assert (workdir / "checkpoints" / f"{step}.corrupt").is_dir()  # kept for inspection
    assert f"resumed from step {min(damages) - 2}" in out
    # the steps after it were trained again: exactly the straight run
    (s1, a), (s2, b) = restore_state_only(finished_run), restore_state_only(workdir)
    assert s1 == s2 == 8
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_without_fallback_a_damaged_checkpoint_stops_the_run_in_one_line(finished_run, tmp_path):
    workdir = Path(shutil.copytree(finished_run, tmp_path / "run"))
    delete("state/_METADATA")(workdir / "checkpoints" / "8")
    with pytest.raises(CorruptCheckpointError) as err:
        train(small_config(**FINISHED, **{"train.checkpoint_fallback": False}), workdir)
    assert str(err.value).startswith("checkpoint step 8: ") and "\n" not in str(err.value)
    assert (workdir / "checkpoints" / "8").is_dir()  # nothing moved


def test_readers_for_evaluation_verify_the_checksums(finished_run, tmp_path):
    workdir = Path(shutil.copytree(finished_run, tmp_path / "run"))
    change_checksum(workdir / "checkpoints" / "8")
    for read in (mm.load_pretrained, restore_state_only):
        with pytest.raises(ValueError, match=r"checkpoints/8/state: the checksum of 1 array\(s\) "
                                             r"differs .* params/global_tokens"):
            read(workdir)
    assert restore_state_only(workdir, 6)[0] == 6  # the others still read


def test_non_finite_updates_are_skipped_never_saved_and_stop_the_run(tmp_path, monkeypatch):
    """A NaN lr from step 3 on: loss and gradient stay finite, only the update is not."""
    real = step_module.warmup_cosine
    monkeypatch.setattr(step_module, "warmup_cosine", lambda *a: (
        lambda s: jnp.where(s >= 2, jnp.nan, real(*a)(s))))
    with pytest.raises(NonFiniteError, match="3 steps in a row with a non-finite loss, gradient "
                                             "or update .* the last good checkpoint is step 2"):
        train(small_config(**FINISHED, **{"train.max_nonfinite_steps": 3}), tmp_path)
    # a run that ends in non-finite steps (fewer than the limit) fails too, and saves nothing
    with pytest.raises(NonFiniteError, match="the run ended in 6 non-finite step"):
        train(small_config(**FINISHED), tmp_path)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
    assert steps == [2]
    state = restore_state_only(tmp_path)[1]
    assert int(state["skipped"]) == 0 and not integrity.non_finite(state)


# A disk that fills up: writes past 128 KB per file fail (EFBIG), with SIGXFSZ ignored so that
# the write fails instead of killing the process. A checkpoint holds ~7 MB of arrays in a number
# of data files that varies with the write's timing (12 of up to 2.2 MB, or 20 of up to 0.8 MB,
# were seen), so only a limit far below 7 MB / (number of files) makes the save fail every time;
# the run's other files (lock, configs, event file) stay far smaller.
FILLS_UP = "trap '' XFSZ; ulimit -f 128; exec \"$@\""


def test_a_failed_save_stops_the_run_with_one_line_and_keeps_the_last_good_one(finished_run,
                                                                                tmp_path):
    """Resumed at step 4 of the finished run (its program is in the compilation cache): the
    save of step 6 fails."""
    workdir = Path(shutil.copytree(finished_run, tmp_path / "run"))
    for step in (6, 8):
        shutil.rmtree(workdir / "checkpoints" / str(step))
    cmd = chaos.command(workdir, {**SMALL, **FINISHED})
    out = subprocess.run(["bash", "-c", FILLS_UP, "bash", *cmd], cwd=REPO, env=subprocess_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 4, out.stderr[-3000:]
    error = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "saving checkpoint step 6 failed" in error[0], out.stderr[-3000:]
    assert "File too large" in error[0]  # the operating system's reason
    assert "the last good checkpoint is step 4" in error[0]
    assert "Event loop is closed" not in out.stderr and "never retrieved" not in out.stderr
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    # no save started after the failed one, and the last good checkpoint is still there
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()
                  if not p.name.endswith("tmp")) == ["2", "4"]
    assert restore_state_only(workdir)[0] == 4
