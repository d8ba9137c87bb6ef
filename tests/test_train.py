"""The pre-training step and loop: official schedule, sharding equivalence, exact resumption,
non-finite handling, config errors, and the entry point."""
import functools
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import traverse_util

import multimae_jax as mm
from multimae_jax.train import sharding
from multimae_jax.train.checkpoint import restore_state_only
from multimae_jax.train.loop import train
from multimae_jax.train.optimizer import decay_mask
from multimae_jax.train.pretrain import pretrain_trainer
from multimae_jax.train.validate import ConfigError, validate
from train_helpers import (FINISHED, FSDP_MIN_SIZE, host_batch, run_steps, small_config,
                           subprocess_env)
from xla_flags import cpu_flags

REPO = Path(__file__).resolve().parents[1]


def test_weight_decay_covers_every_parameter_by_default():
    params = {"encoder": {"0": {"fc": {"kernel": np.zeros((2, 2)), "bias": np.zeros(2)}}},
              "global_tokens": np.zeros((1, 1, 2))}
    every = jax.tree.leaves(decay_mask(params, decay_all=True))
    usual = decay_mask(params, decay_all=False)
    assert all(every)
    assert usual["encoder"]["0"]["fc"]["kernel"] and not usual["encoder"]["0"]["fc"]["bias"]
    assert not usual["global_tokens"]


def without_key_bias(path, value):
    """Attention key biases get an exactly-zero gradient (softmax ignores them), so Adam turns
    float round-off into full-size updates there; every other parameter is compared."""
    value = np.asarray(value)
    if path[-1] == "bias" and path[-2] in ("qkv", "kv"):
        c = value.shape[0] // (3 if path[-2] == "qkv" else 2)
        return np.delete(value, np.s_[c:2 * c] if path[-2] == "qkv" else np.s_[:c])
    return value


def _fsdp_steps(tmp_path) -> tuple[dict, dict, str]:
    """(params, metrics, qkv kernel's PartitionSpec) of tests/fsdp_worker.py; run a second time
    if XLA:CPU's emulated collectives deadlocked (see the worker's docstring)."""
    out = tmp_path / "fsdp.npz"
    env = {**subprocess_env(), "XLA_FLAGS": cpu_flags(16, terminate_s=180)}
    for attempt in range(2):
        done = subprocess.run([sys.executable, str(REPO / "tests" / "fsdp_worker.py"), str(out)],
                              env=env, capture_output=True, text=True, timeout=900)
        if done.returncode == 0 or "Termination timeout" not in done.stderr:
            break
    assert done.returncode == 0, done.stderr[-4000:]
    with np.load(out) as f:
        params = traverse_util.unflatten_dict(
            {tuple(k.split("/")[1:]): f[k] for k in f.files if k.startswith("params/")})
        metrics = {k.split("/", 1)[1]: f[k] for k in f.files if k.startswith("metrics/")}
        return params, metrics, str(f["qkv_spec"])


def test_data_parallel_and_fsdp_steps_equal_the_single_device_step(tmp_path):
    config = small_config(**{"train.fsdp_min_size": FSDP_MIN_SIZE})
    ref_params, ref_metrics, _ = run_steps(config, {"data": 1, "fsdp": 1}, jax.devices()[:1])
    data_parallel = run_steps(config, {"data": 8, "fsdp": 1}, jax.devices())[:2]
    fsdp_params, fsdp_metrics, qkv_spec = _fsdp_steps(tmp_path)
    assert "fsdp" in qkv_spec  # large parameters really are split over the fsdp axis
    for params, metrics in (data_parallel, (fsdp_params, fsdp_metrics)):
        np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
        np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-5)
        flat, ref = traverse_util.flatten_dict(params), traverse_util.flatten_dict(ref_params)
        assert flat.keys() == ref.keys()
        for path, value in flat.items():
            np.testing.assert_allclose(without_key_bias(path, value),
                                       without_key_bias(path, ref[path]), atol=2e-6, rtol=1e-4,
                                       err_msg="/".join(path))


def test_gradient_accumulation_averages_the_micro_batch_gradients():
    # Adam with a huge eps (and lr to match, no decay) updates by about -gradient: the new
    # parameters then expose any error in the accumulated gradient, including its scale.
    config = small_config(**{"train.grad_accum_steps": 2, "optimizer.eps": 1e3,
                             "optimizer.weight_decay": 0.0})
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1])
    runner = pretrain_trainer(config, mesh, total_steps=10, warmup_steps=0, base_lr=1e3)
    state = runner.init(runner.key)
    batch = host_batch(config)
    key = jax.random.fold_in(runner.key, 0)  # the step-0 key; micro-batch i uses fold_in(key, i)

    @jax.jit
    def expected(state):
        def loss(params, i):
            mb = jax.tree.map(lambda x: x[4 * i:4 * (i + 1)], batch)
            objective, _ = runner.loss({"params": params}, state["buffers"], mb,
                                       jax.random.fold_in(key, i))
            return objective
        (l0, g0), (l1, g1) = (jax.value_and_grad(loss)(state["params"], i) for i in (0, 1))
        grads = jax.tree.map(lambda a, b: (a + b) / 2, g0, g1)
        trainable = {"params": state["params"]}
        updates, _ = runner.tx.update({"params": grads}, state["opt_state"], trainable,
                                      step=state["step"])
        return (l0 + l1) / 2, optax.apply_updates(trainable, updates)["params"]

    want_loss, want_params = jax.device_get(expected(state))
    state, metrics = runner.step(state, jax.device_put(batch, runner.batch_sharding))
    np.testing.assert_allclose(float(metrics["loss"]), float(want_loss), rtol=1e-5)
    got = traverse_util.flatten_dict(jax.device_get(state["params"]))
    for path, value in traverse_util.flatten_dict(want_params).items():
        np.testing.assert_allclose(got[path], value, atol=1e-6, rtol=1e-4, err_msg="/".join(path))


def test_interrupted_and_resumed_run_equals_a_straight_run(finished_run, tmp_path, monkeypatch):
    """Stopped twice, by `stop_at_step` and by a SIGTERM (as a preemption), then resumed; the
    straight run is conftest.py's finished_run."""
    config = small_config(**FINISHED)
    result = train(config, tmp_path / "resumed", stop_at_step=3)
    assert result["stopped"] == "stop_at_step" and restore_state_only(tmp_path / "resumed")[0] == 3

    from multimae_jax.train import loop
    real_global_batch, batches = loop.global_batch, []

    def terminated_while_fetching_step_5(*args):
        batches.append(None)
        if len(batches) == 2:  # resumed at step 4, so the second batch is step 5's
            os.kill(os.getpid(), signal.SIGTERM)
        return real_global_batch(*args)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(loop, "global_batch", terminated_while_fetching_step_5)
    assert train(config, tmp_path / "resumed")["stopped"] == "SIGTERM"  # saved step 5
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) is before  # train() put the handlers back
    assert restore_state_only(tmp_path / "resumed")[0] == 5

    assert "stopped" not in train(config, tmp_path / "resumed")
    (s1, a), (s2, b) = restore_state_only(finished_run), restore_state_only(tmp_path / "resumed")
    assert s1 == s2 == 8
    jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
    jax.tree.map(np.testing.assert_array_equal, a["opt_state"], b["opt_state"])


@pytest.mark.parametrize("override,field", [
    ({"masking.num_encoded_tokens": 13}, "config.masking.num_encoded_tokens=13"),
    ({"model.input_tasks": ("rgb", "normals")}, "config.model.input_tasks: unknown modality 'normals'"),
    ({"data.global_batch_size": 12}, "config.data.global_batch_size=12"),
    ({"data.path": "/no/such/dataset"}, "config.data.path=/no/such/dataset"),
    ({"data.global_batch_size": 0}, "config.data.global_batch_size=0: must be >= 1"),
    ({"train.grad_accum_steps": 0}, "config.train.grad_accum_steps=0: must be >= 1"),
    ({"train.checkpoint_every": 0}, "config.train.checkpoint_every=0: must be >= 1"),
    ({"train.log_every": 0}, "config.train.log_every=0: must be >= 1"),
    ({"train.picture_every": 0}, "config.train.picture_every=0: must be >= 1"),
    ({"train.keep_checkpoints": 0}, "config.train.keep_checkpoints=0: must be >= 1"),
    ({"train.max_nonfinite_steps": 0}, "config.train.max_nonfinite_steps=0: must be >= 1"),
    ({"train.num_steps": -1, "train.epochs": 0}, "config.train.num_steps=-1: with"),
    ({"data.synthetic_samples": 0}, "config.data.synthetic_samples=0: must be >= 1"),
    ({"data.num_workers": -1}, "config.data.num_workers=-1: must be"),
    ({"data.hflip": 2.0}, "config.data.hflip=2.0: must be in [0, 1]"),
    ({"masking.alphas": -1.0}, "config.masking.alphas=-1.0: must be finite and > 0"),
    ({"masking": {"num_encoded_tokens": 6, "alphas": (1.0, 2.0), "sample_tasks_uniformly": False}},
     "config.masking.alphas=(1.0, 2.0): expected one value, or one per input task"),
    ({"model.patch_size": 0}, "config.model.patch_size=0: must be >= 1"),
    ({"modalities.semseg.stride_level": 32}, "config.modalities.semseg.stride_level=32: must"),
    ({"modalities.semseg.stride_level": 3}, "config.modalities.semseg.stride_level=3: must divide"),
    ({"model.decoder_num_heads": 3}, "config.model.decoder_num_heads=3: must divide"),
    ({"model.overrides.num_heads": 5}, "config.model.overrides: num_heads=5"),
    ({"model.drop_path_rate": 1.0}, "config.model.drop_path_rate=1.0: must be in [0, 1)"),
    ({"model.attention": "cudnn"}, "config.model.attention='cudnn': cuDNN attention needs an "
                                   "NVIDIA GPU; this backend is cpu"),
    ({"model.attention": "flash"}, "config.model.attention='flash': expected one of"),
    ({"model.gather_grad": "scatter_add"}, "config.model.gather_grad='scatter_add': expected"),
    ({"mesh.data": 3}, "config.mesh: {'data': 3, 'fsdp': 1} needs 3 devices, there are 8"),
    ({"mesh.fsdp": 0}, "config.mesh.fsdp=0: must be >= 1, or -1"),
    ({"optimizer.blr": float("nan")}, "config.optimizer.blr=nan: must be finite and > 0"),
    ({"optimizer.min_lr": -1e-6}, "config.optimizer.min_lr=-1e-06: must be finite and >= 0"),
    ({"optimizer.b2": 1.0}, "config.optimizer.b2=1.0: must be in [0, 1)"),
    ({"optimizer.eps": 0.0}, "config.optimizer.eps=0.0: must be finite and > 0"),
    ({"optimizer.weight_decay": -0.05}, "config.optimizer.weight_decay=-0.05: must be"),
    ({"optimizer.warmup_epochs": -1.0}, "config.optimizer.warmup_epochs=-1.0: must be"),
])
def test_bad_configs_stop_before_compiling(tmp_path, override, field):
    with pytest.raises(ConfigError) as err:
        train(small_config(**override), tmp_path)
    assert str(err.value).startswith(field) and "\n" not in str(err.value)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("override,message", [
    ({"train.compute_dtype": "float32"}, "takes bf16 (or fp16) inputs; set "
                                         "config.train.compute_dtype='bfloat16'"),
    ({"model.overrides.attn_drop_rate": 0.1}, "no attention dropout; "
                                              "config.model.overrides.attn_drop_rate=0.1"),
    ({"model.overrides.num_heads": 8}, "a multiple of 8 and at most 128 on this GPU; "
                                       "config.model.overrides (encoder) give 96 / 8 = 12"),
    ({"model.decoder_num_heads": 16}, "config.model.decoder_dim / decoder_num_heads give 64 / 16"),
])
def test_cudnn_attention_refuses_what_cudnn_cannot_run(monkeypatch, override, message):
    """On a GPU backend (pretended: the checks run before anything is compiled)."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    config = small_config(**{"model.attention": "cudnn", "train.compute_dtype": "bfloat16"})
    validate(config, 8, 1)  # the tiny recipe's heads are 32-d (encoder) and 32-d (decoders)
    for field, value in override.items():  # attn_drop_rate is no field of the recipe's
        section, key = field.rsplit(".", 1)
        functools.reduce(getattr, section.split("."), config)[key] = value
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        validate(config, 8, 1)
    assert str(err.value).startswith("config.model.attention='cudnn': ")


def test_entry_point_writes_checkpoint_events_and_pictures(tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "multimae_jax.main", "--config=configs/pretrain.py:tiny",
           f"--workdir={workdir}", "--config.train.num_steps=3", "--config.train.picture_every=3",
           "--config.train.log_every=1", "--config.data.global_batch_size=8",
           "--config.data.synthetic_samples=64", "--config.model.image_size=32",
           "--config.masking.num_encoded_tokens=6", "--config.model.overrides.depth=1",
           "--config.model.decoder_depth=0"]
    # one CPU device, as on the laptop the README's first command is for
    env = {**os.environ, "XLA_FLAGS": cpu_flags(1)}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step 3: loss" in out.stderr + out.stdout
    assert (workdir / "checkpoints" / "3").is_dir()
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert (workdir / "pictures" / "step_0000003.png").is_file()
    model, variables = mm.load_pretrained(workdir)
    assert isinstance(model, mm.MultiMAE) and "encoder" in variables["params"]
    bad = subprocess.run(cmd[:4] + ["--config.masking.num_encoded_tokens=1000"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "config.masking.num_encoded_tokens=1000" in bad.stderr
