"""Pre-training fixtures: the model as run_pretraining_multimae.py builds it, its predictions for
explicit masks, and the task losses as its training loop computes them.

- pretrain_tiny:          rgb, depth, semseg in; rgb, depth, semseg + norm_rgb out.
- pretrain_tiny_outonly:  rgb in; rgb, depth, semseg + norm_rgb out (depth/semseg output-only).
- multimae_b_pretrain_keys: state_dict key -> shape of the default ViT-B pre-training model.
"""

from __future__ import annotations

import contextlib
import sys
from functools import partial

import numpy as np
import torch
from torch import nn

from common import Fixture, numpy_tree, perturb, random_images, state_arrays

# The tiny model shared by the pre-training and MultiViT fixtures (json "config").
TINY = {
    "image_size": 64, "patch_size": 16, "dim_tokens": 64, "depth": 4, "num_heads": 4,
    "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 4, "semseg_classes": 10,
    "semseg_stride": 4, "dim_class_emb": 16, "num_global_tokens": 1,
}
# Visible tokens per sample and input task. pretrain_tiny: each sample sees 8, spread differently
# (one task empty, one task alone). Equal totals per sample are what a fixed-K masking produces.
PRETRAIN_VISIBLE = [[4, 2, 2], [0, 5, 3], [8, 0, 0]]
OUTONLY_VISIBLE = [[6], [6]]

LOSS_NOTES = ("losses as run_pretraining_multimae.py: train_one_epoch computes them: rgb masked MSE; "
              "norm_rgb masked MSE against per-patch normalised input/rgb, with the rgb mask; depth masked "
              "L1; semseg masked cross-entropy on (B, C, H/4, W/4) logits. A task without an input mask "
              "(masks.get(task) is None) is averaged over the whole image. 'losses_unmasked' / "
              "'loss_unmasked/<task>' are the same with loss_on_unmasked=True (no mask at all).")


def tiny_encoder(off) -> dict:
    return dict(dim_tokens=TINY["dim_tokens"], depth=TINY["depth"], num_heads=TINY["num_heads"],
                mlp_ratio=4, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))


def register_tiny_models(off) -> None:
    """Register 'pretrain_multimae_tiny' and 'multivit_tiny' in the official model registry, next
    to its pretrain_multimae_base / multivit_base, so that create_model finds them."""
    if off.registry.is_model("pretrain_multimae_tiny"):
        return

    def pretrain_multimae_tiny(input_adapters, output_adapters, **kwargs):
        return off.multimae.MultiMAE(input_adapters=input_adapters, output_adapters=output_adapters,
                                     **tiny_encoder(off), **kwargs)

    def multivit_tiny(input_adapters, output_adapters, **kwargs):
        return off.multimae.MultiViT(input_adapters=input_adapters, output_adapters=output_adapters,
                                     **tiny_encoder(off), **kwargs)

    off.registry.register_model(pretrain_multimae_tiny)
    off.registry.register_model(multivit_tiny)


def pretraining_args(off, argv: list[str]):
    """run_pretraining_multimae.get_args() on `argv`, domains split as its main() splits them."""
    saved, sys.argv = sys.argv, ["run_pretraining_multimae.py", *argv]
    try:
        args = off.run_pretraining.get_args()
    finally:
        sys.argv = saved
    args.in_domains = args.in_domains.split("-")
    args.out_domains = args.out_domains.split("-")
    return args


@contextlib.contextmanager
def tiny_domain_conf(off):
    """DOMAIN_CONF of run_pretraining_multimae.py at the tiny sizes (64 px images, 10 semseg
    classes, class embedding 16); every other adapter argument stays the official one."""
    conf = off.run_pretraining.DOMAIN_CONF
    saved = {domain: dict(entry) for domain, entry in conf.items()}
    size = TINY["image_size"]
    for domain, entry in conf.items():
        entry["input_adapter"] = partial(entry["input_adapter"], image_size=size)
        entry["output_adapter"] = partial(entry["output_adapter"], image_size=size)
    classes = TINY["semseg_classes"]
    conf["semseg"]["input_adapter"] = partial(conf["semseg"]["input_adapter"], num_classes=classes,
                                              dim_class_emb=TINY["dim_class_emb"])
    conf["semseg"]["output_adapter"] = partial(conf["semseg"]["output_adapter"], num_channels=classes)
    try:
        yield conf
    finally:
        conf.clear()
        conf.update(saved)


def tiny_pretraining_model(off, in_domains, out_domains, num_encoded_tokens):
    """(model, args): get_model of run_pretraining_multimae.py for the tiny command line."""
    register_tiny_models(off)
    args = pretraining_args(off, [
        "--model", "pretrain_multimae_tiny", "--in_domains", "-".join(in_domains),
        "--out_domains", "-".join(out_domains), "--patch_size", str(TINY["patch_size"]),
        "--input_size", str(TINY["image_size"]), "--num_encoded_tokens", str(num_encoded_tokens),
        "--decoder_dim", str(TINY["decoder_dim"]), "--decoder_depth", str(TINY["decoder_depth"]),
        "--decoder_num_heads", str(TINY["decoder_heads"])])
    with tiny_domain_conf(off):
        model = off.run_pretraining.get_model(args)
    return model.eval(), args


def task_loss_fns(off, args) -> dict[str, nn.Module]:
    """tasks_loss_fn as main() of run_pretraining_multimae.py builds it."""
    conf = off.run_pretraining.DOMAIN_CONF
    fns = {d: conf[d]["loss"](patch_size=args.patch_size, stride=conf[d]["stride_level"])
           for d in args.out_domains}
    if args.extra_norm_pix_loss:
        fns["norm_rgb"] = conf["rgb"]["loss"](patch_size=args.patch_size,
                                              stride=conf["rgb"]["stride_level"], norm_pix=True)
    return fns


def loop_losses(preds, targets, masks, loss_fns, *, loss_on_unmasked, extra_norm_pix_loss=True):
    """Task losses as the body of run_pretraining_multimae.py: train_one_epoch computes them: the
    norm_rgb target and mask are rgb's; a task without an input mask gets mask=None."""
    targets, masks = dict(targets), dict(masks)
    if extra_norm_pix_loss:
        targets["norm_rgb"] = targets["rgb"]
        masks["norm_rgb"] = masks.get("rgb", None)
    losses = {}
    for task in preds:
        mask = None if loss_on_unmasked else masks.get(task, None)
        losses[task] = loss_fns[task](preds[task].float(), targets[task], mask=mask)
    return losses


def forward_with_masks(model, inputs, masks):
    """MultiMAE.forward with explicit task_masks, one sample at a time.

    With given masks the official forward keeps K = (mask_all == 0).sum() tokens, counted over the
    whole batch: right only for a batch of one (as the official demo uses it). Returns the batched
    predictions and the encoder output: the visible tokens in (task, row-major patch) order, then the
    global tokens.
    """
    seen = []
    hook = model.encoder.register_forward_hook(lambda module, args, out: seen.append(out))
    preds, tokens = [], []
    try:
        for b in range(next(iter(inputs.values())).shape[0]):
            x = {t: v[b:b + 1] for t, v in inputs.items()}
            m = {t: v[b:b + 1] for t, v in masks.items()}
            pred, _ = model(x, task_masks=m)
            preds.append(pred)
            # The forward gathered the visible tokens with ids_keep = argsort(mask_all)[:, :K]
            # (ties in no particular order); the same argsort here tells which token is which.
            mask_all = torch.cat([m[t] for t in x], dim=1)
            k = int((mask_all == 0).sum())
            order = torch.argsort(torch.argsort(mask_all, dim=1)[0, :k])
            out = seen[-1]
            tokens.append(torch.cat([out[:, :k][:, order], out[:, k:]], dim=1))
    finally:
        hook.remove()
    return {t: torch.cat([p[t] for p in preds]) for t in preds[0]}, torch.cat(tokens)


def explicit_masks(rng, visible, tasks, num_tokens):
    """(B, N) int64 masks per task, 1 = masked, with visible[b][i] random visible tokens for task i."""
    masks = {t: np.ones((len(visible), num_tokens), np.int64) for t in tasks}
    for b, counts in enumerate(visible):
        for t, count in zip(tasks, counts):
            masks[t][b, rng.permutation(num_tokens)[:count]] = 0
    return masks


def random_inputs(rng, batch):
    size, classes = TINY["image_size"], TINY["semseg_classes"]
    small = size // TINY["semseg_stride"]
    return {"input/rgb": random_images(rng, (batch, 3, size, size)),
            "input/depth": random_images(rng, (batch, 1, size, size)),
            "input/semseg": rng.integers(0, classes, (batch, small, small), dtype=np.int64)}


def pretraining_outputs(off, model, args, arrays):
    """Every decoder prediction, the encoder tokens and both kinds of loss for the stored inputs."""
    data = {k.split("/", 1)[1]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("input/")}
    masks = {k.split("/", 1)[1]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("mask/")}
    inputs = {t: v for t, v in data.items() if t in args.in_domains}  # input_dict of the loop
    fns = task_loss_fns(off, args)
    with torch.no_grad():
        preds, tokens = forward_with_masks(model, inputs, masks)
        losses = loop_losses(preds, data, masks, fns, loss_on_unmasked=False,
                             extra_norm_pix_loss=args.extra_norm_pix_loss)
        unmasked = loop_losses(preds, data, masks, fns, loss_on_unmasked=True,
                               extra_norm_pix_loss=args.extra_norm_pix_loss)
    out = {f"pred/{t}": p for t, p in preds.items()}
    out["encoder_tokens"] = tokens
    out.update({f"loss/{t}": v.float() for t, v in losses.items()})
    out.update({f"loss_unmasked/{t}": v.float() for t, v in unmasked.items()})
    return numpy_tree(out)


def _fixture(off, name, in_domains, out_domains, visible, seed, what, checkpoint_extra):
    torch.manual_seed(seed)
    model, args = tiny_pretraining_model(off, in_domains, out_domains, sum(visible[0]))
    perturb(model, seed)
    rng = np.random.default_rng(seed)
    arrays = random_inputs(rng, len(visible))
    num_tokens = (TINY["image_size"] // TINY["patch_size"]) ** 2
    masks = explicit_masks(rng, visible, in_domains, num_tokens)
    arrays.update({f"mask/{t}": m for t, m in masks.items()})
    arrays.update(pretraining_outputs(off, model, args, arrays))
    arrays.update(state_arrays(model.state_dict()))
    tasks = list(model.output_adapters)
    meta = {
        "what": what, "config": TINY, "domains": in_domains, "output_tasks": tasks,
        "visible_per_sample_task": visible, "loss_notes": LOSS_NOTES,
        "losses": {t: float(arrays[f"loss/{t}"]) for t in tasks},
        "losses_unmasked": {t: float(arrays[f"loss_unmasked/{t}"]) for t in tasks},
    }
    checkpoint = {"model": model.state_dict(), **checkpoint_extra(args)} if checkpoint_extra else None
    return Fixture(name, arrays, meta, checkpoint)


LAYOUT = ("Layouts are PyTorch's: images NCHW, semseg (B, H/4, W/4) int64, masks (B, N) int64 with "
          "1 = masked. pred/<task> is the decoder output (NCHW) for the given masks; encoder_tokens are "
          "the encoder outputs of the visible tokens in (task, row-major patch) order, then the global "
          "token. param/<key> is the state_dict (also in the .pth where there is one). Weights: the "
          "official init plus N(0, 0.05) noise on every trainable parameter, fp32.")


def pretrain_tiny(off, seed=0) -> Fixture:
    what = ("official MultiMAE pre-training model (tiny config), rgb/depth/semseg inputs, decoders for "
            "rgb, depth, semseg and norm_rgb (extra_norm_pix_loss: a second rgb-like decoder whose "
            "query task is rgb). " + LAYOUT + " The .pth is a training checkpoint "
            "{'model', 'epoch', 'args'}.")
    domains = ["rgb", "depth", "semseg"]
    return _fixture(off, "pretrain_tiny", domains, domains, PRETRAIN_VISIBLE, seed, what,
                    lambda args: {"epoch": 3, "args": args})


def pretrain_tiny_outonly(off, seed=1) -> Fixture:
    what = ("official MultiMAE pre-training model (tiny config) with in_domains = rgb only and "
            "out_domains = rgb, depth, semseg (+ norm_rgb): depth and semseg are output-only tasks "
            "(their decoders' task embeddings cover rgb only), so masks.get(task) is None for them and "
            "their losses average over the whole image. input/depth and input/semseg are the targets "
            "only. " + LAYOUT)
    return _fixture(off, "pretrain_tiny_outonly", ["rgb"], ["rgb", "depth", "semseg"],
                    OUTONLY_VISIBLE, seed, what, None)


def multimae_b_pretrain_keys(off) -> Fixture:
    """The state_dict shapes of the ViT-B model that run_pretraining_multimae.py builds by default
    (the released pre-training checkpoint)."""
    torch.manual_seed(0)
    model = off.run_pretraining.get_model(pretraining_args(off, []))
    what = ("state_dict key -> shape of the official ViT-B pre-training model as run_pretraining_"
            "multimae.py builds it by default (rgb/depth/semseg inputs; rgb, depth, semseg and norm_rgb "
            "decoders). Release checkpoints wrap it as {'model': state_dict, ...}.")
    keys = {k: list(v.shape) for k, v in model.state_dict().items()}
    return Fixture("multimae_b_pretrain_keys", meta={"what": what, "keys": keys})
