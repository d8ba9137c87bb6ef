"""MultiMAE pre-training configs.

    python -m multimae_jax.main --config=configs/pretrain.py --workdir=DIR        # the paper's recipe
    python -m multimae_jax.main --config=configs/pretrain.py:tiny --workdir=DIR   # 2-core CPU sized

Override any field with --config.a.b=value. The default is the paper's ViT-B recipe (official
`cfgs/pretrain/multimae-b_98_rgb+-depth-semseg_1600e.yaml` run by `run_pretraining_multimae.py`):
rgb, depth, semseg in and out plus norm_rgb, 98 visible tokens, alpha 1, decoder 256 x 2,
AdamW (0.9, 0.95) with weight decay 0.05 on every parameter, lr 1e-4 x batch / 256 with 40
warm-up epochs from 0 and cosine decay, 1600 epochs, global batch 2048, horizontal flips.
"""
import ml_collections
from ml_collections.config_dict import placeholder

from multimae_jax import modalities
from multimae_jax.train.config_fields import encoder_fields, loop_fields
from multimae_jax.train.features import knn_data


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = encoder_fields(("rgb", "depth", "semseg"), image_size=224, drop_path_rate=0.0)
    c.model.output_tasks = ("rgb", "depth", "semseg", "norm_rgb")  # an output that is no input
    # is read from disk, predicted from the others, and its loss covers the whole image
    c.model.decoder_dim = 256
    c.model.decoder_depth = 2
    c.model.decoder_num_heads = 8

    # Every modality's fields (multimae_jax/modalities.py: Modality), overridable per run, e.g.
    # --config.modalities.semseg.num_classes=150 --config.modalities.semseg.stride_level=1, or
    # --config.modalities.depth.standardize=False; a config file may add a new modality here
    # with all its fields (name it in model.input_tasks / output_tasks).
    c.modalities = ml_collections.ConfigDict(
        {name: m.to_dict() for name, m in modalities.MODALITIES.items()})

    c.masking = ml_collections.ConfigDict()
    c.masking.num_encoded_tokens = 98
    c.masking.alphas = 1.0  # or one value per input task
    c.masking.sample_tasks_uniformly = False

    c.data = ml_collections.ConfigDict()
    c.data.path = ""  # empty: the embedded synthetic scenes; a folder (official layout), shards
    c.data.global_batch_size = 2048  # or tfds:NAME[:SPLIT]
    c.data.num_workers = 8  # host processes decoding + augmenting (per training process)
    c.data.hflip = 0.5
    c.data.skip_corrupt = False  # True: drop undecodable samples (logged) instead of stopping
    c.data.allow_incomplete = False  # True: train on the samples that have every modality
    c.data.synthetic_samples = 100_000
    c.data.tfds_fields = ml_collections.ConfigDict({"rgb": "image"})  # tfds: modality -> feature
    # Fast paths (docs/benchmarks.md, "Input pipeline on realistic files"); the defaults are the
    # official-exact path.
    c.data.augment = "host"  # "device": the host decodes, the jitted step crops and resizes the
    #                          bicubic modalities (near-exact; multimae_jax/data/device_augment.py)
    c.data.device_canvas = 384  # augment="device": side of the canvas each image travels in;
    #                             larger images are downscaled on the host (384 holds the samples
    #                             of `pack --max_size 256`, 512 ImageNet's originals)
    c.data.worker_mode = "process"  # "thread": num_workers decoding threads in the training
    #                                 process (PIL and numpy release the GIL), no processes
    c.data.jpeg_draft = False  # True: decode JPEGs at 1/2-1/8 in the DCT domain when the crop is
    #                            shrunk at least that much anyway (an approximation)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.blr = 1e-4  # lr = blr * global_batch_size / 256
    c.optimizer.min_lr = 0.0
    c.optimizer.warmup_epochs = 40.0
    c.optimizer.warmup_steps = -1  # > 0 overrides warmup_epochs (which must then be > 0)
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.95
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.05
    c.optimizer.weight_decay_end = placeholder(float)  # None: constant; else cosine to it
    c.optimizer.decay_all_params = True  # official; False exempts biases, norms, tokens
    c.optimizer.clip_grad = placeholder(float)  # None: off; else torch clip_grad_norm_ max norm
    c.optimizer.skip_grad = placeholder(float)  # None: off; else skip updates with grad norm
    #                                             >= it (ignored with clip_grad, as official)
    c.optimizer.balancer_lr_scale = 1.0  # lr multiplier of the task balancer's parameters
    c.optimizer.lr_mults = ()  # ((regex, multiplier), ...) over state paths 'params/encoder/...'

    c.train = loop_fields(epochs=1600, compute_dtype="bfloat16", picture_every=2000,
                          checkpoint_every=2000, keep_checkpoints=3)
    c.train.fp32_output_adapters = ("semseg",)  # as the official code
    c.train.loss_on_unmasked = False  # True: every loss over the whole image, not masked patches
    c.train.task_balancer = "none"  # or "uncertainty": learned loss weights, one per output task

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})  # -1: the remaining devices

    # Evaluators during pre-training: k-NN classification on the encoder's rgb features
    # (train/features.py), e.g. evals.knn = dict(type='knn', k=20, temperature=0.07, pool='mean',
    # num_classes=1000, every_epochs=10, data=knn_data(path=IMAGENET)); none by default.
    c.evals = ml_collections.ConfigDict()

    if variant == "tiny":
        c.model.size = "tiny"
        c.model.image_size = 64
        c.model.decoder_dim = 64
        c.model.decoder_depth = 1
        c.model.decoder_num_heads = 2
        c.modalities.semseg.num_classes = 8
        c.model.overrides = ml_collections.ConfigDict(dict(dim_tokens=96, depth=4, num_heads=3))
        c.masking.num_encoded_tokens = 12
        c.data.global_batch_size = 32
        c.data.num_workers = 0
        c.data.synthetic_samples = 3200
        c.optimizer.blr = 1.5e-3
        c.optimizer.warmup_epochs = 1.0
        c.train.epochs = 3
        c.train.compute_dtype = "float32"
        c.train.log_every = 20
        c.train.picture_every = 100
        c.train.checkpoint_every = 100
        # k-NN on other scenes (seed 1) of one shape class each: 7 classes; 512 queries keep
        # the standard error near 2 points
        c.evals.knn = ml_collections.ConfigDict(dict(
            type="knn", k=20, temperature=0.07, pool="mean", num_classes=7, every_epochs=1,
            data=knn_data(crop_pct=1.0, eval_batch_size=64, synthetic_object_scale=2.0,
                          reference_samples=1280, query_samples=512)))
    elif variant:
        raise ValueError(f"configs/pretrain.py: unknown variant '{variant}' (known: tiny)")
    return c
