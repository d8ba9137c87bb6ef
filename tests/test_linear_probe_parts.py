"""The parts of MAE's linear probing against facebookresearch/mae (fixture linprobe, written by
tests/official/linprobe_cases.py): LARS under the per-iteration lr schedule, torch's
BatchNorm1d, adjust_learning_rate, the one-draw RandomResizedCrop; and the probe head's shapes,
pooling and init."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from multimae_jax.data.transforms import PretrainAugment, mae_crop_size
from multimae_jax.models.probe import LinearProbeHead, TorchBatchNorm
from multimae_jax.train.lars import lars
from multimae_jax.train.optimizer import mae_warmup_cosine


@pytest.fixture(scope="module")
def meta(official_dir):
    return json.loads((official_dir / "linprobe.json").read_text())


@pytest.fixture(scope="module")
def arrays(official_npz):
    return official_npz("linprobe")


def _lars_run(tx, arrays, meta, *, extra=None):
    """Params after each of the fixture's steps under `tx` (jitted update)."""
    names, steps = list(meta["lars"]["shapes"]), meta["lars"]["steps"]
    params = {n: jnp.asarray(arrays[f"lars/init/{n}"]) for n in names}
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads, extra):
        updates, state = tx.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state
    out = []
    for s in range(steps):
        grads = {n: jnp.asarray(arrays[f"lars/grad/{s}/{n}"]) for n in names}
        params, state = step(params, state, grads, extra(s) if extra else {})
        out.append(params)
    return out


def _assert_lars_matches(out, arrays, meta, case):
    for s, params in enumerate(out):
        for n, p in params.items():
            want = arrays[f"lars/{case}/{s}/{n}"]
            np.testing.assert_allclose(p, want, rtol=0, atol=1e-6, err_msg=f"{case} step {s} {n}")
    # the first step (lr 0) moves nothing; by the last every param has moved (by 1e-3 at least),
    # except a zero-gradient one without weight decay
    for n, p in out[0].items():
        np.testing.assert_array_equal(arrays[f"lars/{case}/0/{n}"], arrays[f"lars/init/{n}"])
    for n in out[-1]:
        moved = np.abs(arrays[f"lars/{case}/{len(out) - 1}/{n}"] - arrays[f"lars/init/{n}"]).max()
        assert moved == 0 if (case, n) == ("wd0", "nograd") else moved > 1e-3, (case, n, moved)


def _lars_schedule(meta):
    c = meta["lars"]["schedule"]
    spe = c["steps_per_epoch"]
    return mae_warmup_cosine(c["lr"], c["epochs"] * spe, c["warmup_epochs"] * spe, c["min_lr"])


@pytest.mark.parametrize("case", ["wd0.05", "wd0"])
def test_lars_under_the_schedule_equals_mae(arrays, meta, case):
    schedule = _lars_schedule(meta)
    np.testing.assert_allclose(schedule(np.arange(meta["lars"]["steps"])), arrays["lars/lr"],
                               rtol=1e-6)
    wd = meta["lars"]["weight_decay"][case]
    _assert_lars_matches(_lars_run(lars(schedule, weight_decay=wd), arrays, meta),
                         arrays, meta, case)


def test_lars_takes_the_global_step(arrays, meta):
    """Given `step=`, the lr follows it, not the count of updates (here the same steps, shifted
    through a shifted schedule)."""
    schedule = _lars_schedule(meta)
    tx = lars(lambda t: schedule(t - 100), weight_decay=0.05)
    out = _lars_run(tx, arrays, meta, extra=lambda s: {"step": jnp.int32(100 + s)})
    _assert_lars_matches(out, arrays, meta, "wd0.05")


def test_optax_lars_differs_under_the_schedule(arrays, meta):
    """optax.lars scales by lr before the momentum trace: with MAE's masks it still misses the
    fixture after the lr-0 first step, so the fixture tells the two orders apart."""
    mask = lambda tree: jax.tree.map(lambda p: p.ndim > 1, tree)  # noqa: E731
    tx = optax.lars(_lars_schedule(meta), weight_decay=0.05, weight_decay_mask=mask,
                    trust_ratio_mask=mask)
    out = _lars_run(tx, arrays, meta)
    gap = max(np.abs(out[-1][n] - arrays[f"lars/wd0.05/3/{n}"]).max() for n in out[-1])
    assert gap > 1e-3


def test_torch_batchnorm_equals_batchnorm1d(arrays, meta):
    bn = TorchBatchNorm()
    x0 = jnp.asarray(arrays["bn/train/0/x"])
    variables = bn.init(jax.random.key(0), x0, train=True)
    buffers = variables["buffers"]
    np.testing.assert_array_equal(buffers["running_mean"], 0.0)  # init does not update
    np.testing.assert_array_equal(buffers["running_var"], 1.0)
    for i in range(len(meta["batchnorm"]["train_batches"])):
        y, mutated = bn.apply({"buffers": buffers}, jnp.asarray(arrays[f"bn/train/{i}/x"]),
                              train=True, mutable=["buffers"])
        buffers = mutated["buffers"]
        np.testing.assert_allclose(y, arrays[f"bn/train/{i}/y"], rtol=1e-6, atol=2e-6,
                                   err_msg=f"batch {i}")
        for k in ("running_mean", "running_var"):
            np.testing.assert_allclose(buffers[k], arrays[f"bn/train/{i}/{k}"], rtol=1e-6,
                                       atol=1e-7, err_msg=f"batch {i} {k}")
        assert buffers["running_var"].dtype == jnp.float32
    y = bn.apply({"buffers": buffers}, jnp.asarray(arrays["bn/eval/x"]), train=False)
    np.testing.assert_allclose(y, arrays["bn/eval/y"], rtol=1e-6, atol=2e-6)
    # bfloat16 input: still float32 numerics and output
    assert bn.apply({"buffers": buffers}, x0.astype(jnp.bfloat16), train=False).dtype == jnp.float32


def test_grouped_batchnorm_is_torchs_on_each_gpu(arrays):
    """groups=2 as two GPUs: the first slice is what torch made of it alone (output and the
    running statistics it updates), the second normalised by its own statistics."""
    first, second = arrays["bn/train/0/x"], arrays["bn/eval/x"]  # 4 rows each
    bn = TorchBatchNorm(groups=2)
    x = jnp.asarray(np.concatenate([first, second]))
    variables = bn.init(jax.random.key(0), x, train=True)
    y, mutated = bn.apply(variables, x, train=True, mutable=["buffers"])
    np.testing.assert_allclose(y[:4], arrays["bn/train/0/y"], rtol=1e-6, atol=2e-6)
    for k in ("running_mean", "running_var"):
        np.testing.assert_allclose(mutated["buffers"][k], arrays[f"bn/train/0/{k}"], rtol=1e-6,
                                   atol=1e-7)
    # the second slice: standardised on its own (feature 4's variance is of the order of eps)
    np.testing.assert_allclose(np.asarray(y[4:]).mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y[4:, :4]).var(0), 1.0, rtol=1e-4)
    with pytest.raises(ValueError, match="groups=3 slices"):
        bn.clone(groups=3).apply(variables, x, train=True, mutable=["buffers"])


def test_flax_batchnorm_is_not_torch_equivalent(arrays):
    """What TorchBatchNorm is for: flax's BatchNorm keeps the biased variance."""
    import flax.linen as nn
    bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-6, use_bias=False,
                      use_scale=False)
    x = jnp.asarray(arrays["bn/train/0/x"])
    v = bn.init(jax.random.key(0), x)
    _, mutated = bn.apply(v, x, mutable=["batch_stats"])
    assert not np.allclose(mutated["batch_stats"]["var"], arrays["bn/train/0/running_var"],
                           rtol=1e-3)


def test_torch_batchnorm_errors():
    bn = TorchBatchNorm()
    x = jnp.ones((4, 3))
    variables = bn.init(jax.random.key(0), x, train=False)
    with pytest.raises(Exception, match="buffers"):  # train mode needs mutable 'buffers'
        bn.apply(variables, x, train=True)
    with pytest.raises(ValueError, match="more than 1"):
        bn.apply(variables, x[:1], train=True, mutable=["buffers"])
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        bn.apply(variables, x[None], train=False)


@pytest.mark.parametrize("case", ["lr0.1_w10_e90", "lr1_min1e-3_w2_e5"])
def test_mae_warmup_cosine_equals_adjust_learning_rate(arrays, meta, case):
    c = meta["lr_sched"][case]
    spe = c["steps_per_epoch"]
    epochs, want = arrays[f"lr_sched/{case}/epoch"], arrays[f"lr_sched/{case}/lr"]
    steps = np.arange(len(epochs))
    np.testing.assert_allclose(steps / spe, epochs, rtol=0, atol=1e-12)
    schedule = mae_warmup_cosine(c["lr"], c["epochs"] * spe, c["warmup_epochs"] * spe,
                                 c["min_lr"])
    got = np.asarray(jax.jit(schedule)(steps))
    assert got.dtype == np.float32
    # float32: 1 + cos loses digits near the end of the cosine, hence atol
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * c["lr"], err_msg=case)
    # after the end it stays at min_lr (MAE never gets there)
    np.testing.assert_allclose(schedule(c["epochs"] * spe + 5), c["min_lr"], atol=1e-9)


def _tokens(b=6, n=5, d=8, seed=0):
    return jax.random.normal(jax.random.key(seed), (b, n, d)) * 2.0 + 0.5


def test_probe_head_shapes_init_and_buffers():
    head = LinearProbeHead(num_classes=3)
    tokens = _tokens()
    variables = jax.jit(head.init)(jax.random.key(1), tokens)
    assert jax.tree.map(jnp.shape, variables) == {
        "params": {"head": {"kernel": (8, 3), "bias": (3,)}},
        "buffers": {"bn": {"running_mean": (8,), "running_var": (8,)}}}
    np.testing.assert_array_equal(variables["params"]["head"]["bias"], 0.0)
    big = jax.jit(LinearProbeHead(num_classes=1000).init)(jax.random.key(2), _tokens(d=64))
    kernel = np.asarray(big["params"]["head"]["kernel"])
    assert abs(kernel.std() - 0.01) < 3e-4 and abs(kernel.mean()) < 3e-4
    assert np.abs(kernel).max() > 0.04  # trunc-normal at +-200 sigma: not cut at 2 sigma
    out, mutated = jax.jit(lambda v, t: head.apply(v, t, None, all_layers=[t], train=True,
                                                   mutable=["buffers"]))(variables, tokens)
    assert out.shape == (6, 3)
    assert not np.allclose(mutated["buffers"]["bn"]["running_mean"], 0.0)
    assert head.apply(variables, tokens).shape == (6, 3)  # eval: buffers read only


def test_probe_head_pooling():
    tokens = _tokens()
    variables = LinearProbeHead(num_classes=3).init(jax.random.key(1), tokens)
    kernel = variables["params"]["head"]["kernel"]

    def expect(feature):  # eval mode with fresh stats (mean 0, var 1): x / sqrt(1 + eps)
        return feature / np.sqrt(1 + 1e-6) @ kernel
    for pool, feature in [("mean", tokens.mean(axis=1)), ("global", tokens[:, -1])]:
        out = LinearProbeHead(num_classes=3, pool=pool).apply(variables, tokens)
        np.testing.assert_allclose(out, expect(feature), rtol=1e-5, atol=1e-6, err_msg=pool)
    with pytest.raises(ValueError, match="pool"):
        LinearProbeHead(num_classes=3, pool="cls").apply(variables, tokens)


def test_probe_head_in_multivit():
    """As a MultiViT head: MultiViT sets its dtype, passes train, and the BatchNorm's
    statistics sit under buffers/output_adapters/<task>/bn."""
    from multimae_jax.models.input_adapters import PatchedInputAdapter
    from multimae_jax.models.multimae import MultiViT
    model = MultiViT({"rgb": PatchedInputAdapter(num_channels=3, stride_level=1,
                                                 patch_size_full=4, image_size=8)},
                     {"cls": LinearProbeHead(num_classes=4, pool="global")},
                     dim_tokens=16, depth=1, num_heads=2)
    x = {"rgb": jax.random.normal(jax.random.key(0), (3, 8, 8, 3))}
    variables = jax.jit(model.init)(jax.random.key(1), x)
    out, mutated = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["buffers"]))(
        variables, x)
    assert out["cls"].shape == (3, 4)
    bn = mutated["buffers"]["output_adapters"]["cls"]["bn"]
    assert not np.allclose(bn["running_var"], 1.0)


def test_crop_size_is_maes(arrays):
    """util/crop.py get_params given its two draws: one try, each side clamped to the image."""
    sizes, ijhw = arrays["crop/size"], arrays["crop/ijhw"]
    clamped = 0
    for (height, width), a, la, (i, j, h, w) in zip(sizes, arrays["crop/area_fraction"],
                                                    arrays["crop/log_aspect"], ijhw):
        assert mae_crop_size(int(height), int(width), float(a), float(la)) == (h, w)
        clamped += h == height or w == width
    assert clamped >= 8  # the fixture exercises the clamp


def test_the_mae_crop_draw_stays_in_the_image():
    aug = PretrainAugment(("rgb",), 32, (0.08, 1.0), (3 / 4, 4 / 3), 0.5, crop_draw="mae")
    rng = np.random.default_rng(0)
    boxes = [aug.draw(40, 400, rng) for _ in range(200)]
    for i, j, h, w, _ in boxes:
        assert 0 <= i <= 40 - h and 0 <= j <= 400 - w and 0 < h <= 40 and 0 < w <= 400
    # a wide image: MAE clamps the height to 40 where torchvision would retry
    assert sum(h == 40 for _, _, h, _, _ in boxes) > 50
