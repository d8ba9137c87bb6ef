"""Random and user-given masks: exact token budget, Dirichlet statistics, jit + sharding."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from multimae_jax import masking
from multimae_jax.models.presets import pretrain_multimae

NUM_TOKENS = [196, 196, 196]


def jit_random_masks(key, batch, k, alphas=1.0, uniform=False):
    fn = jax.jit(masking.random_masks, static_argnums=(1, 2, 3, 5))
    return fn(key, tuple(NUM_TOKENS), batch, k, alphas, uniform)


def visible_per_task(mask_all, num_tokens=NUM_TOKENS):
    """(B, N) mask -> (B, T) visible counts."""
    bounds = np.cumsum([0] + list(num_tokens))
    m = np.asarray(mask_all)
    return np.stack([(m[:, a:b] == 0).sum(1) for a, b in zip(bounds[:-1], bounds[1:])], 1)


@pytest.mark.parametrize("alphas,uniform", [(1.0, False), ([0.5, 1.0, 2.0], False), (1.0, True)])
def test_exactly_k_visible_and_consistent_ids(alphas, uniform):
    k = 98
    mask_all, ids_keep, ids_restore = jit_random_masks(jax.random.key(0), 256, k, alphas, uniform)
    assert mask_all.shape == (256, 588) and ids_keep.shape == (256, k)
    np.testing.assert_array_equal((np.asarray(mask_all) == 0).sum(1), k)
    # the tokens given to the encoder are exactly the visible ones
    np.testing.assert_array_equal(np.take_along_axis(np.asarray(mask_all), np.asarray(ids_keep), 1), 0)
    # ids_restore inverts the shuffle whose first K entries are ids_keep
    shuffle = np.argsort(np.asarray(ids_restore), axis=1)
    np.testing.assert_array_equal(shuffle[:, :k], ids_keep)
    counts = visible_per_task(mask_all)
    assert len({tuple(c) for c in counts}) > 100  # the split varies across samples
    assert (counts == 0).any()  # fully masked modalities happen


# Shares whose products with K are exact in float32, ties (x.5) among them, and the visible
# counts per task that torch.round (half to even) gives, worked out by hand. Floor or
# round-half-up give other counts in every case but the third.
ROUNDING = [
    (8, (0.0625, 0.1875, 0.75), (0, 2, 6)),    # 0.5 -> 0, 1.5 -> 2
    (8, (0.3125, 0.4375, 0.25), (2, 4, 2)),    # 2.5 -> 2, 3.5 -> 4
    (10, (0.34, 0.33, 0.33), (3, 3, 3)),       # 3.4, 3.3, 3.3: the rows may sum to K - 1
    (98, (0.6, 0.3, 0.1), (59, 29, 10)),       # 58.8, 29.4, 9.8
]


@pytest.mark.parametrize("k,shares,want", ROUNDING)
def test_tokens_per_task_round_half_to_even(k, shares, want):
    got = masking.tokens_per_task(jnp.asarray([shares, shares[::-1]], jnp.float32), k)
    np.testing.assert_array_equal(np.asarray(got), [want, want[::-1]])


@pytest.mark.parametrize("k,shares,want", [c for c in ROUNDING if sum(c[2]) == c[0]])
def test_random_masks_split_k_by_the_rounded_shares(monkeypatch, k, shares, want):
    # When the rounded counts already sum to K the tie-break fill changes nothing, so every
    # sample shows exactly the rounded counts (a floor would leave one token to a random task).
    batch, num_tokens = 32, (16, 16, 16) if k <= 16 else tuple(NUM_TOKENS)
    monkeypatch.setattr(masking, "sample_task_proportions",
                        lambda key, b, t, *a: jnp.broadcast_to(jnp.asarray(shares, jnp.float32), (b, t)))
    mask_all, ids_keep, _ = masking.random_masks(jax.random.key(0), num_tokens, batch, k)
    chex.assert_shape([mask_all, ids_keep], [(batch, sum(num_tokens)), (batch, k)])
    np.testing.assert_array_equal(visible_per_task(mask_all, num_tokens),
                                  np.broadcast_to(want, (batch, 3)))


def test_uniform_task_sampling_drops_tasks():
    mask_all, _, _ = jit_random_masks(jax.random.key(1), 2000, 98, 1.0, True)
    present = visible_per_task(mask_all) > 1  # eps-share tasks may still receive a token or so
    # subsets are uniform over the 7 non-empty ones: one task alone in about 3/7 of samples
    alone = (present.sum(1) == 1).mean()
    assert 0.36 < alone < 0.50, alone


@pytest.mark.parametrize("alphas", [1.0, (1.0, 2.0, 4.0)])
def test_shares_follow_dirichlet(alphas):
    n, k = 10000, 98
    a = np.broadcast_to(np.asarray(alphas, np.float64), (3,))
    mask_all, _, _ = jit_random_masks(jax.random.key(2), n, k, alphas)
    shares = visible_per_task(mask_all) / k
    a0 = a.sum()
    mean = a / a0
    var = a * (a0 - a) / (a0 ** 2 * (a0 + 1))
    np.testing.assert_allclose(shares.mean(0), mean, atol=4 * np.sqrt(var / n).max() + 1e-3)
    np.testing.assert_allclose(shares.var(0), var, rtol=0.06)


def test_proportions_are_dirichlet_draws():
    p = masking.sample_task_proportions(jax.random.key(3), 5000, 3, (2.0, 2.0, 2.0))
    np.testing.assert_allclose(np.asarray(p).sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(p).var(0), 2 * 4 / (36 * 7), rtol=0.08)
    with pytest.raises(ValueError, match="alphas"):
        masking.sample_task_proportions(jax.random.key(3), 2, 3, (1.0, 2.0))


def tiny_model():
    return pretrain_multimae(dim_tokens=64, depth=1, num_heads=4, image_size=64, decoder_dim=32,
                             decoder_depth=0, decoder_num_heads=4, num_classes=10,
                             dim_class_emb=16)


def init(model, x):
    return jax.jit(lambda x: model.init(jax.random.key(0), x, mask_inputs=False))(x)


def tiny_batch(b, seed=0):
    r = np.random.default_rng(seed)
    return {"rgb": r.normal(size=(b, 64, 64, 3)).astype(np.float32),
            "depth": r.normal(size=(b, 64, 64, 1)).astype(np.float32),
            "semseg": r.integers(0, 10, (b, 16, 16)).astype(np.int32)}


def test_jit_with_batch_sharded_over_8_devices():
    assert jax.device_count() == 8
    model, x = tiny_model(), tiny_batch(16)
    variables = init(model, x)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    data = NamedSharding(mesh, P("data"))
    x_sharded = jax.device_put(x, data)
    assert len(x_sharded["rgb"].sharding.device_set) == 8

    @jax.jit
    def forward(variables, x, key):
        return model.apply(variables, x, rngs={"masking": key}, num_encoded_tokens=12)

    preds, masks = forward(variables, x_sharded, jax.random.key(5))
    ref_preds, ref_masks = forward(variables, x, jax.random.key(5))  # unsharded input
    mask_all = np.concatenate([np.asarray(masks[t]) for t in ("rgb", "depth", "semseg")], 1)
    np.testing.assert_array_equal((mask_all == 0).sum(1), 12)
    for t in masks:
        np.testing.assert_array_equal(np.asarray(masks[t]), np.asarray(ref_masks[t]))
    for t in preds:
        np.testing.assert_allclose(np.asarray(preds[t]), np.asarray(ref_preds[t]), atol=1e-4)


def test_user_masks_for_a_batch_equal_per_sample_runs():
    model, x = tiny_model(), tiny_batch(3, seed=1)
    variables = init(model, x)
    # 6 visible tokens per sample, split differently; depth fully masked in sample 2
    counts = [(2, 2, 2), (6, 0, 0), (1, 0, 5)]
    masks = {t: np.ones((3, 16), np.int32) for t in ("rgb", "depth", "semseg")}
    r = np.random.default_rng(0)
    for i, per_task in enumerate(counts):
        for t, c in zip(masks, per_task):
            masks[t][i, r.choice(16, c, replace=False)] = 0
    preds, out_masks = model.apply(variables, x, masks)
    for t in masks:
        np.testing.assert_array_equal(np.asarray(out_masks[t]), masks[t])
    one_sample = jax.jit(lambda v, x, m: model.apply(v, x, m, num_encoded_tokens=6)[0])
    for i in range(3):
        one = one_sample(variables, {t: v[i:i + 1] for t, v in x.items()},
                         {t: m[i:i + 1] for t, m in masks.items()})
        for t in preds:
            np.testing.assert_allclose(np.asarray(preds[t][i:i + 1]), np.asarray(one[t]), atol=1e-5)
    jitted = jax.jit(lambda v, x, m: model.apply(v, x, m, num_encoded_tokens=6))(variables, x, masks)
    for t in preds:
        np.testing.assert_allclose(np.asarray(jitted[0][t]), np.asarray(preds[t]), atol=1e-5)


def test_user_masks_errors():
    model, x = tiny_model(), tiny_batch(2)
    variables = init(model, x)
    masks = {t: np.ones((2, 16), np.int32) for t in ("rgb", "depth", "semseg")}
    masks["rgb"][0, :3] = 0
    masks["rgb"][1, :4] = 0
    with pytest.raises(ValueError, match="same number of visible"):
        model.apply(variables, x, masks)
    masks["rgb"][1, 3] = 1
    with pytest.raises(ValueError, match="num_encoded_tokens=5"):
        model.apply(variables, x, masks, num_encoded_tokens=5)
    with pytest.raises(ValueError, match=r"no mask for input task\(s\) \['semseg'\]"):
        model.apply(variables, x, {t: masks[t] for t in ("rgb", "depth")})
    with pytest.raises(ValueError, match="under jit"):
        jax.jit(lambda m: model.apply(variables, x, m))(masks)


def test_make_mask_like_the_demo():
    m = masking.make_mask(4, 4, {"rgb": [(0, 0), (3, 1)]}, full_tasks=["depth"])
    assert m["rgb"].shape == (1, 16) and m["rgb"].sum() == 14
    assert m["rgb"][0, 0] == 0 and m["rgb"][0, 1 * 4 + 3] == 0
    assert m["depth"].sum() == 0 and m["semseg"].sum() == 16
