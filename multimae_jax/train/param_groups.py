"""The official fine-tuning parameter groups as optimizer multipliers: layer-wise lr decay and
the no-weight-decay rule.

Official: `utils/optim_factory.py: create_optimizer -> get_parameter_groups` with a
`LayerDecayValueAssigner` (`get_num_layer_for_vit`) and `skip_list = model.no_weight_decay()`, as
`run_finetuning_semseg.py`, `run_finetuning_depth.py` and `run_finetuning_taskonomy.py` call it.
A parameter with layer id i trains at lr x layer_decay ** (L + 1 - i), L = encoder depth:

| layer id | parameters                                                         |
|----------|--------------------------------------------------------------------|
| 0        | global_tokens, input_adapters.* (x 1 instead with scale_input_lr False) |
| k + 1    | encoder.k.*                                                        |
| L + 1    | everything else (the heads): x 1                                  |

Weight decay skips 1-D parameters, names ending '.bias' and names *exactly* in the model's
`no_weight_decay()`; names are the official state_dict keys of our paths
(convert/official.py: official_key).
"""
import ml_collections
from ml_collections.config_dict import placeholder

import jax

from multimae_jax.convert.official import official_key
from multimae_jax.train.optimizer import make_optimizer, path_names


def finetune_optimizer_fields() -> ml_collections.ConfigDict:
    """config.optimizer of a fine-tuning run, at the defaults of run_finetuning_semseg.py. The
    depth script differs in weight_decay (1e-4) and warmup_epochs (100), taskonomy in lr (3e-4);
    their configs override these."""
    c = ml_collections.ConfigDict()
    c.lr = 1e-4  # as given: the fine-tuning scripts do not scale it by the batch size
    c.min_lr = 0.0
    c.warmup_epochs = 1.0
    c.warmup_steps = -1  # > 0 overrides warmup_epochs
    c.b1 = 0.9
    c.b2 = 0.999
    c.eps = 1e-8
    c.weight_decay = 0.05
    c.weight_decay_end = placeholder(float)  # None: constant; else cosine to it
    c.layer_decay = 0.75  # lr x layer_decay ** (L + 1 - layer id); 1 = off
    c.scale_input_lr = True  # False: global tokens and input adapters at the full lr
    #                          (the depth and taskonomy scripts' --no_scale_input_lr)
    c.lr_mults = ()  # ((regex, multiplier), ...) over 'params/...', tried before the layer decay
    c.clip_grad = placeholder(float)  # None: off; else torch clip_grad_norm_ max norm
    c.skip_grad = placeholder(float)  # None: off (the fine-tuning scripts have no such option)
    return c


def layer_decay_rules(num_layers: int, layer_decay: float,
                      scale_input_lr: bool = True) -> tuple[tuple[str, float], ...]:
    """(regex, lr multiplier) rules over the train state's paths ('params/encoder/3/...') for
    `lr_multipliers`: layer id 0 (global tokens, input adapters) and each encoder block. The
    heads have no rule: they fall through to lr_multipliers' 1 = layer_decay ** 0, the official
    `else` (layer id L + 1), and so does any other parameter the official code would put there.
    As the official scripts, layer_decay 1 means no layer decay (every multiplier 1)."""
    if not 0 <= layer_decay <= 1:
        raise ValueError(f"config.optimizer.layer_decay={layer_decay}: must be in [0, 1] "
                         f"(1 = no layer decay)")
    if layer_decay == 1:
        return ()
    scales = [layer_decay ** (num_layers + 1 - i) for i in range(num_layers + 2)]
    if not scale_input_lr:
        scales[0] = 1.0
    return ((r"params/(global_tokens|input_adapters/.*)", scales[0]),
            *((rf"params/encoder/{k}/.*", scales[k + 1]) for k in range(num_layers)))


def no_weight_decay_names(model) -> frozenset[str]:
    """The official `MultiMAE.no_weight_decay()` of `model` (MultiViT or MultiMAE): 'global_tokens'
    and '<input_adapters|output_adapters>.<task>.<name>' for each name in an adapter's
    `no_weight_decay` (adapters without one add nothing, as the official hasattr check)."""
    names = {"global_tokens"}
    for group, adapters in (("input_adapters", model.input_adapters),
                            ("output_adapters", model.output_adapters or {})):
        for task, adapter in adapters.items():
            names |= {f"{group}.{task}.{n}" for n in getattr(adapter, "no_weight_decay", ())}
    return frozenset(names)


def finetune_decay_mask(trainable, skip_names):
    """True where weight decay applies, over {'params': model params}: not for 1-D parameters
    (exactly 1-D, as torch's len(shape) == 1), official names ending '.bias' or official names
    in `skip_names` (whole names: 'input_adapters.semseg.class_emb' exempts no
    'input_adapters.semseg.class_emb.weight')."""
    def decays(name, leaf):
        key = official_key(name.split("/")[1:])  # without the collection ('params')
        return not (leaf.ndim == 1 or key.endswith(".bias") or key in skip_names)
    return jax.tree.map(decays, path_names(trainable), trainable)


def finetune_optimizer(optimizer_config, model, lr_schedule, wd_schedule):
    """AdamW with the official fine-tuning param groups of `model` (optimizer.make_optimizer's
    update API): config.optimizer.lr_mults first, then the layer decay over model.depth blocks;
    weight decay by finetune_decay_mask with the model's no_weight_decay_names."""
    o = optimizer_config
    rules = (tuple(tuple(r) for r in o.lr_mults)
             + layer_decay_rules(model.depth, o.layer_decay, o.scale_input_lr))
    skip = no_weight_decay_names(model)
    return make_optimizer(o, lr_schedule, wd_schedule, lr_rules=rules,
                          decay=lambda trainable: finetune_decay_mask(trainable, skip))
