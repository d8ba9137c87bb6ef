"""The training objectives the loop runs, chosen by config.objective (default 'pretrain')."""
from multimae_jax.train.classify import ClassifyObjective
from multimae_jax.train.features_objective import FeaturesObjective
from multimae_jax.train.finetune import FinetuneObjective
from multimae_jax.train.linear_probe import LinearProbeObjective
from multimae_jax.train.pretrain import PretrainObjective

OBJECTIVES = {"pretrain": PretrainObjective, "finetune": FinetuneObjective,
              "classify": ClassifyObjective, "features": FeaturesObjective,
              "linear_probe": LinearProbeObjective}


def make_objective(config):
    name = config.get("objective", "pretrain")
    if name not in OBJECTIVES:
        raise ValueError(f"config.objective={name!r}: choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](config)
