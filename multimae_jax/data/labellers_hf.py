"""Pseudo-labelling with transformers models (the `[pseudo]` extra: torch, transformers; torch
is imported here only, when a labeller is built, so the package never needs it otherwise).

Defaults follow the paper: depth from DPT-Hybrid (`Intel/dpt-hybrid-midas`, MiDaS weights: it
predicts relative inverse depth, so its output is 'disparity'; the paper's Omnidata DPT-Hybrid
depth weights are not on the Hugging Face hub), semseg from Mask2Former Swin-S trained on COCO
panoptic (`facebook/mask2former-swin-small-coco-panoptic`, 133 classes in detectron2's
contiguous ids), taking the semantic map of the image processor's
`post_process_semantic_segmentation`: per pixel, the sum over queries of softmax(class logits
without the null class) x sigmoid(mask logits), upsampled bilinearly to the image, argmax.
Depth is resized back to the image bilinearly.
"""
import numpy as np
from PIL import Image

from multimae_jax.data.labellers import Labeller, check_num_classes
from multimae_jax.modalities import Modality

DEFAULT_DEPTH_MODEL = "Intel/dpt-hybrid-midas"
DEFAULT_SEMSEG_MODEL = "facebook/mask2former-swin-small-coco-panoptic"


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError("the hf labeller needs torch and transformers: "
                          "pip install -e '.[pseudo]' (or use --labeller jax)") from e
    return torch


def default_device() -> str:
    return "cuda" if _torch().cuda.is_available() else "cpu"


def _model_inputs(processor, images: list[np.ndarray]):
    """[(indices, processor inputs)]: one batch when the processor brings every image to one
    size (e.g. DPT's 384 x 384), else one image at a time: a processor that keeps the aspect
    ratio pads a batch to its largest image, and post-processing to the image size would then
    stretch the padding into the labels."""
    pil = [Image.fromarray(im) for im in images]
    try:
        inputs = processor(images=pil, return_tensors="pt")
        if "pixel_mask" not in inputs or bool(inputs["pixel_mask"].all()):
            return [(list(range(len(images))), inputs)]
    except ValueError:  # images of several sizes that the processor cannot stack
        pass
    return [([i], processor(images=[im], return_tensors="pt")) for i, im in enumerate(pil)]


class HfLabeller(Labeller):
    """A transformers model + its image processor, on `device` ('cpu', 'cuda', ...; default
    cuda when there is one), in eval mode. Subclasses name their default model and the
    transformers Auto class that loads their kind of model."""
    DEFAULT_MODEL: str
    AUTO_MODEL: str

    def __init__(self, model, processor, modality: Modality, output: str,
                 device: str | None = None):
        super().__init__(modality, output)
        self.torch = _torch()
        self.device = device or default_device()
        self.model, self.processor = model.to(self.device).eval(), processor

    @classmethod
    def from_pretrained(cls, name: str | None = None, **kwargs):
        """The model and image processor `name` (a hub id or a local folder; default
        DEFAULT_MODEL) read by transformers; kwargs go to the constructor."""
        _torch()
        import transformers
        name = name or cls.DEFAULT_MODEL
        return cls(getattr(transformers, cls.AUTO_MODEL).from_pretrained(name),
                   transformers.AutoImageProcessor.from_pretrained(name), **kwargs)

    def _run(self, images):
        """Yields (indices, model outputs) of `images`, batched as `_model_inputs` says."""
        for indices, inputs in _model_inputs(self.processor, images):
            with self.torch.inference_mode():
                yield indices, self.model(**inputs.to(self.device))


class HfDepthLabeller(HfLabeller):
    """A depth-estimation model (`predicted_depth` (B, h, w)); output 'disparity' for MiDaS-type
    models (the default one), 'depth' for models of depth."""
    DEFAULT_MODEL, AUTO_MODEL = DEFAULT_DEPTH_MODEL, "AutoModelForDepthEstimation"

    def __init__(self, model, processor, modality: Modality, output: str = "disparity",
                 device: str | None = None):
        super().__init__(model, processor, modality, output, device)

    def predict(self, images):
        """Per image float32 (H_i, W_i), the prediction resized bilinearly."""
        functional = self.torch.nn.functional
        out = [None] * len(images)
        for indices, outputs in self._run(images):
            for pred, i in zip(outputs.predicted_depth, indices):
                pred = functional.interpolate(pred[None, None].float(), size=images[i].shape[:2],
                                              mode="bilinear", align_corners=False)
                out[i] = pred[0, 0].cpu().numpy()
        return out


class HfSemsegLabeller(HfLabeller):
    """A universal-segmentation model (Mask2Former, MaskFormer, OneFormer-style outputs with
    `post_process_semantic_segmentation`); its classes must be the modality's
    (`check_num_classes`)."""
    DEFAULT_MODEL, AUTO_MODEL = DEFAULT_SEMSEG_MODEL, "AutoModelForUniversalSegmentation"

    def __init__(self, model, processor, modality: Modality, device: str | None = None):
        name = getattr(model.config, "_name_or_path", "") or type(model).__name__
        check_num_classes(model.config.num_labels, modality, f"model {name}")
        super().__init__(model, processor, modality, "labels", device)

    def predict(self, images):
        """Per image int64 (H_i, W_i) class ids."""
        out = [None] * len(images)
        for indices, outputs in self._run(images):
            maps = self.processor.post_process_semantic_segmentation(
                outputs, target_sizes=[images[i].shape[:2] for i in indices])
            for m, i in zip(maps, indices):
                out[i] = m.cpu().numpy()
        return out
