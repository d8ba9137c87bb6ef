"""The pre-training optimizer against the official one: lr / wd schedules, torch AdamW with
param-group lr scales, gradient clipping and skipping, uncertainty task weighting; and a
skipped update leaving the lr on the global step."""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from multimae_jax.train import sharding
from multimae_jax.train.optimizer import (clip_by_total_norm, make_optimizer, warmup_cosine,
                                          warmup_steps, weight_decay_schedule)
from multimae_jax.train.pretrain import pretrain_trainer
from multimae_jax.train.task_balancing import uncertainty_weighting
from multimae_jax.train.validate import ConfigError, validate
from train_helpers import host_batch, small_config


def optimizer_config(**fields):
    defaults = dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05, weight_decay_end=None,
                    decay_all_params=True, balancer_lr_scale=1.0, lr_mults=(), warmup_epochs=0.0,
                    warmup_steps=-1)
    return ml_collections.ConfigDict({**defaults, **fields})


def test_schedules_equal_the_official_cosine_scheduler(official_dir, official_npz):
    cases = json.loads((official_dir / "schedules.json").read_text())["cases"]
    arrays = official_npz("schedules")
    assert {"lr_warmup_epochs", "lr_warmup_steps", "lr_min", "wd_end"} <= set(cases)
    for name, c in cases.items():
        total = c["epochs"] * c["niter_per_ep"]
        o = optimizer_config(warmup_epochs=c["warmup_epochs"], warmup_steps=c["warmup_steps"])
        schedule = warmup_cosine(c["base_value"], total, warmup_steps(o, c["niter_per_ep"]),
                                 c["final_value"])
        # float32: 1 + cos loses digits near the end of the cosine, hence atol
        np.testing.assert_allclose(schedule(np.arange(total)), arrays[name], rtol=2e-6,
                                   atol=1e-7 * c["base_value"], err_msg=name)
    c = cases["wd_end"]  # run_pretraining_multimae.py: the wd schedule has no warm-up
    o = optimizer_config(weight_decay=c["base_value"], weight_decay_end=c["final_value"])
    total = c["epochs"] * c["niter_per_ep"]
    np.testing.assert_allclose(weight_decay_schedule(o, total)(np.arange(total)),
                               arrays["wd_end"], rtol=2e-6, atol=1e-7 * c["base_value"])


def test_warmup_steps_without_warmup_epochs_is_a_config_error():
    config = small_config(**{"optimizer.warmup_epochs": 0.0, "optimizer.warmup_steps": 5})
    with pytest.raises(ConfigError, match=r"^config\.optimizer\.warmup_steps=5: needs"):
        validate(config, 8, 1)


def test_uncertainty_weighting_equals_the_official(official_npz):
    ref = official_npz("task_balancing")
    assert (ref["losses"] == 0).sum() == 1  # the dropped-task case is covered
    weighted, vjp = jax.vjp(uncertainty_weighting, jnp.asarray(ref["log_vars"]),
                            jnp.asarray(ref["losses"]))
    grad_log_vars, grad_losses = vjp(jnp.ones_like(weighted))  # d sum(weighted)
    np.testing.assert_allclose(weighted, ref["weighted"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad_log_vars, ref["grad_log_vars"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad_losses, ref["grad_losses"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", ["", "big/"])
def test_clip_grad_equals_torch_clip_grad_norm(official_npz, case):
    ref = official_npz("clip_grad")
    grads = [jnp.asarray(ref[f"{case}grad/{i}"]) for i in range(3)]
    norm = optax.tree.norm(grads)
    np.testing.assert_allclose(norm, ref[f"{case}total_norm"], rtol=1e-6)
    clipped = clip_by_total_norm(grads, float(ref[f"{case}max_norm"]), norm)
    for i in range(3):
        np.testing.assert_allclose(clipped[i], ref[f"{case}clipped/{i}"], rtol=1e-6, atol=1e-9)


def torch_adamw(params, grads, applied, lrs, wds, lr_scale, o):
    """torch.optim.AdamW (its documented algorithm) over a flat {name: array} with one param
    group per name: group lr = lrs[it] x lr_scale[name], weight decay wds[it]; iterations
    where `applied` is False do not call optimizer.step()."""
    params = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in params.items()}
    t = 0
    for it, (g, ok) in enumerate(zip(grads, applied)):
        if not ok:
            continue
        t += 1
        for k in params:
            lr = lrs[it] * lr_scale[k]
            params[k] = params[k] * (1 - lr * wds[it])
            m[k] = o.b1 * m[k] + (1 - o.b1) * g[k]
            v[k] = o.b2 * v[k] + (1 - o.b2) * g[k] ** 2
            m_hat, v_hat = m[k] / (1 - o.b1 ** t), v[k] / (1 - o.b2 ** t)
            params[k] = params[k] - lr * m_hat / (np.sqrt(v_hat) + o.eps)
    return params


def test_adamw_follows_the_global_step_with_group_lr_scales():
    o = optimizer_config(weight_decay=0.05, weight_decay_end=0.2, balancer_lr_scale=3.0,
                         lr_mults=(("params/dec/.*", 0.5),))
    total, warm, base, final = 8, 3, 1e-2, 1e-3
    # utils/native_scaler.py: cosine_scheduler, written out with numpy
    i = np.arange(total - warm)
    lrs = np.concatenate([np.linspace(0, base, warm),
                          final + 0.5 * (base - final) * (1 + np.cos(np.pi * i / len(i)))])
    j = np.arange(total)
    wds = 0.2 + 0.5 * (0.05 - 0.2) * (1 + np.cos(np.pi * j / total))
    rng = np.random.default_rng(0)
    shapes = {"params/enc/kernel": (3, 4), "params/enc/bias": (4,), "params/dec/kernel": (4, 2),
              "balancer/log_vars": (3,)}
    scales = {"params/enc/kernel": 1.0, "params/enc/bias": 1.0, "params/dec/kernel": 0.5,
              "balancer/log_vars": 3.0}
    init = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    grads = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
             for _ in range(6)]
    applied = [True, True, False, True, False, True]  # skipped: the global step still advances

    def nest(flat):
        return {"params": {"enc": {"kernel": flat["params/enc/kernel"],
                                   "bias": flat["params/enc/bias"]},
                           "dec": {"kernel": flat["params/dec/kernel"]}},
                "balancer": {"log_vars": flat["balancer/log_vars"]}}

    tx = make_optimizer(o, warmup_cosine(base, total, warm, final),
                        weight_decay_schedule(o, total))
    params = nest(init)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for step, (g, ok) in enumerate(zip(grads, applied)):
        if ok:
            updates, state = update(nest(g), state, params, step=step)
            params = optax.apply_updates(params, updates)
    want = nest(torch_adamw(init, grads, applied, lrs, wds, scales, o))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 params, want)


def test_an_lr_mults_rule_matching_nothing_is_an_error():
    o = optimizer_config(lr_mults=(("params/decoder/.*", 0.5),))
    tx = make_optimizer(o, lambda s: 1e-3, lambda s: 0.0)
    with pytest.raises(ValueError, match=r"config\.optimizer\.lr_mults: \['params/decoder/\.\*'\]"):
        tx.init({"params": {"encoder": {"kernel": jnp.zeros((2, 2))}}})


# ---- the real step ---------------------------------------------------------------------------

BASE_LR, SKIP_NORM = 1e-2, 100.0


def adam_count(host_state):
    return int(host_state["opt_state"][0].count)


@pytest.fixture(scope="module")
def balanced_run():
    """Four steps of the uncertainty-weighted model (one compile) with skip_grad on and no
    weight decay (so a first Adam step moves each parameter by lr x g / (|g| + eps) ~ lr):
    0: NaN parameters (non-finite, skipped); 1: clean again (applied);
    2: log_vars = -20, weighting the losses by e^20 (a finite gradient norm above skip_grad:
    skipped); 3: log_vars from step 1 again (applied). Returns the initial host state, the
    host state after each step and each step's metrics."""
    config = small_config(**{"train.task_balancer": "uncertainty",
                             "optimizer.balancer_lr_scale": 3.0,
                             "optimizer.skip_grad": SKIP_NORM, "optimizer.weight_decay": 0.0})
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1])
    runner = pretrain_trainer(config, mesh, total_steps=10, warmup_steps=3, base_lr=BASE_LR)
    state = runner.init(runner.key)
    clean = jax.device_get(state)  # host copies: the step donates its input
    hosts, metrics = [], []
    replacements = [{"params": jax.tree.map(lambda p: p * np.nan, clean["params"])},
                    {"params": clean["params"]}, {"balancer": {"log_vars": np.full(4, -20.0)}},
                    None]
    for i, replace in enumerate(replacements):
        if replace is None:
            replace = {"balancer": hosts[1]["balancer"]}
        state = {**state, **{k: jax.device_put(v, runner.state_sharding[k])
                             for k, v in replace.items()}}
        state, m = runner.step(state, jax.device_put(host_batch(config, i), runner.batch_sharding))
        hosts.append(jax.device_get(state))
        metrics.append(jax.device_get(m))
    return config, clean, hosts, metrics


def test_a_skipped_update_leaves_the_lr_on_the_global_step(balanced_run):
    _, clean, hosts, metrics = balanced_run
    assert not metrics[0]["finite"] and int(hosts[0]["skipped"]) == 1
    assert int(hosts[0]["nonfinite_streak"]) == 1 and adam_count(hosts[0]) == 0
    lr1 = np.linspace(0, BASE_LR, 3)[1]  # the official warm-up at iteration 1
    np.testing.assert_allclose(metrics[1]["lr"], lr1, rtol=1e-6)
    # the applied lr is the logged one: the largest move of a first Adam step is lr
    moves = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b), hosts[1]["params"],
                                         clean["params"]))
    largest = max(float(x.max()) for x in moves)
    np.testing.assert_allclose(largest, lr1, rtol=2e-3)
    assert adam_count(hosts[1]) == 1  # Adam's own count skipped the non-finite step
    # the balancer's group: lr x balancer_lr_scale
    np.testing.assert_allclose(np.abs(hosts[1]["balancer"]["log_vars"]), 3 * lr1, rtol=1e-3)
    assert int(hosts[1]["nonfinite_streak"]) == 0


def test_skip_grad_skips_a_large_gradient_without_stopping_the_run(balanced_run):
    _, _, hosts, metrics = balanced_run
    assert metrics[2]["finite"] and metrics[2]["grad_norm"] >= SKIP_NORM
    assert metrics[1]["grad_norm"] < SKIP_NORM and metrics[3]["grad_norm"] < SKIP_NORM
    h = hosts[2]
    assert int(h["skipped_grad_norm"]) == 1 and int(h["skipped"]) == 1  # counted apart
    assert int(h["nonfinite_streak"]) == 0 and int(h["step"]) == 3 and adam_count(h) == 1
    jax.tree.map(np.testing.assert_array_equal, h["params"], hosts[1]["params"])
    np.testing.assert_allclose(metrics[3]["lr"], BASE_LR, rtol=1e-6)  # cosine from step 3
    assert adam_count(hosts[3]) == 2


def test_the_step_weighs_the_task_losses_by_uncertainty(balanced_run):
    config, clean, hosts, metrics = balanced_run
    tasks = tuple(config.model.output_tasks)
    assert "balancer" not in clean["params"]  # the model's params stay loadable alone
    m, s = metrics[3], hosts[1]["balancer"]["log_vars"]  # step 3 weighs with step 1's
    assert np.all(np.abs(s) > 1e-3)  # learnt: the weights differ from 1
    losses = np.array([m[f"loss/{t}"] for t in tasks])
    np.testing.assert_allclose(m["loss"], losses.sum(), rtol=1e-6)  # logged unweighted
    np.testing.assert_allclose([m[f"loss_weighted/{t}"] for t in tasks],
                               np.exp(-s) * losses + s, rtol=1e-5)


def test_clip_grad_clips_the_update_and_overrides_skip_grad():
    # Adam with a huge eps (and lr to match, no decay) updates by about -gradient, so the
    # parameters move by the clipped gradient; skip_grad (set) is ignored under clip_grad
    clip = 0.5
    config = small_config(**{"optimizer.clip_grad": clip, "optimizer.skip_grad": 1e-6,
                             "optimizer.eps": 1e3, "optimizer.weight_decay": 0.0})
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1])
    runner = pretrain_trainer(config, mesh, total_steps=10, warmup_steps=0, base_lr=1e3)
    state = runner.init(runner.key)
    before = jax.device_get(state["params"])
    state, metrics = runner.step(state, jax.device_put(host_batch(config), runner.batch_sharding))
    norm = float(metrics["grad_norm"])  # logged before clipping
    assert norm > 2 * clip and int(state["skipped_grad_norm"]) == 0
    moved = optax.tree.norm(jax.tree.map(np.subtract, jax.device_get(state["params"]), before))
    np.testing.assert_allclose(moved, clip * norm / (norm + 1e-6), rtol=2e-3)
