"""One fine-tuning step equals the official one (fixture finetune_step: tests/official/
finetune_step_case.py): the semseg objective's loss (input normalisation, MultiViT, ConvNeXt head,
cross-entropy with ignore 255 at full resolution), its gradient, and AdamW over the official
layer-decay / no-weight-decay groups, from the same weights and batch."""
import json

import jax
import numpy as np
import pytest

from configs.finetune_semseg import get_config
from multimae_jax.convert.official import flax_to_official, official_to_flax
from multimae_jax.models.spec import abstract_variables
from multimae_jax.train.finetune import FinetuneObjective

ATOL = 1e-5


def _config(meta):
    c = get_config("nyu_rgbd_tiny")
    t = meta["config"]
    c.update_from_flattened_dict({
        "model.image_size": t["image_size"], "model.drop_path_rate": 0.0,
        "head.embed_dim": 128, "head.depth": 1, "target.num_classes": meta["num_classes"],
        "modalities.semseg.num_classes": meta["num_classes"], "train.compute_dtype": "float32",
        "optimizer.lr": meta["lr"], "optimizer.eps": meta["eps"],
        "optimizer.weight_decay": meta["weight_decay"],
        "optimizer.layer_decay": meta["layer_decay"]})
    c.model.overrides.update(dim_tokens=t["dim_tokens"], depth=meta["depth"],
                             num_heads=t["num_heads"])
    return c


@pytest.fixture(scope="module")
def stepped(official_dir, official_npz):
    meta = json.loads((official_dir / "finetune_step.json").read_text())
    data = official_npz("finetune_step")
    objective = FinetuneObjective(_config(meta))
    state_dict = {k[len("param/"):]: v for k, v in data.items() if k.startswith("param/")}
    variables = official_to_flax(state_dict, abstract_variables(objective.model), "finetune_step")
    batch = {"rgb": data["input/rgb"], "depth": data["input/depth"],
             "semseg": data["input/semseg"].astype(np.int32)}
    trainable, buffers = {"params": variables["params"]}, variables.get("buffers", {})

    def loss(t):
        return objective.loss(t, buffers, batch, jax.random.key(0))[0]

    value, grads = jax.value_and_grad(loss)(trainable)
    lr, wd = meta["lr"], meta["weight_decay"]
    tx = objective.make_optimizer(lambda step: lr, lambda step: wd)
    updates, _ = tx.update(grads, tx.init(trainable), trainable, step=0)
    after = jax.tree.map(lambda p, u: p + u, trainable, updates)
    return meta, data, float(value), flax_to_official({**variables, **after})


def test_the_loss_equals_the_official(stepped):
    meta, _, loss, _ = stepped
    assert loss == pytest.approx(meta["loss"], abs=ATOL)


def test_every_parameter_after_the_step_equals_the_official(stepped):
    _, data, _, after = stepped
    deltas = {k[len("delta/"):]: v for k, v in data.items() if k.startswith("delta/")}
    trained = [k for k in deltas if np.abs(deltas[k]).max() > 0]
    assert len(trained) > 40  # every block, adapter and head parameter moved
    for key, delta in deltas.items():
        want = data[f"param/{key}"] + delta
        np.testing.assert_allclose(after[key], want, atol=ATOL, rtol=0, err_msg=key)

