"""Restarting a workdir: nothing is written before the restore succeeds, incompatible configs
and a changed batch size are refused before compiling, one run at a time (a lock), and exit
codes a scheduler can act on."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import multimae_jax as mm
from multimae_jax.models.spec import to_spec
from multimae_jax.train import exit_codes
from multimae_jax.train import workdir as workdir_lib
from multimae_jax.train.loop import train
from multimae_jax.train.workdir import WorkdirError
from train_helpers import FINISHED, small_config

REPO = Path(__file__).resolve().parents[1]


def copy_run(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def snapshot(workdir: Path) -> dict:
    """Every file of the workdir outside its checkpoints, with its bytes."""
    return {str(p.relative_to(workdir)): p.read_bytes() for p in workdir.rglob("*")
            if p.is_file() and "checkpoints" not in p.parts}


def test_an_incompatible_restart_is_refused_and_changes_nothing(finished_run, tmp_path):
    workdir = copy_run(finished_run, tmp_path)
    before = snapshot(workdir)
    model_before = to_spec(mm.load_pretrained(workdir)[0])
    for override, field in ((("model.overrides.depth", 2), "model.overrides.depth 1 -> 2"),
                            (("modalities.semseg.num_classes", 5),
                             "modalities.semseg.num_classes 8 -> 5"),
                            (("model.output_tasks", ("rgb", "depth")), "model.output_tasks"),
                            (("train.task_balancer", "uncertainty"), "train.task_balancer")):
        with pytest.raises(WorkdirError) as err:
            train(small_config(**{**FINISHED, "train.num_steps": 10, override[0]: override[1]}),
                  workdir)
        assert field in str(err.value) and "\n" not in str(err.value)
    assert snapshot(workdir) == before  # config.json, run_info.json: untouched
    assert to_spec(mm.load_pretrained(workdir)[0]) == model_before


def test_a_restart_may_change_how_the_model_computes(tmp_path):
    """model.attention, scan_blocks and gather_grad leave the parameters as they are; a
    config.json written before they existed lacks them."""
    saved = workdir_lib.config_dict(small_config())
    for field in workdir_lib.COMPUTE:
        del saved["model"][field.split(".")[1]]
    (tmp_path / workdir_lib.CONFIG).write_text(json.dumps(saved))
    config = small_config(**{"model.scan_blocks": True, "model.gather_grad": "scatter"})
    changes = workdir_lib.check_restart(tmp_path, config, 1)
    assert changes == {"model.attention": (None, "xla"), "model.scan_blocks": (None, True),
                       "model.gather_grad": (None, "scatter")}


def test_a_restart_with_another_process_count_is_refused(finished_run, tmp_path):
    workdir = copy_run(finished_run, tmp_path)
    info = json.loads((workdir / workdir_lib.RUN_INFO).read_text())
    (workdir / workdir_lib.RUN_INFO).write_text(json.dumps({**info, "process_count": 2}))
    with pytest.raises(WorkdirError, match="trained by 2 process.*this run has 1: the data "
                                           "iterator state is saved per process"):
        train(small_config(**FINISHED), workdir)


def test_a_changed_batch_size_needs_the_switch_and_is_explained(finished_run, tmp_path, capsys):
    """At the finished run's last step, so that the accepted restart trains nothing (and
    compiles nothing) after reporting."""
    workdir = copy_run(finished_run, tmp_path)
    bigger = {**FINISHED, "data.global_batch_size": 16}
    with pytest.raises(WorkdirError, match="config.data.global_batch_size=16: .* trained with 8"):
        train(small_config(**bigger), workdir)
    old_config = (workdir / "config.json").read_text()
    train(small_config(**bigger, **{"train.allow_batch_size_change": True}), workdir)
    out = capsys.readouterr().out
    # 64 samples: 8 -> 4 steps per epoch; warm-up 0.25 epoch: 2 -> 1 step; lr x 2
    assert ("global batch 8 -> 16 (train.allow_batch_size_change): lr 4.688e-05 -> 9.375e-05, "
            "steps/epoch 8 -> 4, total steps 8 -> 8, warm-up 2 -> 1 steps") in out
    assert "resumed from step 8" in out
    # the description of the earlier checkpoints is kept
    assert (workdir / "history" / "config.json.before_step_8").read_text() == old_config
    assert json.loads((workdir / "config.json").read_text())["data"]["global_batch_size"] == 16


def test_a_second_run_on_a_workdir_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    lock = workdir / workdir_lib.LOCK
    # a live holder: this very process, as another run on this host would be
    holder = {"host": os.uname().nodename, "pid": os.getpid(),
              "start_time": workdir_lib._start_time(os.getpid()), "since": "earlier"}
    lock.write_text(json.dumps(holder))
    with pytest.raises(WorkdirError, match=f"in use by pid {os.getpid()} on "):
        train(small_config(**{"train.num_steps": 1}), workdir)
    assert lock.is_file() and not (workdir / "checkpoints").exists()
    # the same pid after a reboot (another start time) or a dead pid: stale, taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    for stale in ({**holder, "start_time": "1"}, {**holder, "pid": int(dead)}):
        lock.write_text(json.dumps(stale))
        with workdir_lib.WorkdirLock(workdir):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert "taking over the stale lock" in capsys.readouterr().out
        assert not lock.exists()  # released on the way out


def test_exit_codes(capsys):
    """Outcomes map to the documented codes (multimae_jax/train/exit_codes.py), each failure
    with one 'error:' line."""
    from multimae_jax.data.codecs import CorruptFileError
    from multimae_jax.train.checkpoint import CheckpointSaveError, CorruptCheckpointError
    from multimae_jax.train.loop import NonFiniteError

    def raises(error):
        def train():
            raise error
        return train
    assert exit_codes.run(lambda: {"loss": 1.0}) == 0
    assert exit_codes.run(lambda: {"stopped": "stop_at_step"}) == 0
    assert exit_codes.run(lambda: {"stopped": "SIGTERM"}) == exit_codes.PREEMPTED == 75
    for error, code in ((WorkdirError("held"), 2), (CorruptFileError("a.png: bad"), 2),
                        (NonFiniteError("nan"), 3), (CheckpointSaveError("disk full"), 4),
                        (CorruptCheckpointError("none restores"), 4)):
        capsys.readouterr()
        assert exit_codes.run(raises(error)) == code
        assert capsys.readouterr().err == f"error: {error}\n"
    with pytest.raises(KeyError):  # anything else is a bug: its traceback is kept
        exit_codes.run(raises(KeyError("x")))


def test_slurm_script_requeues_a_preempted_job(tmp_path):
    """launch/slurm.sbatch with stand-ins for srun and scontrol: exit 75 requeues the job."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    for name, body in (("srun", 'echo "srun $*" >> "$LOG"; exit "$SRUN_RC"'),
                       ("scontrol", 'echo "scontrol $*" >> "$LOG"')):
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    for rc, requeued in ((75, True), (0, False), (3, False)):
        log.write_text("")
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log),
               "SRUN_RC": str(rc), "SLURM_JOB_ID": "123", "REPO_DIR": str(REPO)}
        out = subprocess.run(["bash", "launch/slurm.sbatch"], cwd=REPO, env=env,
                             capture_output=True, text=True)
        calls = log.read_text()
        assert "srun" in calls and "multimae_jax.main" in calls
        assert ("scontrol requeue 123" in calls) == requeued, calls
        assert out.returncode == (0 if requeued else rc), out.stderr
