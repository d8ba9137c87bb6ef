"""Every full-size fine-tuning recipe traces its whole training step at its real sizes (ViT-B,
inputs of 224 to 640 px, the paper's heads; ImageNet classification and linear probing
with 1000 classes): parameters, optimizer state, loss and update shapes all agree. Tracing
(jax.eval_shape) checks every shape without compiling the ViT-B programs, which would take
minutes per recipe on a CPU."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import finetune_cls, finetune_depth, finetune_semseg, finetune_taskonomy, linear_probe
from multimae_jax.train import sharding
from multimae_jax.train.objectives import make_objective
from multimae_jax.train.step import Trainer

BATCH = 8  # one sample per test device
RECIPES = ([(finetune_semseg, v) for v in finetune_semseg.VARIANTS]
           + [(finetune_depth, "nyu")]
           + [(finetune_taskonomy, v) for v in finetune_taskonomy.TASKS]
           + [(finetune_cls, "in1k"), (linear_probe, "in1k")])


@pytest.mark.parametrize("module,variant", RECIPES,
                         ids=[f"{m.__name__.split('.')[-1]}:{v}" for m, v in RECIPES])
def test_the_full_size_step_traces_with_every_shape_right(module, variant):
    config = module.get_config(variant)
    config.data.global_batch_size = BATCH
    objective = make_objective(config)
    runner = Trainer(objective, config, sharding.make_mesh(config.mesh.to_dict()), 10, 1,
                     objective.base_lr(config))
    assert 85e6 < runner.num_params < 125e6  # ViT-B (86 M) and its head
    # the data pipeline's layout (tests/test_benchmark.py checks it against the pipeline)
    batch = jax.eval_shape(lambda key: objective.random_batch(key, BATCH), jax.random.key(0))
    state, metrics = jax.eval_shape(runner._step, runner.abstract_state, batch)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), state) == jax.tree.map(
        lambda a: (a.shape, a.dtype), runner.abstract_state)
    assert metrics["loss"].shape == () and metrics["loss"].dtype == jnp.float32

    def predict(params, buffers, b):
        with runner.on_mesh():
            return objective.predict(params, buffers, b, jax.random.key(0))[1]

    pred = jax.eval_shape(predict, state["params"], state["buffers"], batch)
    s, channels = config.model.image_size, config.target.num_classes
    dense = config.objective == "finetune"
    assert pred.shape == ((BATCH, s, s, channels) if dense else (BATCH, channels)), variant
    assert np.dtype(pred.dtype) in (np.float32, jnp.bfloat16)
