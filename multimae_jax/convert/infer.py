"""Rebuild the model that an official state_dict belongs to (shapes + the modality registry).

Head counts, the patch size and which tokens the dense heads read are not stored in weights:
they default to the official values (encoder heads = width / 64, decoder heads = width / 32,
patch 16, DPT hooks at the ends of the four quarters of the encoder) and can be overridden.
"""
import re
import warnings

from multimae_jax import modalities
from multimae_jax.models import dense_heads, input_adapters, output_adapters
from multimae_jax.models.multimae import MultiMAE, MultiViT


def _count(state_dict: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m[1] for k in state_dict if (m := pattern.match(k))})


def _tasks(state_dict: dict, scope: str) -> list[str]:
    """Tasks under `scope`, registered modalities first in registry order (rgb, depth, ...), so
    the order does not depend on how the file sorted its keys."""
    seen = []
    for key in state_dict:
        if key.startswith(scope + "."):
            task = key.split(".")[1]
            if task not in seen:
                seen.append(task)
    order = list(modalities.MODALITIES)
    return sorted(seen, key=lambda t: (order.index(t) if t in order else len(order), seen.index(t)))


def _assumed_heads(width: int, head_dim: int, option: str) -> int:
    """Weights do not record attention heads: the official models use 64-d encoder heads and
    32-d decoder heads; other widths get a warning naming the option to set."""
    heads = max(1, width // head_dim)
    if width not in ({192, 384, 768, 1024} if head_dim == 64 else {256}):
        warnings.warn(f"width {width}: assuming {heads} attention head(s) of {head_dim} dims; "
                      f"pass {option}= if the checkpoint was trained otherwise")
    return heads


def _input_adapter(sd, task, patch_size, emb_padding_idx):
    p = f"input_adapters.{task}."
    proj = sd.get(p + "proj.weight", sd.get(p + "proj.1.weight"))
    if proj is None:
        raise ValueError(f"input adapter '{task}' has no proj weight")
    grid_h, grid_w = sd[p + "pos_emb"].shape[2:4] if p + "pos_emb" in sd else (None, None)
    if p + "class_emb.weight" in sd:
        rows, dim_emb = sd[p + "class_emb.weight"].shape
        interpolate = p + "proj.1.weight" in sd
        stride = modalities.MODALITIES[task].stride_level if task in modalities.MODALITIES else 4
        patch = max(1, patch_size // stride)
        return input_adapters.SemSegInputAdapter(
            rows - (emb_padding_idx is not None), stride, patch_size,
            image_size=(grid_h * stride * patch, grid_w * stride * patch), dim_class_emb=dim_emb,
            interpolate_class_emb=interpolate, emb_padding_idx=emb_padding_idx)
    kh, kw = proj.shape[2:4]
    stride = max(1, patch_size // kh)
    return input_adapters.PatchedInputAdapter(
        proj.shape[1], stride, patch_size, image_size=(grid_h * stride * kh, grid_w * stride * kw))


def _spatial_decoder(sd, task, patch_size, num_heads):
    p = f"output_adapters.{task}."
    dim = sd[p + "mask_token"].shape[-1]
    m = modalities.MODALITIES.get(task)
    stride = m.stride_level if m else 1
    patch = max(1, patch_size // stride)
    grid_h, grid_w = sd[p + "pos_emb"].shape[2:4]
    context = [k[len(p + "task_embeddings."):] for k in sd if k.startswith(p + "task_embeddings.")]
    return output_adapters.SpatialOutputAdapter(
        sd[p + "out_proj.weight"].shape[0] // (patch * patch), stride, patch_size, dim_tokens=dim,
        depth=_count(sd, p + "decoder_transformer."),
        image_size=(grid_h * stride * patch, grid_w * stride * patch),
        mlp_ratio=sd[p + "mlp.fc1.weight"].shape[0] / dim if p + "mlp.fc1.weight" in sd else 4.0,
        num_heads=num_heads or _assumed_heads(dim, 32, "decoder_num_heads"), task=m.source if m else task,
        context_tasks=tuple(context) or None, use_xattn=p + "decoder.q.weight" in sd)


def _main_tasks(in_features, dim_enc, inputs, main_tasks):
    n = in_features // dim_enc
    if main_tasks is not None:
        if len(main_tasks) != n:
            raise ValueError(f"main_tasks {main_tasks}: the head reads {n} task(s)")
        return tuple(main_tasks)
    return tuple(inputs[:n])


def _head(sd, task, dim_enc, depth, inputs, patch_size, main_tasks, hooks):
    p = f"output_adapters.{task}."
    if p + "out_proj.weight" in sd:
        return None  # a spatial decoder, handled separately
    if p + "head.weight" in sd and p + "norm.weight" in sd:
        return output_adapters.LinearOutputAdapter(sd[p + "head.weight"].shape[0])
    if p + "proj_dec.weight" in sd:
        out, inp = sd[p + "proj_dec.weight"].shape
        class_dim = sd[p + "blocks.0.dwconv.weight"].shape[0]
        return dense_heads.ConvNeXtAdapter(
            sd[p + "final_layer.weight"].shape[0], embed_dim=out, preds_per_patch=out // class_dim,
            main_tasks=_main_tasks(inp, dim_enc, inputs, main_tasks), patch_size=patch_size,
            depth=_count(sd, p + "blocks."))
    if p + "act_1_postprocess.0.weight" in sd:
        dims = tuple(sd[p + f"act_{i}_postprocess.0.weight"].shape[0] for i in range(1, 5))
        regression = p + "head.2.weight" in sd
        return dense_heads.DPTOutputAdapter(
            sd[p + "head.4.weight"].shape[0], patch_size=patch_size,
            main_tasks=_main_tasks(sd[p + "act_1_postprocess.0.weight"].shape[1], dim_enc, inputs,
                                   main_tasks),
            hooks=tuple(hooks) if hooks else tuple(depth * q // 4 - 1 for q in range(1, 5)),
            layer_dims=dims, feature_dim=sd[p + "scratch.layer1_rn.weight"].shape[0],
            head_type="regression" if regression else "semseg")
    raise ValueError(f"output adapter '{task}': unrecognised head (keys {sorted(k for k in sd if k.startswith(p))[:5]} ...)")


def infer_model(state_dict: dict, *, num_heads: int | None = None,
                decoder_num_heads: int | None = None, patch_size: int = 16,
                emb_padding_idx: int | None = None, main_tasks=None, hooks=None):
    """Returns an unbound MultiMAE (if the file has pre-training decoders) or MultiViT that has
    exactly the parameters of `state_dict` (official keys)."""
    if "global_tokens" not in state_dict:
        raise ValueError("not a MultiMAE / MultiViT state_dict: 'global_tokens' is missing")
    num_global, dim = state_dict["global_tokens"].shape[1:]
    depth = _count(state_dict, "encoder.")
    inputs = _tasks(state_dict, "input_adapters")
    ins = {t: _input_adapter(state_dict, t, patch_size, emb_padding_idx) for t in inputs}
    decoders, heads = {}, {}
    for task in _tasks(state_dict, "output_adapters"):
        head = _head(state_dict, task, dim, depth, inputs, patch_size, main_tasks, hooks)
        if head is None:
            decoders[task] = _spatial_decoder(state_dict, task, patch_size, decoder_num_heads)
        else:
            heads[task] = head
    if decoders and heads:
        raise ValueError(f"state_dict mixes pre-training decoders {list(decoders)} and "
                         f"fine-tuning heads {list(heads)}")
    fc1 = state_dict["encoder.0.mlp.fc1.weight"].shape[0] if depth else 4 * dim
    kwargs = dict(num_global_tokens=num_global, dim_tokens=dim, depth=depth,
                  num_heads=num_heads or _assumed_heads(dim, 64, "num_heads"), mlp_ratio=fc1 / dim,
                  qkv_bias="encoder.0.attn.qkv.bias" in state_dict)
    if decoders:
        return MultiMAE(ins, decoders, **kwargs)
    return MultiViT(ins, heads or None, **kwargs)
