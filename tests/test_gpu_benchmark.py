"""launch/gpu_benchmark.sh runs end to end on CPUs with a tiny model, so that the one-shot GPU
benchmark cannot rot before a GPU runs it (its timings are not checked)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from multimae_jax import benchmark_matrix
from train_helpers import subprocess_env
from xla_flags import cpu_flags

ROOT = Path(__file__).resolve().parent.parent
MEMORY_GIB = 0.05
# the tiny recipe at 32 px with a one-block encoder: short compilations
TINY = ["--config.model.image_size=32", "--config.model.overrides.depth=1",
        "--config.model.decoder_depth=0", "--config.masking.num_encoded_tokens=6"]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_benchmark")
    env = {**subprocess_env(), "XLA_FLAGS": cpu_flags(2), "PYTHON": sys.executable,
           "CONFIG": "configs/pretrain.py:tiny", "OUT": str(out), "BATCH": "2", "STEPS": "1",
           "MEMORY_GIB": str(MEMORY_GIB), "BATCH_MULTIPLE": "2", "BUDGET_S": "1200"}
    proc = subprocess.run([str(ROOT / "launch" / "gpu_benchmark.sh"), *TINY], env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())
    return out, {r["variant"]: r for r in rows}, proc.stdout


def test_every_variant_runs_or_says_why_not(matrix):
    out, rows, _ = matrix
    assert list(rows) == [v["name"] for v in benchmark_matrix.variants(2)]
    assert rows["cudnn attention"]["status"].startswith("not run: needs an NVIDIA GPU")
    for name, row in rows.items():
        if name != "cudnn attention":
            assert row["status"] == "ok", (name, row["status"])
            assert row["images_per_s"] > 0 and row["num_devices"] == 2
            assert (out / f"{benchmark_matrix._slug(name)}.log").exists()


def test_variants_change_what_they_name(matrix):
    _, rows, _ = matrix
    switches = {name: row["switches"] for name, row in rows.items() if row["status"] == "ok"}
    assert switches["baseline"]["train.remat"] is False
    assert switches["remat"]["train.remat"] is True
    assert switches["baseline"]["model.gather_grad"] == "gather"
    assert switches["scatter grads"]["model.gather_grad"] == "scatter"
    assert switches["scanned blocks"]["model.scan_blocks"] is True
    assert rows["baseline"]["mesh"] == {"data": 2, "fsdp": 1}
    assert rows["fsdp"]["mesh"] == {"data": 1, "fsdp": 2}
    assert rows["baseline"]["global_batch"] == 2 * 2


def test_largest_batch_is_larger_and_its_compiled_memory_fits(matrix):
    _, rows, _ = matrix
    for name, ref in (("largest batch", "baseline"), ("largest batch, remat", "remat")):
        row = rows[name]
        batch = row["global_batch"] // row["num_devices"]
        assert batch > 2 and batch % 2 == 0
        mem = row["compiled_memory"]
        live = mem["argument"] + mem["output"] - mem["alias"] + mem["temp"]
        assert live <= MEMORY_GIB * 2 ** 30, (name, live)


def test_time_split_and_table(matrix):
    out, rows, stdout = matrix
    split = rows["baseline"]["split"]
    assert split["encoder_s"] > 0 and split["decoders_s"] > 0
    assert split["encoder_s"] + split["decoders_s"] + split["other_s"] == pytest.approx(
        split["forward_backward_s"])
    assert split["update_s"] == pytest.approx(rows["baseline"]["step_time_median_s"]
                                              - split["forward_backward_s"])
    assert all(row["split"] is None for name, row in rows.items()  # --nosplit
               if name != "baseline" and row["status"] == "ok")
    md = (out / "results.md").read_text()
    assert md.startswith("2 x cpu, tiny /16 at 32px, float32")
    assert "| variant | batch/device | images/s |" in md
    for name in rows:
        assert f"| {name} |" in md and f"| {name} |" in stdout


def test_largest_batch_estimate():
    # 100 MiB of arguments, 1 MiB of temporaries per image at batch 8, 1 GiB limit
    ref = {"global_batch": 16, "num_devices": 2,
           "compiled_memory": {"argument": 100 * 2 ** 20, "output": 100 * 2 ** 20,
                               "alias": 100 * 2 ** 20, "temp": 8 * 2 ** 20}}
    # (0.92 * 1024 - 100) / 1 = 842.08 images -> 832 as a multiple of 32
    assert benchmark_matrix.largest_batch(ref, 2 ** 30, 32) == 832
    assert benchmark_matrix.largest_batch(ref, 100 * 2 ** 20, 32) == 0
