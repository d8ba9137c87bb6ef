"""MultiMAE pre-training model vs the official PyTorch outputs (fixture pretrain_tiny, fp32)."""
import json

import jax
import numpy as np
import pytest

from multimae_jax import losses
from multimae_jax.convert.official import official_to_flax
from multimae_jax.models.presets import pretrain_multimae

ATOL = 1e-4


def tiny_model(cfg, with_decoders=True, input_tasks=("rgb", "depth", "semseg")):
    model = pretrain_multimae(
        input_tasks=input_tasks,
        output_tasks=("rgb", "depth", "semseg", "norm_rgb") if with_decoders else (),
        image_size=cfg["image_size"], patch_size=cfg["patch_size"],
        decoder_dim=cfg["decoder_dim"], decoder_depth=cfg["decoder_depth"],
        decoder_num_heads=cfg["decoder_heads"], num_classes=cfg["semseg_classes"],
        dim_class_emb=cfg["dim_class_emb"], num_global_tokens=cfg["num_global_tokens"],
        dim_tokens=cfg["dim_tokens"], depth=cfg["depth"], num_heads=cfg["num_heads"])
    return model


def _case(official_dir, official_npz, name):
    data = official_npz(name)
    meta = json.loads((official_dir / f"{name}.json").read_text())
    cfg = meta["config"]
    inputs = {"rgb": data["input/rgb"].transpose(0, 2, 3, 1),
              "depth": data["input/depth"].transpose(0, 2, 3, 1),
              "semseg": data["input/semseg"].astype(np.int32)}
    masks = {t: data[f"mask/{t}"].astype(np.int32) for t in meta["domains"]}
    state = {k[len("param/"):]: v for k, v in data.items() if k.startswith("param/")}
    return data, cfg, inputs, masks, state, meta


@pytest.fixture(scope="module")
def case(official_dir, official_npz):
    return _case(official_dir, official_npz, "pretrain_tiny")


def load(model, state, inputs, masks):
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), inputs, masks))
    return official_to_flax(state, abstract, "pretrain_tiny")


def test_encoder_tokens(case):
    data, cfg, inputs, masks, state, _ = case
    model = tiny_model(cfg, with_decoders=False)
    state = {k: v for k, v in state.items() if not k.startswith("output_adapters.")}
    tokens, out_masks = model.apply(load(model, state, inputs, masks), inputs, masks)
    np.testing.assert_allclose(np.asarray(tokens), data["encoder_tokens"], atol=ATOL, rtol=0)
    for t in masks:
        np.testing.assert_array_equal(np.asarray(out_masks[t]), masks[t])


def test_decoders_and_losses(case):
    data, cfg, inputs, masks, state, case_meta = case
    model = tiny_model(cfg)
    preds, out_masks = model.apply(load(model, state, inputs, masks), inputs, masks)
    for task, pred in preds.items():
        want = data[f"pred/{task}"].transpose(0, 2, 3, 1)
        assert pred.shape == want.shape, task
        np.testing.assert_allclose(np.asarray(pred), want, atol=ATOL, rtol=0, err_msg=task)
    got = losses.pretraining_losses(preds, inputs, out_masks, tuple(preds),
                                    patch_size=cfg["patch_size"])
    assert set(got) == set(case_meta["losses"])
    for task, value in case_meta["losses"].items():
        np.testing.assert_allclose(float(got[task]), value, atol=ATOL, rtol=0, err_msg=task)


def test_loss_on_unmasked(case):
    """loss_on_unmasked: every loss averages over the whole image, masks ignored. The official
    predictions go in, so only the loss is under test."""
    data, cfg, inputs, masks, _, meta = case
    preds = {t: data[f"pred/{t}"].transpose(0, 2, 3, 1) for t in meta["output_tasks"]}
    got = losses.pretraining_losses(preds, inputs, masks, tuple(preds),
                                    patch_size=cfg["patch_size"], loss_on_unmasked=True)
    for task in preds:
        np.testing.assert_allclose(float(got[task]), data[f"loss_unmasked/{task}"], atol=1e-5,
                                   rtol=0, err_msg=task)


def test_output_only_tasks(official_dir, official_npz):
    """rgb in; rgb, depth, semseg, norm_rgb out: the depth and semseg decoders query with mask
    tokens only and their losses cover the whole image (no mask), as the official loop."""
    data, cfg, inputs, masks, state, meta = _case(official_dir, official_npz,
                                                  "pretrain_tiny_outonly")
    model = tiny_model(cfg, input_tasks=("rgb",))
    rgb_only = {"rgb": inputs["rgb"]}
    preds, out_masks = model.apply(load(model, state, rgb_only, masks), rgb_only, masks)
    assert set(out_masks) == {"rgb"}
    for task, pred in preds.items():
        np.testing.assert_allclose(np.asarray(pred), data[f"pred/{task}"].transpose(0, 2, 3, 1),
                                   atol=ATOL, rtol=0, err_msg=task)
    got = losses.pretraining_losses(preds, inputs, out_masks, tuple(preds),
                                    patch_size=cfg["patch_size"])
    for task, value in meta["losses"].items():
        np.testing.assert_allclose(float(got[task]), value, atol=1e-5, rtol=0, err_msg=task)
