"""A very small pre-training config for tests."""
from configs.pretrain import get_config


def small_config(**overrides):
    """Tiny model at 32 px on synthetic data; `overrides` as {'train.num_steps': 4, ...}."""
    c = get_config("tiny")
    c.model.image_size = 32
    c.model.overrides.depth = 1
    c.model.decoder_depth = 0  # cross-attention + MLP only: keeps compile times short
    c.masking.num_encoded_tokens = 6
    c.data.global_batch_size = 8
    c.data.synthetic_samples = 64
    c.optimizer.warmup_epochs = 0.25
    c.train.num_steps = 4
    c.train.log_every = 1
    c.train.picture_every = 1000
    c.train.checkpoint_every = 2
    for key, value in overrides.items():
        node = c
        *path, leaf = key.split(".")
        for part in path:
            node = node[part]
        node[leaf] = value
    return c
