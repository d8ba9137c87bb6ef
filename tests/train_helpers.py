"""A very small pre-training config for tests (and the shrinking of a fine-tuning one), host
batches in the pipeline's layout, a few steps on a mesh, and the environment of test
subprocesses."""
import os

import jax
import numpy as np

from configs.pretrain import get_config
from multimae_jax.train import sharding
from multimae_jax.train.pretrain import pretrain_trainer

# The tiny recipe at 32 px with a one-block encoder and no decoder blocks (cross-attention + MLP
# only): keeps compile times short.
SMALL = {
    "model.image_size": 32,
    "model.overrides.depth": 1,
    "model.decoder_depth": 0,
    "masking.num_encoded_tokens": 6,
    "data.global_batch_size": 8,
    "data.synthetic_samples": 64,
    "optimizer.warmup_epochs": 0.25,
    "train.num_steps": 4,
    "train.log_every": 1,
    "train.picture_every": 1000,
    "train.checkpoint_every": 2,
}


# A finished run as the restart and checkpoint tests start from (conftest.py: finished_run):
# checkpoints at steps 2, 4, 6 and 8.
FINISHED = {"train.num_steps": 8, "train.keep_checkpoints": 4}


def small_config(**overrides):
    """`SMALL` on the tiny variant; `overrides` as {'train.num_steps': 4, ...}."""
    c = get_config("tiny")
    c.evals = {}  # the tiny recipe's k-NN: tests/test_knn.py
    c.update_from_flattened_dict({**SMALL, **overrides})
    return c


def host_batch(config, seed=0):
    """A random global batch as the host pipeline emits it for rgb, depth and semseg."""
    r = np.random.default_rng(seed)
    b, s = config.data.global_batch_size, config.model.image_size
    return {"rgb": r.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
            "depth": r.integers(1000, 60000, (b, s, s, 1), dtype=np.int32),
            "semseg": r.integers(0, 8, (b, s // 4, s // 4), dtype=np.uint8)}


# FSDP splits the parameters with at least this many elements (most of small_config's).
FSDP_MIN_SIZE = 1024


def run_steps(config, mesh_spec, devices, n=2):
    """n steps on host_batch(config, 0..n-1) -> (params, metrics) on the host, and the state."""
    mesh = sharding.make_mesh(mesh_spec, devices)
    runner = pretrain_trainer(config, mesh, total_steps=10, warmup_steps=2, base_lr=1e-3)
    state = runner.init(runner.key)
    for i in range(n):
        batch = jax.device_put(host_batch(config, i), runner.batch_sharding)
        state, metrics = runner.step(state, batch)
    return jax.device_get(state["params"]), jax.device_get(metrics), state


def subprocess_env() -> dict:
    """This test process's environment plus its compilation cache (conftest.py), for
    subprocesses that run the same programs (same XLA_FLAGS): they skip most compiling."""
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}


def small_finetune(config, overrides: dict):
    """A fine-tuning `config` with the flattened `overrides` (e.g. a test's sizes) applied and
    its 'val' evaluator run every 2 steps: `every` is set apart because update_from_flattened_dict
    only sets fields that exist (the recipes schedule by every_epochs)."""
    config.update_from_flattened_dict(overrides)
    config.evals.val.every = 2
    return config
