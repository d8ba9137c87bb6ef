"""Dense evaluators (train/evaluators): values against an independent numpy computation of the
official definitions, the same result on 1 and 8 devices, padding that counts for nothing, the
best-checkpoint criterion, pictures and the errors for bad data and config.

The predict functions are trivial (no model): logits from the rgb values plus a large void
channel, depth from the red channel; params['oracle'] = 1 adds the ground truth, a perfect
prediction under the same compiled function.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from multimae_jax.modalities import NYU_DEPTH_MEAN, NYU_DEPTH_STD
from multimae_jax.train import evaluators as ev
from multimae_jax.train.sharding import make_mesh
from multimae_jax.viz import HEADER_HEIGHT, LABEL_WIDTH, PAD, palette

S, B, K = 8, 8, 3  # image size, global batch, classes (+ 1 void label / channel)
REAL = (8, 8, 3)  # real samples per batch; the last batch is padded to B


def _valid(n_real):
    return np.arange(B) < n_real


def semseg_batches(seed=0, garbage=False):
    """Host batches: rgb uint8, semseg int32 with void (K) and ignore (255) pixels; padding
    (valid False) holds zeros or, with `garbage`, extreme inputs and invalid labels."""
    rng = np.random.default_rng(seed)
    out = []
    for n in REAL:
        rgb = rng.integers(0, 256, (B, S, S, 3), dtype=np.uint8)
        labels = rng.choice(np.array([0, 1, 2, K, 255], np.int32), (B, S, S),
                            p=[0.3, 0.3, 0.2, 0.1, 0.1])
        pad = ~_valid(n)
        rgb[pad], labels[pad] = (255, 300) if garbage else (0, 0)
        out.append({"rgb": rgb, "semseg": labels, "valid": _valid(n)})
    if garbage:  # a batch of padding only
        out.append({"rgb": np.full((B, S, S, 3), 255, np.uint8),
                    "semseg": np.full((B, S, S), 300, np.int32), "valid": np.zeros(B, bool)})
    return out


def regression_batches(channels=1, seed=1, garbage=False):
    """Host batches: rgb uint8, a standardised target (B, S, S, channels), mask_valid (B, S, S,
    1) with about 80% valid pixels."""
    rng = np.random.default_rng(seed)
    out = []
    for n in REAL:
        target = rng.normal(0, 0.5, (B, S, S, channels)).astype(np.float32)
        mask = rng.random((B, S, S, 1)) < 0.8
        rgb = rng.integers(0, 256, (B, S, S, 3), dtype=np.uint8)
        pad = ~_valid(n)
        if garbage:
            target[pad], mask[pad], rgb[pad] = 1e4, True, 255
        out.append({"rgb": rgb, "target": target, "mask_valid": mask, "valid": _valid(n)})
    if garbage:
        out.append({k: v[::-1].copy() for k, v in out[0].items()} | {"valid": np.zeros(B, bool)})
    return out


def semseg_predict(params, buffers, batch):
    """(B, S, S, K + 1) logits: rgb * scale, a void channel above every class, + oracle * 100
    on the true class."""
    rgb = batch["rgb"].astype(jnp.float32) * params["scale"]
    void = jnp.full(rgb.shape[:3] + (1,), params["void"])
    return (jnp.concatenate([rgb, void], -1)
            + params["oracle"] * 100.0 * jax.nn.one_hot(batch["semseg"], K + 1))


def regression_predict(params, buffers, batch):
    """{'target': rgb / 255 * a + b (as many channels as the target) + oracle * target}."""
    target = batch["target"]
    x = batch["rgb"][..., :target.shape[-1]].astype(jnp.float32) / 255.0
    return {"target": x * params["a"] + params["b"] + params["oracle"] * target}


def state(**params):
    return {"params": {k: np.float32(v) for k, v in params.items()}, "buffers": {}}


SEMSEG_STATE = state(scale=0.02, void=10.0, oracle=0.0)
REGRESSION_STATE = state(a=0.8, b=-0.4, oracle=0.0)


@pytest.fixture(scope="module")
def meshes():
    return {1: make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1]),
            8: make_mesh({"data": 4, "fsdp": 2})}


def from_list(batches):
    return lambda: iter(batches)


def semseg_eval(mesh, batches, **kw):
    return ev.SemsegEvaluator(semseg_predict, mesh, from_list(batches), num_classes=K,
                              target="semseg", picture_input="rgb", **kw)


def depth_eval(mesh, batches, **kw):
    return ev.DepthEvaluator(regression_predict, mesh, from_list(batches), target="target",
                             picture_input="rgb", **kw)


def taskonomy_eval(mesh, batches):
    return ev.TaskonomyEvaluator(regression_predict, mesh, from_list(batches), target="target",
                                 picture_input="rgb")


# --- independent numpy references ----------------------------------------------------------

def numpy_semseg(batches, scale, void):
    """mmseg's definitions written out: histograms over every real, scored pixel; per-batch
    cross-entropy over all K + 1 channels with 255 ignored."""
    (inter, area_pred, area_label), losses = np.zeros((3, K)), []
    for b in batches:
        v = b["valid"]
        logits = np.concatenate([b["rgb"][v].astype(np.float64) * scale,
                                 np.full(b["rgb"][v].shape[:3] + (1,), void)], -1)
        labels = b["semseg"][v]
        pred = logits[..., :K].argmax(-1)
        scored = labels < K  # void (K) and 255 left out
        for c in range(K):
            inter[c] += np.sum((pred == c) & (labels == c) & scored)
            area_pred[c] += np.sum((pred == c) & scored)
            area_label[c] += np.sum((labels == c) & scored)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        counted = labels != 255
        nll = -np.take_along_axis(logp, np.where(counted, labels, 0)[..., None], -1)[..., 0]
        losses.append(nll[counted].mean())
    union = area_pred + area_label - inter
    return {"mean_iou": np.round(np.mean(inter / union) * 100, 2),
            "pixel_accuracy": np.round(inter.sum() / area_label.sum() * 100, 2),
            "mean_accuracy": np.round(np.mean(inter / area_label) * 100, 2),
            "loss": np.mean(losses)}


def numpy_depth(batches, a, b):
    """masked_nyu_metrics and masked_berhu_loss per batch (then averaged), and the metrics of
    every valid pixel pooled."""
    per_batch, pooled = [], {"p": [], "t": []}
    for x in batches:
        v = x["valid"]
        pred = (x["rgb"][v][..., :1].astype(np.float64) / 255 * a + b)
        target, mask = x["target"][v].astype(np.float64), x["mask_valid"][v]
        d = (pred - target)[mask]
        c = max(0.2 * np.abs(d).max(), 1e-5)
        berhu = np.where(np.abs(d) < c, np.abs(d), (d ** 2 + c ** 2) / (2 * c)).mean()
        p, t = (pred * NYU_DEPTH_STD + NYU_DEPTH_MEAN)[mask], (target * NYU_DEPTH_STD
                                                            + NYU_DEPTH_MEAN)[mask]
        per_batch.append({"loss": berhu, **nyu(p, t)})
        pooled["p"].append(p)
        pooled["t"].append(t)
    mean = {k: np.mean([m[k] for m in per_batch]) for k in per_batch[0]}
    dataset = nyu(np.concatenate(pooled["p"]), np.concatenate(pooled["t"]))
    return mean | {f"{k}_dataset": val for k, val in dataset.items()}


def nyu(p, t):
    """masked_nyu_metrics on the valid pixels' depths p, t (its 'log10' is of natural logs)."""
    diff, tc, pc = np.abs(p - t), np.maximum(t, 1e-6), np.maximum(p, 1e-6)
    ratio = np.maximum(p / tc, t / pc)
    out = {"rmse": np.sqrt(np.mean(diff ** 2)), "rel": np.mean(diff / tc),
           "srel": np.mean(diff ** 2 / tc),
           "log10": np.sqrt(np.mean((np.log(pc) - np.log(tc)) ** 2))}
    return out | {f"delta_{k}": np.mean(ratio < 1.25 ** k) for k in (1, 2, 3)}


def assert_close(got, want, rtol):
    for k, w in want.items():
        np.testing.assert_allclose(got[k], w, rtol=rtol, err_msg=k)


# --- tests ---------------------------------------------------------------------------------

def test_semseg_matches_numpy_and_official_definitions(meshes):
    batches = semseg_batches()
    got = semseg_eval(meshes[8], batches).run(SEMSEG_STATE)
    want = numpy_semseg(batches, 0.02, 10.0)
    assert got["mean_iou"] == want["mean_iou"] and got["samples"] == sum(REAL)
    assert got["pixel_accuracy"] == want["pixel_accuracy"]
    assert got["mean_accuracy"] == want["mean_accuracy"]
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)


def test_depth_matches_numpy_per_batch_and_dataset(meshes):
    batches = regression_batches()
    got = depth_eval(meshes[8], batches).run(REGRESSION_STATE)
    want = numpy_depth(batches, 0.8, -0.4)
    assert set(got) == set(want) | {"samples"}
    assert_close(got, want, rtol=2e-5)
    assert got["delta_1"] != got["delta_1_dataset"]  # the two averages are really different


def test_taskonomy_masked_l1_matches_numpy(meshes):
    batches = regression_batches(channels=3)
    got = taskonomy_eval(meshes[8], batches).run(REGRESSION_STATE)
    per_batch, total, count = [], 0.0, 0
    for x in batches:
        v = x["valid"]
        err = np.abs(x["rgb"][v].astype(np.float64) / 255 * 0.8 - 0.4 - x["target"][v])
        mask = np.broadcast_to(x["mask_valid"][v], err.shape)
        per_batch.append(err[mask].mean())
        total, count = total + err[mask].sum(), count + mask.sum()
    assert_close(got, {"loss": np.mean(per_batch), "loss_dataset": total / count}, rtol=1e-5)


@pytest.mark.parametrize("make, batches, st", [
    (semseg_eval, semseg_batches, SEMSEG_STATE),
    (depth_eval, regression_batches, REGRESSION_STATE)], ids=["semseg", "depth"])
def test_one_device_equals_eight(meshes, make, batches, st):
    one = make(meshes[1], batches()).run(st)
    eight = make(meshes[8], batches()).run(st)
    assert set(one) == set(eight)
    assert_close(eight, one, rtol=1e-6)


@pytest.mark.parametrize("make, batches, st", [
    (semseg_eval, semseg_batches, SEMSEG_STATE),
    (depth_eval, regression_batches, REGRESSION_STATE),
    (taskonomy_eval, lambda **kw: regression_batches(channels=3, **kw), REGRESSION_STATE)],
    ids=["semseg", "depth", "taskonomy"])
def test_padding_changes_nothing(meshes, make, batches, st):
    """Extreme inputs, targets and invalid labels in padded samples, and a batch of padding
    only: the same metrics (and no label error)."""
    clean = make(meshes[8], batches()).run(st)
    padded = make(meshes[8], batches(garbage=True)).run(st)
    assert padded == clean


def test_perfect_prediction(meshes):
    seg = semseg_eval(meshes[8], semseg_batches()).run(state(scale=0.02, void=10.0, oracle=1.0))
    assert (seg["mean_iou"], seg["pixel_accuracy"], seg["mean_accuracy"]) == (100, 100, 100)
    depth = depth_eval(meshes[8], regression_batches()).run(state(a=0.0, b=0.0, oracle=1.0))
    for suffix in ("", "_dataset"):
        assert depth["delta_1" + suffix] == 1.0 and depth["rmse" + suffix] == 0.0
    assert depth["loss"] == 0.0


def test_bad_labels_raise_naming_the_value(meshes):
    batches = semseg_batches()
    batches[1]["semseg"][2, 3, 4] = 300  # a real sample
    with pytest.raises(ValueError, match=r"config\.evals\.val: ground-truth 'semseg'.*\[300\]"):
        semseg_eval(meshes[8], batches, name="val").run(SEMSEG_STATE)


def test_missing_batch_key_raises_naming_it(meshes):
    batches = [{k: v for k, v in b.items() if k != "mask_valid"} for b in regression_batches()]
    with pytest.raises(ValueError, match=r"config\.evals\.eval: .* no \['mask_valid'\]"):
        depth_eval(meshes[8], batches).run(REGRESSION_STATE)


def test_semseg_picture(meshes):
    batches = semseg_batches()
    image = semseg_eval(meshes[8], batches).pictures(SEMSEG_STATE, 3)
    cell = S + PAD
    assert image.dtype == np.uint8 and image.shape == (HEADER_HEIGHT + 3 * cell,
                                                       LABEL_WIDTH + 3 * cell, 3)
    # row 1: ground truth in the palette's colours, black for void / ignore; the prediction
    # black where the ground truth is ignored (as log_semseg_wandb), coloured elsewhere
    row = image[HEADER_HEIGHT + cell:HEADER_HEIGHT + cell + S]
    pred, truth = (row[:, LABEL_WIDTH + c * cell:][:, :S] for c in (1, 2))
    labels = batches[0]["semseg"][1]
    colours = np.round(np.concatenate([palette(K), np.zeros((1, 3))]) * 255).astype(np.uint8)
    np.testing.assert_array_equal(truth, colours[np.where(labels < K, labels, K)])
    ignored = labels == 255
    assert ignored.any() and (pred[ignored] == 0).all() and (pred[~ignored].max(-1) > 0).all()


def test_depth_picture(meshes):
    """The first batch has 3 real samples: 3 rows although 5 are asked for. A perfect
    prediction looks like the ground truth (one colour scale) where that is valid; invalid
    ground truth is black, the prediction is drawn everywhere."""
    batches = regression_batches()[::-1]
    image = depth_eval(meshes[8], batches).pictures(state(a=0.0, b=0.0, oracle=1.0), 5)
    cell = S + PAD
    assert image.dtype == np.uint8 and image.shape == (HEADER_HEIGHT + 3 * cell,
                                                       LABEL_WIDTH + 3 * cell, 3)
    row = image[HEADER_HEIGHT:HEADER_HEIGHT + S]
    pred, truth = (row[:, LABEL_WIDTH + c * cell:][:, :S] for c in (1, 2))
    valid = batches[0]["mask_valid"][0, ..., 0]
    assert 0 < valid.sum() < S * S
    np.testing.assert_array_equal(pred[valid], truth[valid])
    assert (truth[~valid] == 0).all() and (pred[~valid].max(axis=-1) > 0).all()


def test_make_evaluators_and_best_criterion(meshes):
    """Sections with schedule and data fields (left to the loop and the data side); defaults
    from the rest of the config, overridden by a section, ignored by types without the field."""
    evals = ml_collections.ConfigDict({
        "val": dict(type="semseg", every=5, data=dict(split="val")),
        "nyu": dict(type="depth", every_epochs=2, target="depth", loss="l1"),
        "normal": dict(type="taskonomy")})
    seen = []
    made = ev.make_evaluators(evals, semseg_predict, meshes[8],
                              lambda name, section: seen.append((name, section)) or list,
                              target="semseg", picture_input="rgb", num_classes=K,
                              loss="berhu")
    assert {k: type(e) for k, e in made.items()} == {
        "val": ev.SemsegEvaluator, "nyu": ev.DepthEvaluator, "normal": ev.TaskonomyEvaluator}
    assert dict(seen)["val"]["data"] == {"split": "val"}
    seg, depth = made["val"], made["nyu"]
    assert (seg.target, seg.num_classes, seg.picture_input) == ("semseg", K, "rgb")
    assert (depth.target, depth.loss_fn) == ("depth", ev.depth.DEPTH_LOSSES["l1"])
    assert (seg.best_key, seg.higher_is_better) == ("mean_iou", True)
    assert (depth.best_key, depth.higher_is_better) == ("loss", False)
    assert (made["normal"].best_key, made["normal"].higher_is_better) == ("loss", False)
    # official: max_miou starts at 0.0, min_val_loss at inf; strict; NaN never improves
    assert not seg.improves(0.0) and seg.improves(0.01) and not seg.improves(40.0, 40.0)
    assert depth.improves(1e30) and not depth.improves(float("nan"))
    assert depth.improves(0.5, 0.6) and not depth.improves(0.6, 0.6)


@pytest.mark.parametrize("section, message", [
    (dict(type="fid"), r"config\.evals\.val\.type = 'fid'"),
    (dict(type="semseg", num_classes=K, target="semseg", picture_input="rgb", batch=8),
     r"config\.evals\.val \(type 'semseg'\): unknown field\(s\) \['batch'\]"),
    (dict(type="depth", picture_input="rgb"), r"missing field\(s\) \['target'\]"),
    (dict(type="depth", target="d", picture_input="rgb", loss="huber"),
     r"config\.evals\.val\.loss = 'huber'")])
def test_make_evaluators_config_errors(meshes, section, message):
    with pytest.raises(ValueError, match=message):
        ev.make_evaluators({"val": section}, semseg_predict, meshes[8], lambda *_: list)
