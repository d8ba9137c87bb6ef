"""Modality entries: per-config overrides reach the model, the augmentation and the device
normalisation; bad entries stop with the field named."""
import jax
import numpy as np
import pytest

from multimae_jax import modalities
from multimae_jax.data.transforms import PretrainAugment, prepare_batch
from multimae_jax.models.input_adapters import SemSegInputAdapter
from multimae_jax.train.pretrain import build_model, config_modalities
from multimae_jax.train.validate import ConfigError, validate
from train_helpers import small_config


def test_ade20k_semseg_150_classes_at_full_resolution():
    config = small_config()
    config.modalities.semseg.num_classes = 150
    config.modalities.semseg.stride_level = 1
    ins, outs, data = config_modalities(config)
    assert ins["semseg"].num_classes == 150 and outs["semseg"].stride_level == 1
    model = build_model(config)
    adapter = model.input_adapters["semseg"]
    assert isinstance(adapter, SemSegInputAdapter)
    assert (adapter.num_classes, adapter.stride_level) == (150, 1)
    s = config.model.image_size
    x = {"rgb": np.zeros((1, s, s, 3), np.float32), "depth": np.zeros((1, s, s, 1), np.float32),
         "semseg": np.zeros((1, s, s), np.int32)}
    preds, _ = jax.eval_shape(lambda: model.init_with_output(
        {"params": jax.random.key(0), "masking": jax.random.key(1)}, x,
        num_encoded_tokens=6)[0])
    assert preds["semseg"].shape == (1, s, s, 150)
    sample = {"rgb": np.zeros((40, 40, 3), np.uint8), "depth": np.zeros((40, 40), np.uint16),
              "semseg": np.zeros((40, 40), np.uint8)}
    out = PretrainAugment(tuple(data.values()), s)(sample, np.random.default_rng(0))
    assert out["semseg"].shape == (s, s)


def test_depth_without_standardisation_and_nyu_normalised():
    raw = np.random.default_rng(0).integers(0, 2 ** 16, (2, 8, 8, 1), dtype=np.uint16)
    depth = modalities.get("depth")
    plain = prepare_batch({"depth": raw}, (depth.replace(standardize=False),))["depth"]
    np.testing.assert_allclose(plain, raw / 2 ** 16, rtol=1e-6)
    nyu = depth.replace(scale=1.0, mean=(2070.7764,), std=(777.5723,), standardize=False)
    out = prepare_batch({"depth": raw}, (nyu,))["depth"]
    np.testing.assert_allclose(out, (raw - 2070.7764) / 777.5723, rtol=1e-5)
    standardised = prepare_batch({"depth": raw}, ("depth",))["depth"]
    assert abs(float(np.median(standardised))) < 0.5 and not np.allclose(standardised, plain)


@pytest.mark.parametrize("overrides,message", [
    ({"depth": {"standardise": False}}, "config.modalities.depth: modality 'depth': unknown field"),
    ({"normals": {"kind": "image", "storage": "png16"}},
     "config.modalities.normals: modality 'normals': storage='png16'"),
    ({"masks": {"kind": "labels"}}, "config.modalities.masks: modality 'masks': labels need"),
    ({"rgb": {"mean": (0.5, 0.5)}}, "config.modalities.rgb: modality 'rgb': mean has 2 values"),
])
def test_bad_entries_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        modalities.with_overrides(overrides)
    config = small_config()
    for name, fields in overrides.items():
        old = config.modalities[name].to_dict() if name in config.modalities else {}
        config.modalities[name] = {**old, **fields}
    with pytest.raises(ConfigError, match=message):
        validate(config, 1, 1)


def test_output_only_task_is_read_but_not_encoded():
    config = small_config(**{"model.input_tasks": ("rgb",),
                             "model.output_tasks": ("rgb", "depth", "norm_rgb")})
    ins, outs, data = config_modalities(config)
    assert list(ins) == ["rgb"] and list(data) == ["rgb", "depth"]
    assert list(build_model(config).input_adapters) == ["rgb"]
    bad = small_config(**{"model.input_tasks": ("depth",), "model.output_tasks": ("norm_rgb",)})
    with pytest.raises(ConfigError, match="output 'norm_rgb' needs modality 'rgb'"):
        validate(bad, 1, 1)
