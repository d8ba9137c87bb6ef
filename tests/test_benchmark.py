"""The training-step benchmark runs the real step on a CPU-sized config (timings unchecked)."""
import jax
import numpy as np
import pytest

from multimae_jax import benchmark
from multimae_jax.train import sharding
from train_helpers import small_config


def test_synthetic_batch_has_the_pipeline_layout():
    c = small_config()
    mesh = sharding.make_mesh(c.mesh.to_dict())
    batch = benchmark.synthetic_batch(c, sharding.batch_sharding(mesh))
    expected = {"rgb": ((8, 32, 32, 3), np.uint8), "depth": ((8, 32, 32, 1), np.int32),
                "semseg": ((8, 8, 8), np.uint8)}
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
    for x in batch.values():
        assert x.sharding == sharding.batch_sharding(mesh)
    assert int(batch["semseg"].max()) < c.modalities.semseg.num_classes


def test_run_reports_positive_figures():
    c = small_config()
    r = benchmark.run(c, steps=2, warmup=1)
    assert r["num_devices"] == jax.device_count()
    assert r["global_batch"] == 8
    assert len(r["step_times_s"]) == 2
    assert r["step_time_median_s"] > 0 and r["step_time_mean_s"] > 0
    assert r["images_per_s"] > 0 and r["images_per_s_per_device"] > 0
    assert r["flops_per_image"] > 0 and r["flops_per_image_analytic"] > 0
    # XLA also counts element-wise work, which the analytic matmul count leaves out (about 2x
    # on this tiny model); a wrong per-device or per-micro-batch division would be off by >= 8x
    assert 0.8 < r["flops_per_image"] / r["flops_per_image_analytic"] < 4
    assert np.isfinite(r["loss"])
    assert r["compile_s"] > 0
    if r["platform"] == "cpu":
        assert r["peak_flops_per_device"] is None and r["mfu"] is None
    text = benchmark.report(r)
    for key in ("devices:", "global batch:", "compile time:", "step time:", "images/s:",
                "FLOPs/image:", "MFU:", "peak memory/device:"):
        assert key in text


@pytest.mark.parametrize("kind, dtype, peak", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12), ("NVIDIA H200", "bfloat16", 989e12),
    ("NVIDIA A100-SXM4-40GB", "bfloat16", 312e12), ("NVIDIA H100 80GB HBM3", "float32", 494.5e12),
    ("TPU v4", "bfloat16", 275e12), ("TPU v5 lite", "bfloat16", 197e12),
    ("TPU v5p", "bfloat16", 459e12), ("cpu", "bfloat16", None)])
def test_peak_flops(kind, dtype, peak):
    assert benchmark.peak_flops(kind, dtype) == peak
