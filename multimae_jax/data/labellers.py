"""Pseudo-labellers (`python -m multimae_jax.data.pseudo_label`): what they share, and how
their predictions become the stored arrays of the official layout.

A labeller maps a list of RGB images, uint8 (H_i, W_i, 3) of any sizes, to one stored array per
image at that image's own size (H_i, W_i): 16-bit relative depth for a 'uint16' modality
(depth), class ids below its num_classes for a 'labels' modality (semseg). Subclasses implement
`predict` (float depth or disparity, or int class ids, per image at (H_i, W_i)); the models run
at their own input size and resize back themselves. Backends: `labellers_jax` (our MultiViT
checkpoints) and `labellers_hf` (transformers models; needs the `[pseudo]` extra).
"""
import numpy as np

from multimae_jax.data import dense_ops
from multimae_jax.modalities import Modality

#: what `Labeller.predict` returns: larger = farther ('depth'), larger = nearer ('disparity',
#: relative inverse depth as MiDaS-type models output), or class ids ('labels')
OUTPUTS = ("depth", "disparity", "labels")
#: disparity_to_depth's offset: the farthest pixel gets at most (1 + eps) / eps = 101 times the
#: depth of the nearest
DISPARITY_EPS = 0.01


def disparity_to_depth(disparity: np.ndarray, eps: float = DISPARITY_EPS) -> np.ndarray:
    """Relative depth (H, W) float64 in [1 / (1 + eps), 1 / eps] of a relative disparity map.

    MiDaS-type disparity is only known up to scale and shift, so it is first normalised to
    n in [0, 1] by its own min and max (a constant map gives n = 0), then depth = 1 / (n + eps):
    bounded (the sky, n ~ 0, ends at 1 / eps instead of infinity), monotone, and exactly inverse
    depth up to that shift."""
    d = np.asarray(disparity, np.float64)
    _require_finite(d, "disparity")
    span = d.max() - d.min()
    n = (d - d.min()) / span if span > 0 else np.zeros_like(d)
    return 1.0 / (n + eps)


def depth_to_uint16(depth: np.ndarray) -> np.ndarray:
    """uint16 (H, W) = round(depth / max(depth) * 65535), negative depth clipped to 0 (an
    all-zero map stays 0).

    MultiMAE reads a depth PNG as value / 2**16 and standardises every sample by its own
    10-90 % truncated mean and std, which removes any positive scale (and shift): only relative
    depth reaches the model, so a per-image scale costs nothing, and filling 16 bits keeps the
    most precision."""
    d = np.clip(np.asarray(depth, np.float64), 0.0, None)
    _require_finite(d, "depth")
    top = d.max() if d.size else 0.0
    if top <= 0:
        return np.zeros(d.shape, np.uint16)
    return np.round(d / top * 65535).astype(np.uint16)


def upsampled_argmax(scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Class ids int64 (H, W) of per-class scores (h, w, C) (logits or probabilities) resized
    bilinearly (cv2 INTER_LINEAR, pixel centres aligned) to size (H, W), then argmax over C.
    Four classes at a time with a running maximum: memory stays O(H W), not O(H W C) (and cv2
    resizes at most 4 channels at once)."""
    scores = np.asarray(scores, np.float32)
    best = np.full(tuple(size), -np.inf, np.float32)
    ids = np.zeros(tuple(size), np.int64)
    for start in range(0, scores.shape[-1], 4):
        chunk = dense_ops.resize(np.ascontiguousarray(scores[..., start:start + 4]), size, True)
        top = chunk.argmax(-1)
        value = np.take_along_axis(chunk, top[..., None], -1)[..., 0]
        better = value > best  # ties keep the lower class id, as a plain argmax
        best[better], ids[better] = value[better], top[better] + start
    return ids


def check_num_classes(num_classes: int, modality: Modality, where: str) -> None:
    """Refuses a segmentation model whose classes are not those of `modality` (MultiMAE's
    semseg: the 133 COCO-panoptic classes, detectron2's contiguous ids, things 0-79, stuff
    80-132)."""
    if num_classes != modality.num_classes:
        raise ValueError(
            f"{where} predicts {num_classes} classes, but {modality.name} has "
            f"{modality.num_classes} (MultiMAE pre-trains on the 133 COCO-panoptic classes); "
            f"for a custom label set pass --semseg-classes {num_classes} and pre-train with "
            f"--config.modalities.{modality.name}.num_classes={num_classes}")


def _require_finite(x: np.ndarray, what: str) -> None:
    if not np.isfinite(x).all():
        raise ValueError(f"the labeller predicted non-finite {what}")


class Labeller:
    """Base of every labeller: `labeller(images)` -> the stored array of each image.

    modality: what it writes (a Modality of storage 'uint16' or kind 'labels').
    output: one of `OUTPUTS`, what `predict` returns.
    """

    def __init__(self, modality: Modality, output: str):
        if output not in OUTPUTS:
            raise ValueError(f"labeller output {output!r}: choose one of {OUTPUTS}")
        if (output == "labels") != (modality.kind == "labels"):
            raise ValueError(f"a labeller of {output} cannot write {modality.kind} modality "
                             f"'{modality.name}'")
        if output != "labels" and modality.storage != "uint16":
            raise ValueError(f"depth is written as 16-bit PNG: modality '{modality.name}' has "
                             f"storage {modality.storage!r}")
        if output == "labels" and modality.num_classes > 256:
            raise ValueError(f"'{modality.name}': {modality.num_classes} classes do not fit the "
                             "8-bit label PNG")
        self.modality, self.output = modality, output

    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Per image uint8 (H_i, W_i, 3): float (H_i, W_i) depth or disparity, or int
        (H_i, W_i) class ids, as `output` says."""
        raise NotImplementedError

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Per image its stored array: uint16 (H_i, W_i) depth or uint8 (H_i, W_i) ids."""
        preds = self.predict(images)
        out = []
        for image, pred in zip(images, preds, strict=True):
            if np.shape(pred) != image.shape[:2]:
                raise ValueError(f"{type(self).__name__} returned shape {np.shape(pred)} for an "
                                 f"image of {image.shape[:2]}")
            out.append(self._stored(pred))
        return out

    def _stored(self, pred: np.ndarray) -> np.ndarray:
        if self.output == "labels":
            ids = np.asarray(pred)
            if ids.min() < 0 or ids.max() >= self.modality.num_classes:
                raise ValueError(f"{type(self).__name__}: class ids {ids.min()}..{ids.max()} "
                                 f"outside 0..{self.modality.num_classes - 1}")
            return ids.astype(np.uint8)
        return depth_to_uint16(disparity_to_depth(pred) if self.output == "disparity" else pred)
