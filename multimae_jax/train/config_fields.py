"""Config sections every objective shares (configs/pretrain.py, train/finetune_config.py): the
encoder's fields and the generic loop's (train/loop.py, train/step.py). In the package, so that
a config file loads from any working directory."""
import ml_collections


def encoder_fields(input_tasks, image_size: int, drop_path_rate: float) -> ml_collections.ConfigDict:
    """config.model's encoder part: a ViT-B/16 with one global token over `input_tasks`."""
    m = ml_collections.ConfigDict()
    m.size = "base"  # ViT-B/16
    m.input_tasks = tuple(input_tasks)
    m.image_size = image_size
    m.patch_size = 16
    m.num_global_tokens = 1
    m.drop_path_rate = drop_path_rate
    m.overrides = ml_collections.ConfigDict()  # encoder fields, e.g. dim_tokens, depth
    # How the model computes, not what (the parameters and checkpoints are the same):
    # attention of the encoder and decoders (a float32 decoder keeps 'xla'): "xla", the
    # official's fp32 softmax, or "cudnn", jax.nn.dot_product_attention's cuDNN flash attention
    # (an NVIDIA GPU, train.compute_dtype bfloat16, head dim a multiple of 8 up to 128, no
    # attention dropout; probabilities rounded to bf16 before the product with V)
    m.attention = "xla"
    # True: the encoder's blocks run as one jax.lax.scan (one compiled block body instead of
    # one per block); the same outputs and gradients, other random draws of drop path and dropout
    m.scan_blocks = False
    # the backward pass of the token gathers (visible tokens, the decoders' restore), whose
    # indices are permutations, and of the semseg class-embedding lookup: "gather" by the
    # inverse permutation and a one-hot matmul, or "scatter", JAX's autodiff scatter-adds (the
    # same values; scatter-adds use atomics on GPUs)
    m.gather_grad = "gather"
    return m


def loop_fields(*, epochs: int, compute_dtype: str, picture_every: int, checkpoint_every: int,
                keep_checkpoints: int) -> ml_collections.ConfigDict:
    """config.train's fields that the generic loop and step read."""
    t = ml_collections.ConfigDict()
    t.epochs = epochs
    t.num_steps = -1  # > 0 overrides epochs
    t.compute_dtype = compute_dtype  # parameters, optimizer state and losses stay float32
    # Residual stream, LayerNorms, adapter outputs and global tokens: float32 as under the
    # official fp16 autocast; "bfloat16" runs them in bf16 too.
    t.residual_dtype = "float32"
    t.remat = False  # recompute each encoder block in the backward pass
    t.grad_accum_steps = 1
    t.fsdp_min_size = 2 ** 18  # parameters at least this large are split over 'fsdp'
    t.max_nonfinite_steps = 20
    t.log_every = 50
    t.picture_every = picture_every
    t.checkpoint_every = checkpoint_every
    t.keep_checkpoints = keep_checkpoints  # the newest N; at least 1
    # True: a damaged newest checkpoint (missing or unreadable file, checksum, NaN) is reported
    # and set aside as checkpoints/<step>.corrupt, and the run resumes from the previous one;
    # False: stop with the report (exit code 4).
    t.checkpoint_fallback = True
    # A restart may change the global batch size only with this: the lr, steps per epoch,
    # total and warm-up steps are recomputed, the step counter continues.
    t.allow_batch_size_change = False
    return t
