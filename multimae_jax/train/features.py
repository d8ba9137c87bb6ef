"""Frozen-feature evaluation of an encoder: the k-NN evaluator (train/evaluators/knn.py) with
its feature function and data, for pre-training (config.evals.<name> of type 'knn', e.g. in
configs/pretrain.py:tiny) and for the stand-alone k-NN (configs/knn.py, run by
`python -m multimae_jax.evaluate`).

The features are the encoder tokens of the rgb image alone, unmasked: the rgb input adapter,
the global tokens and the encoder of any MultiMAE or MultiViT (their decoders and heads unused).

config.evals.<name> = dict(type='knn', k, temperature, pool, num_classes, every | every_epochs,
data=dict(path, reference_split, query_split, crop_pct, eval_batch_size, skip_corrupt,
reference_samples, query_samples, synthetic_classes, synthetic_seed, synthetic_object_scale)):
the reference set is path/reference_split, the queries path/query_split (classification
layouts: data/classify_sources.py); path '' = the synthetic scenes labelled by shape (one shape
class per scene), the first reference_samples as the reference, the next query_samples as
queries.
"""
import jax
import ml_collections

from multimae_jax import modalities
from multimae_jax.data.classify_sources import check_classes, make_classify_source
from multimae_jax.data.classify_transforms import ClassifyRecipe
from multimae_jax.data.dense_pipeline import eval_dataset
from multimae_jax.data.synthetic import SyntheticScenes
from multimae_jax.data.transforms import prepare_batch
from multimae_jax.models.presets import multivit
from multimae_jax.train.evaluators import eval_every, make_evaluators
from multimae_jax.train.step import DTYPES

ENCODER_KEYS = ("global_tokens", "encoder")  # and input_adapters.rgb


def knn_data(**overrides) -> ml_collections.ConfigDict:
    """The data section of a k-NN evaluator (see the module docstring) with `overrides`."""
    return ml_collections.ConfigDict(dict(
        path="", reference_split="train", query_split="val", crop_pct=224 / 256,
        eval_batch_size=256, skip_corrupt=False, reference_samples=640, query_samples=128,
        synthetic_classes=8, synthetic_seed=1, synthetic_object_scale=1.0) | overrides)


def rgb_modality(config) -> modalities.Modality:
    registry = modalities.with_overrides(config.modalities.to_dict())
    return modalities.resolve(("rgb",), registry)["rgb"]


def feature_model(config, inputs: tuple = ()):
    """A MultiViT of config.model's encoder over `inputs` (Modality objects; default: rgb
    alone), with no head: {input: (B, S, S, C)} -> encoder tokens (B, N + G, D)."""
    mc = config.model
    return multivit(mc.size, tuple(inputs) or (rgb_modality(config),), heads=None,
                    image_size=mc.image_size, patch_size=mc.patch_size,
                    num_global_tokens=mc.num_global_tokens,
                    dtype=DTYPES[config.train.compute_dtype],
                    residual_dtype=DTYPES[config.train.residual_dtype],
                    attention=mc.attention, scan_blocks=mc.scan_blocks,
                    **mc.overrides.to_dict())


def encoder_variables(collection: dict, inputs=("rgb",)) -> dict:
    """The feature model's share of a MultiMAE's or MultiViT's params or buffers: the encoder,
    the global tokens and the input adapters of `inputs` (names)."""
    return {**{k: collection[k] for k in ENCODER_KEYS if k in collection},
            "input_adapters": {name: collection["input_adapters"][name] for name in inputs}}


def knn_evaluators(config, trainer, steps_per_epoch: int):
    """({name: KnnEvaluator of config.evals}, {name: every N steps}) for trainer's params."""
    model, rgb = feature_model(config), rgb_modality(config)

    def predict_fn(params, buffers, batch):
        with trainer.on_mesh():
            x = prepare_batch({"rgb": batch["rgb"]}, {"rgb": rgb})
            variables = {"params": encoder_variables(params)}
            if buffers:  # fixed positional embeddings
                variables["buffers"] = encoder_variables(buffers)
            return model.apply(variables, x, train=False)

    def batches(name, section):
        d = ml_collections.ConfigDict(section["data"])
        if not d.path and section["num_classes"] != d.synthetic_classes - 1:
            raise ValueError(f"config.evals.{name}.data.path is empty: the synthetic scenes "
                             f"have {d.synthetic_classes - 1} classes, not num_classes="
                             f"{section['num_classes']}; set data.path to the dataset")
        sources = {}
        for stream, split, start, count in (
                ("reference_batches", d.reference_split, 0, d.reference_samples),
                ("batches", d.query_split, d.reference_samples, d.query_samples)):
            scenes = (SyntheticScenes(start + count, config.model.image_size,
                                      d.synthetic_classes, d.synthetic_seed, single_class=True,
                                      object_scale=d.synthetic_object_scale)
                      if not d.path else None)
            sources[stream] = make_classify_source(
                d.path, split, (rgb,), train=False, skip_corrupt=d.skip_corrupt,
                synthetic_scenes=scenes, synthetic_start=start, synthetic_count=count)
        check_classes(sources["reference_batches"].classes, sources["batches"].classes,
                      f"config.evals.{name}.data: {d.path}/{d.query_split}")
        recipe = ClassifyRecipe((rgb,), config.model.image_size, None, d.crop_pct)
        local_batch = d.eval_batch_size // jax.process_count()
        return {stream: (lambda source=source: iter(eval_dataset(
                    source, recipe, local_batch_size=local_batch,
                    process_index=jax.process_index(), process_count=jax.process_count())))
                for stream, source in sources.items()}

    evaluators = make_evaluators(config.evals, predict_fn, trainer.mesh, batches,
                                 target="label", picture_input="rgb")
    return evaluators, eval_every(config.evals, steps_per_epoch)
