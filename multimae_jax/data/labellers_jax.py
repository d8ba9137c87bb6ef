"""Pseudo-labelling with our own fine-tuned MultiViT checkpoints (no torch): an rgb-input
MultiViT with one dense head, e.g. a run of configs/finetune_depth.py (DPT head, one channel of
standardised depth) or configs/finetune_semseg.py:*_rgb (ConvNeXt head, class logits).

Each image is resized (cv2 bilinear, as the fine-tuning pipeline resizes) to the model's square
input size, ImageNet-normalised as the rgb modality says, and run jitted with the batch split
over the local devices; the prediction is resized back to the image's own size: depth
bilinearly, semseg logits bilinearly before the argmax (`labellers.upsampled_argmax`).
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from multimae_jax.data import dense_ops
from multimae_jax.data.labellers import Labeller, check_num_classes
from multimae_jax.data.labellers import upsampled_argmax
from multimae_jax.data.transforms import normalize
from multimae_jax.modalities import MODALITIES, NYU_DEPTH_MEAN, NYU_DEPTH_STD, Modality
from multimae_jax.models.input_adapters import pair
from multimae_jax.pretrained import load_pretrained


class JaxLabeller(Labeller):
    """A MultiViT checkpoint (anything `load_pretrained` reads) as a labeller of `modality`.

    A 'labels' modality takes the head's argmax and needs the head's classes to be the
    modality's; otherwise the head has one channel, standardised depth as configs/
    finetune_depth.py trains it, turned back into depth as pred * depth_std + depth_mean (the
    run's config.target.mean / std; the NYU values by default)."""

    def __init__(self, checkpoint, modality: Modality, depth_mean: float = NYU_DEPTH_MEAN,
                 depth_std: float = NYU_DEPTH_STD):
        super().__init__(modality, "labels" if modality.kind == "labels" else "depth")
        model, variables = load_pretrained(checkpoint)
        self.rgb = MODALITIES["rgb"]
        inputs = tuple(getattr(model, "input_adapters", None) or ())
        heads = dict(getattr(model, "output_adapters", None) or {})
        if inputs != (self.rgb.name,) or len(heads) != 1:
            raise ValueError(f"{checkpoint}: pseudo-labelling needs a MultiViT with the input "
                             f"'{self.rgb.name}' only and one dense head, got inputs "
                             f"{list(inputs)} and heads {list(heads)}")
        (self.head_name, head), = heads.items()
        if self.output == "labels":
            check_num_classes(head.num_classes, modality, f"{checkpoint} (head {self.head_name})")
        elif head.num_classes != 1:
            raise ValueError(f"{checkpoint}: a depth head has one channel, head "
                             f"{self.head_name} has {head.num_classes}")
        self.depth_mean, self.depth_std = depth_mean, depth_std
        self.size = pair(model.input_adapters[self.rgb.name].image_size)
        devices = jax.local_devices()
        self.mesh = Mesh(np.asarray(devices), ("batch",))
        self.padded = 0  # the batch size run so far (`predict`)
        batch, replicated = NamedSharding(self.mesh, P("batch")), NamedSharding(self.mesh, P())
        self.variables = jax.device_put(variables, replicated)

        def forward(variables, images):
            x = {self.rgb.name: normalize(images, self.rgb)}
            return model.apply(variables, x)[self.head_name].astype(np.float32)

        self.forward = jax.jit(forward, in_shardings=(replicated, batch), out_shardings=batch)

    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Per image (H_i, W_i): depth float32 or class ids int64."""
        x = np.stack([dense_ops.resize(im, self.size, linear=True) for im in images])
        # zero images up to the largest batch seen, a multiple of the device count: the batch
        # splits evenly, and a smaller last batch compiles nothing new
        n = self.mesh.devices.size
        self.padded = max(self.padded, -(-len(images) // n) * n)
        x = np.concatenate([x, np.zeros((self.padded - len(x),) + x.shape[1:], x.dtype)])
        out = np.asarray(jax.device_get(self.forward(self.variables, x)))[:len(images)]
        if self.output == "labels":
            return [upsampled_argmax(o, im.shape[:2]) for o, im in zip(out, images)]
        return [dense_ops.resize(o[..., 0], im.shape[:2], linear=True) * self.depth_std
                + self.depth_mean for o, im in zip(out, images)]
