"""One official semantic-segmentation fine-tuning step (run_finetuning_semseg.py: train_one_epoch
with fp16 off and no gradient clipping): a tiny MultiViT with rgb + depth inputs and a ConvNeXt
head, cross-entropy with ignore index 255 on the full-resolution logits, then AdamW over the param
groups that utils/optim_factory.py: create_optimizer builds with layer decay 0.75 and the
model's no_weight_decay skip list, each group at lr x lr_scale."""

from __future__ import annotations

import contextlib
import io
import types

import numpy as np
import torch

from common import Fixture, perturb, random_images, state_arrays, trim_mantissa
from pretrain_cases import TINY, tiny_encoder

NUM_CLASSES = 5
LR = 2e-3
# 10x the recipe's 0.05, so that decaying a parameter the official groups exempt (global
# tokens, biases ~ 0.05) moves it by lr x wd x 0.05 = 5e-5, beyond the tests' 1e-5
WEIGHT_DECAY = 0.5
LAYER_DECAY = 0.75
# --opt_eps: Adam divides a gradient by its own magnitude on the first step, so an element whose
# true gradient is zero (attention key biases) would move by +-lr on rounding noise alone; with
# eps 1e-6 such elements move by ~lr * 1e-3, while real gradients (>= 1e-4) keep their ~lr step.
EPS = 1e-6
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEPTH = 2  # encoder blocks: TINY's encoder with 2 of its 4 blocks keeps the fixture small


def _model(off):
    """MultiViT as multivit_base builds it (model_builder), at TINY's width with DEPTH blocks."""
    mm, size, patch = off.multimae, TINY["image_size"], TINY["patch_size"]
    inputs = {t: mm.PatchedInputAdapter(num_channels=c, stride_level=1, patch_size_full=patch,
                                        image_size=size) for t, c in (("rgb", 3), ("depth", 1))}
    heads = {"semseg": mm.ConvNeXtAdapter(NUM_CLASSES, embed_dim=128, preds_per_patch=16,
                                          patch_size=patch, depth=1, main_tasks=["rgb"],
                                          interpolate_mode="bilinear")}
    return mm.MultiViT(input_adapters=inputs, output_adapters=heads,
                       num_global_tokens=TINY["num_global_tokens"], drop_path_rate=0.0,
                       **{**tiny_encoder(off), "depth": DEPTH})


def _optimizer(off, model):
    optim_factory = off.optim_factory
    num_layers = model.get_num_layers()
    assigner = optim_factory.LayerDecayValueAssigner(
        [LAYER_DECAY ** (num_layers + 1 - i) for i in range(num_layers + 2)])
    args = types.SimpleNamespace(opt="adamw", weight_decay=WEIGHT_DECAY, lr=LR, opt_eps=EPS,
                                 opt_betas=[0.9, 0.999], momentum=0.9, no_lr_scale_list="")
    with contextlib.redirect_stdout(io.StringIO()):
        optimizer = optim_factory.create_optimizer(
            args, model, skip_list=model.no_weight_decay(),
            get_num_layer=assigner.get_layer_id, get_layer_scale=assigner.get_scale)
    for group in optimizer.param_groups:  # train_one_epoch: lr_schedule_values[it] * lr_scale
        group["lr"] = LR * group["lr_scale"]
    return optimizer


def finetune_step(off, seed=4) -> Fixture:
    torch.manual_seed(seed)
    model = _model(off)
    perturb(model, seed)
    model.train()
    rng = np.random.default_rng(seed)
    size = TINY["image_size"]
    rgb = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    depth = random_images(rng, (2, size, size, 1))
    labels = rng.integers(0, NUM_CLASSES, (2, size, size)).astype(np.int64)
    labels[0, :10] = 255  # ignored rows
    labels[1, :, :7] = 255
    arrays = {"input/rgb": rgb, "input/depth": depth, "input/semseg": labels.astype(np.uint8)}
    # copies: state_dict().numpy() shares memory with the parameters the step updates in place
    arrays.update({k: v.copy() for k, v in state_arrays(model.state_dict()).items()})

    # ToTensor + Normalize(ImageNet) for rgb; depth enters as given (standardised upstream)
    x = {"rgb": ((torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0)
                 - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None],
         "depth": torch.from_numpy(depth).permute(0, 3, 1, 2)}
    optimizer = _optimizer(off, model)
    criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
    loss = criterion(model(x)["semseg"], torch.from_numpy(labels))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    before = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    # the update alone, to 12 mantissa bits (~2e-7 of a ~2e-3 step): it compresses, the tests'
    # 1e-5 tolerance is untouched
    arrays.update({f"delta/{k}": trim_mantissa(v.detach().numpy() - before[k])
                   for k, v in model.state_dict().items()})
    what = ("one fine-tuning step of the official MultiViT (width as multivit_heads_tiny, 2 blocks) with "
            "rgb + depth inputs and a ConvNeXt head (5 classes, embed_dim 128, 16 preds/patch, "
            "depth 1, main task rgb, drop path 0), fp32, train mode: input/rgb uint8 NHWC goes "
            "through ToTensor + ImageNet Normalize, input/depth (NHWC float) as it is; "
            "CrossEntropyLoss(ignore_index=255) against input/semseg on the full-resolution "
            "logits; AdamW (betas 0.9/0.999, eps as meta) over create_optimizer's groups with "
            "layer decay 0.75 and the no_weight_decay skip list, each group at lr x lr_scale. "
            "param/<key>: the state_dict before; delta/<key>: after - before, to 12 mantissa "
            "bits.")
    meta = {"what": what, "config": TINY, "num_classes": NUM_CLASSES, "lr": LR, "eps": EPS,
            "weight_decay": WEIGHT_DECAY, "layer_decay": LAYER_DECAY, "depth": DEPTH,
            "loss": float(loss.detach())}
    return Fixture("finetune_step", arrays, meta)
