"""config.objective = 'features' (configs/knn.py): an encoder's frozen rgb features, evaluated
stand-alone by `python -m multimae_jax.evaluate` with the k-NN evaluators of config.evals
(train/features.py). The config is a pre-training one; nothing trains."""
from multimae_jax.models.spec import example_inputs
from multimae_jax.train.features import ENCODER_KEYS, feature_model, knn_evaluators
from multimae_jax.train.pretrain import PretrainObjective


class FeaturesObjective(PretrainObjective):
    """The encoder of config.model over rgb alone (`features.feature_model`)."""
    training_pictures = False

    def __init__(self, config):
        super().__init__(config)
        self.model = feature_model(config)

    def init_variables(self, key) -> dict:
        return self.model.init(key, example_inputs(self.model))

    def init_extra(self) -> dict:
        return {}

    def loss(self, trainable, buffers, batch, key):
        raise ValueError("config.objective='features' evaluates frozen features; train with "
                         "configs/pretrain.py, configs/finetune_*.py or configs/linear_probe.py")

    @staticmethod
    def select_weights(state_dict: dict) -> dict:
        """The feature model's share of any checkpoint's official state_dict: the global tokens,
        the encoder and the rgb input adapter (decoders, heads and other adapters dropped); a
        checkpoint lacking one of them, or of another size, is then refused by name."""
        return {k: v for k, v in state_dict.items()
                if k.split(".")[0] in ENCODER_KEYS or k.startswith("input_adapters.rgb.")}

    def evaluators(self, trainer, steps_per_epoch: int):
        return knn_evaluators(self.config, trainer, steps_per_epoch)
