"""A very small pre-training config for tests."""
from configs.pretrain import get_config

# The tiny recipe at 32 px with a one-block encoder and no decoder blocks (cross-attention + MLP
# only): keeps compile times short.
SMALL = {
    "model.image_size": 32,
    "model.overrides.depth": 1,
    "model.decoder_depth": 0,
    "masking.num_encoded_tokens": 6,
    "data.global_batch_size": 8,
    "data.synthetic_samples": 64,
    "optimizer.warmup_epochs": 0.25,
    "train.num_steps": 4,
    "train.log_every": 1,
    "train.picture_every": 1000,
    "train.checkpoint_every": 2,
}


def small_config(**overrides):
    """`SMALL` on the tiny variant; `overrides` as {'train.num_steps': 4, ...}."""
    c = get_config("tiny")
    c.update_from_flattened_dict({**SMALL, **overrides})
    return c
