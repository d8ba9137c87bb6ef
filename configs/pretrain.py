"""MultiMAE pre-training configs.

    python -m multimae_jax.main --config=configs/pretrain.py          # the paper's ViT-B recipe
    python -m multimae_jax.main --config=configs/pretrain.py:tiny     # a small CPU-sized variant

Override any field with --config.a.b=value.
"""
import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.size = "base"  # ViT-B/16
    c.model.input_tasks = ("rgb", "depth", "semseg")
    c.model.output_tasks = ("rgb", "depth", "semseg", "norm_rgb")
    c.model.image_size = 224
    c.model.patch_size = 16
    c.model.decoder_dim = 256
    c.model.decoder_depth = 2
    c.model.decoder_num_heads = 8
    c.model.semseg_num_classes = 133
    c.model.num_global_tokens = 1
    c.model.overrides = ml_collections.ConfigDict()  # encoder fields, e.g. dim_tokens, depth

    c.masking = ml_collections.ConfigDict()
    c.masking.num_encoded_tokens = 98
    c.masking.alphas = 1.0
    c.masking.sample_tasks_uniformly = False

    c.data = ml_collections.ConfigDict()
    c.data.path = ""  # empty: the embedded synthetic scenes; a folder (official layout) or shards
    c.data.global_batch_size = 2048
    c.data.num_workers = 8  # host processes decoding + augmenting (per training process)
    c.data.hflip = 0.5
    c.data.standardize_depth = True
    c.data.skip_corrupt = False  # True: drop undecodable samples (logged) instead of stopping
    c.data.allow_incomplete = False  # True: train on the samples that have every modality
    c.data.synthetic_samples = 100_000

    if variant == "tiny":
        c.model.size = "tiny"
        c.model.image_size = 64
        c.model.decoder_dim = 64
        c.model.decoder_depth = 1
        c.model.decoder_num_heads = 2
        c.model.semseg_num_classes = 8
        c.model.overrides = ml_collections.ConfigDict(dict(dim_tokens=96, depth=4, num_heads=3))
        c.masking.num_encoded_tokens = 8
        c.data.global_batch_size = 16
        c.data.num_workers = 0
        c.data.synthetic_samples = 2_000
    elif variant:
        raise ValueError(f"configs/pretrain.py: unknown variant '{variant}' (known: tiny)")
    return c
