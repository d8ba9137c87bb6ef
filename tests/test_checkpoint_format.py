"""One checkpoint format: training steps, `save_checkpoint` and `convert` write the same folder
(model/model.json + state/), and `load_pretrained` reads a checkpoint, a workdir or a root."""
import json
import shutil

import chex
import grain
import numpy as np
import pytest

from multimae_jax import load_pretrained, save_checkpoint
from multimae_jax.convert.__main__ import main as convert_main
from multimae_jax.models.presets import pretrain_multimae
from multimae_jax.models.spec import abstract_variables, to_spec
from multimae_jax.train import checkpoint


def tiny_model():
    return pretrain_multimae(dim_tokens=32, depth=1, num_heads=2, image_size=32, decoder_dim=16,
                             decoder_depth=0, decoder_num_heads=2, num_classes=4,
                             dim_class_emb=8)


def random_variables(model, seed: int) -> dict:
    r = np.random.default_rng(seed)
    return {c: _fill(tree, r) for c, tree in abstract_variables(model).items()}


def _fill(tree, r):
    if isinstance(tree, dict):
        return {k: _fill(v, r) for k, v in tree.items()}
    return r.normal(size=tree.shape).astype(tree.dtype)


def write_run(workdir, model, steps) -> dict:
    """A training workdir as `train` writes one: a checkpoint at each of `steps` with a train
    state ({'step', 'params', 'buffers', 'opt_state'}) and a grain iterator; returns the
    variables saved at each step."""
    saved, data = {}, iter(grain.MapDataset.range(100).to_iter_dataset())
    mngr = checkpoint.manager(workdir, keep=5)
    for step in steps:
        saved[step] = random_variables(model, step)
        state = {"step": np.int32(step), **saved[step], "opt_state": {"mu": saved[step]["params"]}}
        next(data)
        checkpoint.save(mngr, step, model, state, data)  # asynchronous
    mngr.wait_until_finished()
    mngr.close()
    return saved


def entries(folder) -> list[str]:
    """The item folders of a checkpoint (Orbax's own marker files left out)."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def test_training_steps_and_exports_are_one_format(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths throughout
    model = tiny_model()
    saved = write_run("run", model, (1, 3))
    step3 = tmp_path / "run" / "checkpoints" / "3"
    assert entries(step3) == ["checksums", "data", "model", "state"]
    # the spec is committed with every step, readable without Orbax
    assert (json.loads((step3 / "model" / "model.json").read_text())
            == json.loads(json.dumps(to_spec(model))))
    for path in ("run", "run/checkpoints", "run/checkpoints/3"):  # workdir, root, checkpoint
        got_model, got = load_pretrained(path)
        assert to_spec(got_model) == to_spec(model), path
        chex.assert_trees_all_equal(got, saved[3])
    chex.assert_trees_all_equal(load_pretrained("run/checkpoints/1")[1], saved[1])

    assert convert_main(["run", "export"]) == 0  # the latest step, without the training items
    assert entries(tmp_path / "export") == ["model", "state"]
    chex.assert_trees_all_equal(load_pretrained("export")[1], saved[3])
    step, state = checkpoint.restore_state_only("run")
    assert step == 3 and set(state) == {"step", "params", "buffers", "opt_state"}
    chex.assert_trees_all_equal(state["opt_state"]["mu"], saved[3]["params"])


def test_an_unfinished_or_incomplete_step_is_never_loaded(tmp_path):
    model = tiny_model()
    saved = write_run(tmp_path / "run", model, (2,))
    root = tmp_path / "run" / "checkpoints"
    # a save of step 4 cut short: Orbax's temporary folder, never renamed into place
    cut = root / "4.orbax-checkpoint-tmp-1700000000"
    shutil.copytree(root / "2", cut)
    (cut / "commit_success.txt").unlink()
    chex.assert_trees_all_equal(load_pretrained(tmp_path / "run")[1], saved[2])
    assert checkpoint.restore_state_only(tmp_path / "run")[0] == 2
    shutil.rmtree(root / "2" / "model")  # a step without its model spec
    with pytest.raises(ValueError, match="not a multimae_jax checkpoint"):
        load_pretrained(tmp_path / "run")


def test_save_checkpoint_refuses_a_folder_with_files(tmp_path):
    model = tiny_model()
    variables = random_variables(model, 0)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="used"):
        save_checkpoint(model, variables, tmp_path / "used")
    assert (tmp_path / "used" / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    save_checkpoint(model, variables, tmp_path / "empty")
    chex.assert_trees_all_equal(load_pretrained(tmp_path / "empty")[1], variables)
