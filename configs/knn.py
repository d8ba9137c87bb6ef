"""k-NN classification on the frozen rgb features of a pre-trained (or fine-tuned) encoder, the
DINO protocol (k = 20, T = 0.07, cosine similarity), stand-alone:

    python -m multimae_jax.evaluate --config=configs/knn.py:in1k --checkpoint=PATH \\
        --config.evals.knn.data.path=IMAGENET     # IMAGENET/{train,val}/<wnid>/*.JPEG
    python -m multimae_jax.evaluate --config=configs/knn.py:tiny --checkpoint=WORKDIR
        # the tiny pre-training's encoder on the synthetic scenes (as its own k-NN evaluator)

PATH: a workdir, an Orbax checkpoint, an exported file or an official .pth of a MultiMAE or
MultiViT of config.model's size (in1k: ViT-B/16 at 224; override --config.model.*). The
reference set is the training split (resized to 256, centre crop 224, as DINO), the queries the
validation split; features: the mean of all encoder tokens (pool 'global': the global token).
"""
import ml_collections

from configs import pretrain
from multimae_jax.train.features import knn_data


def get_config(variant: str = "in1k") -> ml_collections.ConfigDict:
    if variant not in ("in1k", "tiny"):
        raise ValueError(f"configs/knn.py: unknown variant '{variant}' (known: in1k, tiny)")
    c = pretrain.get_config("tiny" if variant == "tiny" else "")
    c.objective = "features"
    c.train.compute_dtype = "float32"
    if variant == "in1k":
        c.evals.knn = ml_collections.ConfigDict(dict(
            type="knn", k=20, temperature=0.07, pool="mean", num_classes=1000, every_epochs=1,
            data=knn_data(path="", eval_batch_size=1024)))
    return c
