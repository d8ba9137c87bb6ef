"""Fine-tuning parameter groups: (weight decay, lr scale) per parameter name, as the official
fine-tuning scripts build their optimizer (`utils/optim_factory.py: create_optimizer` ->
`get_parameter_groups`, with `LayerDecayValueAssigner` and `skip_list = model.no_weight_decay()`).

Each case builds the ViT-B MultiViT the way its script does (at a small image size: the frozen
sin-cos `pos_emb` is no parameter, and with `--learnable_pos_emb` its size is not recorded):

- semseg_rgbd: run_finetuning_semseg.py with `in_domains rgb-depth` and its ConvNeXt head.
- semseg_learnable_pos_emb: the same with `--learnable_pos_emb` and rgb-depth-semseg inputs, so the
  exact-name skip list meets a 4-D `pos_emb` (skipped) and the SemSegInputAdapter's `class_emb`
  (listed, but its parameter is `class_emb.weight`: decayed).
- depth_no_scale_input_lr: run_finetuning_depth.py (rgb in, DPT head) with `--no_scale_input_lr`.
"""

from __future__ import annotations

import contextlib
import io
import types

import torch

from common import Fixture

LAYER_DECAY = 0.75
IMAGE_SIZE = 64  # the scripts' 512 / 256 would change no parameter name
COCO_SEMSEG_NUM_CLASSES = 133  # utils/data_constants.py, as DOMAIN_CONF['semseg'] uses it


def _semseg_model(off, in_domains, learnable_pos_emb):
    """run_finetuning_semseg.py: main, model part, with its argparse defaults (patch 16,
    ConvNeXt head: decoder_dim 6144, depth 4, 16 preds per patch, main task rgb, 150 classes,
    drop_path_encoder 0.1)."""
    mm = off.multimae
    make = {
        "rgb": lambda **kw: mm.PatchedInputAdapter(num_channels=3, stride_level=1, **kw),
        "depth": lambda **kw: mm.PatchedInputAdapter(num_channels=1, stride_level=1, **kw),
        "semseg": lambda **kw: mm.SemSegInputAdapter(
            num_classes=COCO_SEMSEG_NUM_CLASSES, dim_class_emb=64, interpolate_class_emb=False,
            emb_padding_idx=COCO_SEMSEG_NUM_CLASSES, stride_level=4, **kw),
    }
    inputs = {d: make[d](patch_size_full=16, image_size=IMAGE_SIZE,
                         learnable_pos_emb=learnable_pos_emb) for d in in_domains}
    heads = {"semseg": mm.ConvNeXtAdapter(num_classes=150, embed_dim=6144, patch_size=16,
                                          preds_per_patch=16, depth=4, interpolate_mode="bilinear",
                                          main_tasks=["rgb"])}
    return off.model_builder.create_model("multivit_base", input_adapters=inputs,
                                          output_adapters=heads, drop_path_rate=0.1)


def _depth_model(off):
    """run_finetuning_depth.py: main, model part, with its defaults (rgb in, DPT head for depth,
    patch 16)."""
    mm = off.multimae
    inputs = {"rgb": mm.PatchedInputAdapter(num_channels=3, stride_level=1, patch_size_full=16,
                                            image_size=IMAGE_SIZE)}
    heads = {"depth": mm.DPTOutputAdapter(num_classes=1, stride_level=1, patch_size=16,
                                          main_tasks=["rgb"])}
    return off.model_builder.create_model("multivit_base", input_adapters=inputs,
                                          output_adapters=heads, drop_path_rate=0.0)


def _groups(off, model, weight_decay, scale_input_lr, script_args):
    """The optimizer's groups as the script builds them: layer-decay values (index 0 replaced by
    1 without scale_input_lr), the assigner, the skip list and create_optimizer."""
    optim_factory = off.optim_factory
    num_layers = model.get_num_layers()
    values = list(LAYER_DECAY ** (num_layers + 1 - i) for i in range(num_layers + 2))
    if not scale_input_lr:
        values[0] = 1.0
    assigner = optim_factory.LayerDecayValueAssigner(values)
    skip = model.no_weight_decay()
    args = types.SimpleNamespace(opt="adamw", weight_decay=weight_decay, lr=1e-4, opt_eps=1e-8,
                                 opt_betas=[0.9, 0.999], momentum=0.9, **script_args)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints every group
        optimizer = optim_factory.create_optimizer(
            args, model, skip_list=skip, get_num_layer=assigner.get_layer_id,
            get_layer_scale=assigner.get_scale)
    name_of = {id(p): n for n, p in model.named_parameters()}
    params = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            params[name_of[id(p)]] = [group["weight_decay"], group["lr_scale"]]
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    return {"num_layers": num_layers, "layer_decay": LAYER_DECAY, "weight_decay": weight_decay,
            "scale_input_lr": scale_input_lr, "skip_list": sorted(skip), "frozen": frozen,
            "params": dict(sorted(params.items()))}


def finetune_param_groups(off) -> Fixture:
    torch.manual_seed(0)
    # run_finetuning_semseg.py: weight_decay 0.05, no --scale_input_lr (always scaled),
    # --no_lr_scale_list '' (split into [''], which names no parameter)
    semseg = dict(weight_decay=0.05, scale_input_lr=True, script_args={"no_lr_scale_list": ""})
    cases = {
        "semseg_rgbd": _groups(off, _semseg_model(off, ["rgb", "depth"], False), **semseg),
        "semseg_learnable_pos_emb": _groups(
            off, _semseg_model(off, ["rgb", "depth", "semseg"], True), **semseg),
        # run_finetuning_depth.py: weight_decay 1e-4, no no_lr_scale_list argument
        "depth_no_scale_input_lr": _groups(off, _depth_model(off), weight_decay=1e-4,
                                           scale_input_lr=False, script_args={}),
    }
    what = ("per case: params = {official parameter name: [weight_decay, lr_scale]} of the "
            "param groups that utils/optim_factory.py: create_optimizer builds for the official "
            "multivit_base as the named fine-tuning script does (layer decay 0.75, skip_list = "
            "model.no_weight_decay(), recorded as skip_list); frozen = parameters with "
            "requires_grad False (in no group). lr at step t = lr_schedule[t] x lr_scale; "
            "weight_decay 0 = never decayed.")
    return Fixture("finetune_param_groups", meta={"what": what, "cases": cases})
