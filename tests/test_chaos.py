"""The standing chaos test (tests/chaos.py, part 2): SIGKILL a pre-training run during a
checkpoint save and at a random moment, resume it, and get the straight run's final state bit
for bit. Parts 3 (corrupted newest checkpoint) and 4 (NaN) run in test_checkpoint_integrity.py;
the whole script, with more trials, gives docs/reliability.md."""
import random
import shutil

import chaos
from train_helpers import FINISHED, SMALL, subprocess_env


def test_kill_9_during_a_save_and_at_random_then_resume_equals_the_straight_run(finished_run,
                                                                                tmp_path):
    lines = []  # the fixture compiled the step: the runs find it in the compilation cache
    got = chaos.kill_and_resume(tmp_path / "chaos", {**SMALL, **FINISHED}, kills=2,
                                rng=random.Random(0), env=subprocess_env(),
                                report=lines.append, max_delay=0.5)
    assert got["during_save"] == 1 and got["kills"] == 2, lines
    assert chaos.equal(chaos.final_state(tmp_path / "chaos"), chaos.final_state(finished_run))
    shutil.rmtree(tmp_path / "chaos")
