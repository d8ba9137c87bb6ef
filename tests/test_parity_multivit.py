"""MultiViT and its fine-tuning heads vs the official outputs (multivit_heads_tiny, vit_tiny_timm),
loaded end to end from the official .pth files by the torch-free reader."""
import numpy as np
import pytest

from multimae_jax import load_pretrained

ATOL = 1e-4


@pytest.fixture(scope="module")
def multivit(official_dir):
    return load_pretrained(official_dir / "multivit_heads_tiny.pth", num_heads=4)


def nhwc(x):
    return x.transpose(0, 2, 3, 1)


def test_every_encoder_layer(multivit, official_npz):
    data = official_npz("multivit_heads_tiny")
    model, variables = multivit
    encoder_only = model.clone(output_adapters=None)
    params = {k: v for k, v in variables["params"].items() if k != "output_adapters"}
    layers = encoder_only.apply({**variables, "params": params},
                                {"rgb": nhwc(data["input/rgb"]), "depth": nhwc(data["input/depth"])},
                                return_all_layers=True)
    assert len(layers) == 4
    for i, layer in enumerate(layers):
        np.testing.assert_allclose(np.asarray(layer), data[f"layer/{i}"], atol=ATOL, rtol=0,
                                   err_msg=f"block {i}")


def test_all_four_heads(multivit, official_npz):
    data = official_npz("multivit_heads_tiny")
    model, variables = multivit
    assert list(model.input_adapters) == ["rgb", "depth", "semseg"]
    out = model.apply(variables, {"rgb": nhwc(data["input/rgb"]),
                                  "depth": nhwc(data["input/depth"])})
    assert set(out) == {"cls", "semseg_convnext", "semseg_convnext_rgbd", "depth_dpt"}
    np.testing.assert_allclose(np.asarray(out["cls"]), data["head/cls"], atol=ATOL, rtol=0)
    for name in ("semseg_convnext", "semseg_convnext_rgbd", "depth_dpt"):
        np.testing.assert_allclose(np.asarray(out[name]), nhwc(data[f"head/{name}"]), atol=ATOL,
                                   rtol=0, err_msg=name)


def test_timm_checkpoint(official_dir, official_npz):
    data = official_npz("vit_tiny_timm")
    model, variables = load_pretrained(official_dir / "vit_tiny_timm.pth", num_heads=4)
    assert list(model.input_adapters) == ["rgb"] and not model.output_adapters
    tokens = model.apply(variables, {"rgb": nhwc(data["input_rgb"])})
    np.testing.assert_allclose(np.asarray(tokens), data["encoder_tokens"], atol=ATOL, rtol=0)
