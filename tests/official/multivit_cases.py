"""Fine-tuning fixtures: the official MultiViT with its four kinds of head, and its encoder converted
to a timm ViT by tools/multimae2vit_converter.py.

- multivit_heads_tiny: rgb + depth in; every encoder block's output and the four heads' outputs.
- vit_tiny_timm:       multimae_to_vit of that state dict; the encoder output for an rgb-only input.
"""

from __future__ import annotations

import numpy as np
import torch

from common import Fixture, numpy_tree, perturb, random_images, state_arrays
from pretrain_cases import TINY, register_tiny_models

INPUT_ORDER = ["rgb", "depth"]
HEADS_WHAT = (
    "official MultiViT (no masking) with rgb+depth inputs at 64x64 (a semseg input adapter too, "
    "unused) and four heads: cls = LinearOutputAdapter (5 classes, mean pooling incl. the global "
    "token); semseg_convnext = ConvNeXtAdapter (7 classes, embed_dim 128, 16 preds/patch, depth 2, "
    "main task rgb); semseg_convnext_rgbd = the same on rgb+depth with depth 1; depth_dpt = "
    "DPTOutputAdapter (regression, 1 channel, hooks [0,1,2,3], layer_dims [8,16,32,64], feature_dim "
    "16). layer/<i> is the output of encoder block i for tokens [rgb(16), depth(16), global(1)]; "
    "head/<name> the head's output (NCHW for the dense ones) as MultiViT.forward calls it (the DPT "
    "head on all layers, the others on the last). The DPT state_dict holds duplicate aliases "
    "(act_postprocess.*, scratch.layer_rn.*) of the same tensors. Weights: the official init plus "
    "N(0, 0.05) noise on every trainable parameter, fp32; param/<key> = the .pth's state_dict.")


def tiny_multivit(off):
    """MultiViT through the official registry, with input adapters and heads built from the
    official classes at the tiny sizes."""
    register_tiny_models(off)
    mm, size, patch = off.multimae, TINY["image_size"], TINY["patch_size"]
    input_adapters = {
        "rgb": mm.PatchedInputAdapter(num_channels=3, stride_level=1, patch_size_full=patch,
                                      image_size=size),
        "depth": mm.PatchedInputAdapter(num_channels=1, stride_level=1, patch_size_full=patch,
                                        image_size=size),
        "semseg": mm.SemSegInputAdapter(num_classes=TINY["semseg_classes"],
                                        stride_level=TINY["semseg_stride"], patch_size_full=patch,
                                        image_size=size, dim_class_emb=TINY["dim_class_emb"]),
    }
    heads = {
        "semseg_convnext": mm.ConvNeXtAdapter(7, embed_dim=128, preds_per_patch=16,
                                              patch_size=patch, depth=2, main_tasks=["rgb"]),
        "semseg_convnext_rgbd": mm.ConvNeXtAdapter(7, embed_dim=128, preds_per_patch=16,
                                                   patch_size=patch, depth=1,
                                                   main_tasks=["rgb", "depth"]),
        "depth_dpt": mm.DPTOutputAdapter(num_classes=1, stride_level=1, patch_size=patch,
                                         main_tasks=["rgb"], hooks=[0, 1, 2, 3],
                                         layer_dims=[8, 16, 32, 64], feature_dim=16,
                                         head_type="regression"),
        "cls": mm.LinearOutputAdapter(num_classes=5, use_mean_pooling=True),
    }
    model = off.model_builder.create_model("multivit_tiny", input_adapters=input_adapters,
                                           output_adapters=heads,
                                           num_global_tokens=TINY["num_global_tokens"])
    return model.eval()


def encoder_only(model, x, **kwargs):
    """MultiViT.forward without the heads (output_adapters None returns the encoder tokens)."""
    heads = model.output_adapters
    model.output_adapters = None
    try:
        return model(x, **kwargs)
    finally:
        model.output_adapters = heads


def multivit_outputs(off, model, arrays):
    x = {t: torch.from_numpy(arrays[f"input/{t}"]) for t in INPUT_ORDER}
    with torch.no_grad():
        layers = encoder_only(model, x, return_all_layers=True)
        _, input_info = model.process_input(x)
        out = {f"layer/{i}": layer for i, layer in enumerate(layers)}
        for name, head in model.output_adapters.items():
            dpt = isinstance(head, off.multimae.DPTOutputAdapter)
            out[f"head/{name}"] = head(encoder_tokens=layers if dpt else layers[-1],
                                       input_info=input_info)
    return numpy_tree(out)


def multivit_heads_tiny(off, seed=2):
    """(fixture, model): the model is reused for vit_tiny_timm."""
    torch.manual_seed(seed)
    model = tiny_multivit(off)
    perturb(model, seed)
    rng = np.random.default_rng(seed)
    size = TINY["image_size"]
    arrays = {"input/rgb": random_images(rng, (2, 3, size, size)),
              "input/depth": random_images(rng, (2, 1, size, size))}
    arrays.update(multivit_outputs(off, model, arrays))
    arrays.update(state_arrays(model.state_dict()))
    meta = {"what": HEADS_WHAT, "config": TINY, "input_order": INPUT_ORDER}
    return Fixture("multivit_heads_tiny", arrays, meta, {"model": model.state_dict()}), model


def timm_tokens(model, rgb: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return encoder_only(model, {"rgb": torch.from_numpy(rgb)}).numpy()


def vit_tiny_timm(off, multivit, seed=3) -> Fixture:
    state = off.multimae2vit.multimae_to_vit(multivit.state_dict())
    rgb = random_images(np.random.default_rng(seed), (2, 3, TINY["image_size"], TINY["image_size"]))
    what = ("vit_tiny_timm.pth is the encoder of multivit_heads_tiny in timm ViT format, as the official "
            "tools/multimae2vit_converter.py writes it (cls_token = global token, pos_embed with a zero "
            "row prepended for the cls slot, patch_embed.proj, blocks.N; no final norm, no head). "
            "vit_tiny_timm.npz holds an rgb-only input and the MultiViT encoder output for it: 16 patch "
            "tokens then the global token (MultiMAE order).")
    meta = {"what": what, "keys": {k: list(v.shape) for k, v in state.items()}}
    arrays = {"input_rgb": rgb, "encoder_tokens": timm_tokens(multivit, rgb)}
    return Fixture("vit_tiny_timm", arrays, meta, {"model": state})
