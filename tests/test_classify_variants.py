"""The full-size classification recipes (ImageNet fine-tuning, linear probing) trace their whole
training step at ViT-B / 224 with 1000 classes: parameters, optimizer state, loss and update
shapes all agree (tracing only, as tests/test_finetune_variants.py)."""
import jax
import jax.numpy as jnp
import pytest

from configs import finetune_cls, linear_probe
from multimae_jax.train import sharding
from multimae_jax.train.objectives import make_objective
from multimae_jax.train.step import Trainer

BATCH = 8  # one sample per test device


@pytest.mark.parametrize("module", [finetune_cls, linear_probe],
                         ids=["finetune_cls:in1k", "linear_probe:in1k"])
def test_the_full_size_step_traces_with_every_shape_right(module):
    config = module.get_config("in1k")
    config.data.global_batch_size = BATCH
    objective = make_objective(config)
    runner = Trainer(objective, config, sharding.make_mesh(config.mesh.to_dict()), 10, 1,
                     objective.base_lr(config))
    assert 86e6 < runner.num_params < 87e6  # ViT-B/16 and a 1000-class head
    batch = jax.eval_shape(lambda key: objective.random_batch(key, BATCH), jax.random.key(0))
    state, metrics = jax.eval_shape(runner._step, runner.abstract_state, batch)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), state) == jax.tree.map(
        lambda a: (a.shape, a.dtype), runner.abstract_state)
    assert metrics["loss"].shape == () and metrics["loss"].dtype == jnp.float32

    def predict(params, buffers, b):
        with runner.on_mesh():
            return objective.predict(params, buffers, b, jax.random.key(0))[1]

    assert jax.eval_shape(predict, state["params"], state["buffers"], batch).shape == (BATCH, 1000)
