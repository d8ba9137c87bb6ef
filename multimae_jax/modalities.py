"""One registry entry per modality: what its input adapter, decoder and loss are.

The model factories, the checkpoint loader and the losses read this table; adding a modality
(e.g. surface normals) means adding one entry here.
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class Modality:
    """A modality (or an extra output such as norm_rgb) of MultiMAE.

    kind: 'image' (float (B, H, W, channels)) or 'labels' (int (B, H/stride, W/stride)).
    channels: image channels, or the number of classes for labels.
    stride_level: resolution divisor of the data relative to the RGB image.
    loss: 'mse', 'l1' or 'cross_entropy'; norm_pix: standardise target patches (norm_rgb).
    target: the input whose data is this output's target and whose mask it uses.
    """
    name: str
    kind: str
    channels: int
    stride_level: int
    loss: str
    target: str
    norm_pix: bool = False


MODALITIES = {
    "rgb": Modality("rgb", "image", 3, 1, "mse", "rgb"),
    "depth": Modality("depth", "image", 1, 1, "l1", "depth"),
    "semseg": Modality("semseg", "labels", 133, 4, "cross_entropy", "semseg"),
    "norm_rgb": Modality("norm_rgb", "image", 3, 1, "mse", "rgb", norm_pix=True),
}


def get(name: str) -> Modality:
    if name not in MODALITIES:
        raise ValueError(f"unknown modality '{name}'; known: {sorted(MODALITIES)} "
                         "(add one in multimae_jax/modalities.py)")
    return MODALITIES[name]
