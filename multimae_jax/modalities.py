"""One registry entry per modality: its files, host-side augmentation, model adapters and loss.

The data pipeline, the model factories, the checkpoint loader and the losses all read this table;
adding a modality (e.g. surface normals, or a depth stored as .npy) means adding one entry here.
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class Modality:
    """A modality (or an extra output such as norm_rgb) of MultiMAE.

    kind: 'image' (float (B, H, W, channels) in the model) or 'labels' (int (B, H/s, W/s)).
    channels: image channels, or the number of classes for labels.
    stride_level: resolution divisor of the model input relative to the RGB image (semseg: 4).
    loss: 'mse', 'l1' or 'cross_entropy'; norm_pix: standardise target patches (norm_rgb).
    target: the input whose data is this output's target and whose mask it uses.
    storage: how files hold it: 'rgb8' (8-bit colour image, e.g. JPEG), 'uint16' (16-bit
      single-channel PNG; the model gets value / 2**16, as the official loader), 'labels'
      (8-bit single-channel PNG of class ids), 'npy' (a float32 .npy array (H, W[, C])).
    resample: interpolation when cropping and resizing: 'bicubic' or 'nearest'.
    write_ext: the extension used when writing files of this modality.
    on_disk: False for outputs computed from another modality (norm_rgb).
    """
    name: str
    kind: str
    channels: int
    stride_level: int
    loss: str
    target: str
    storage: str = "rgb8"
    resample: str = "bicubic"
    write_ext: str = ".png"
    norm_pix: bool = False
    on_disk: bool = True


MODALITIES = {
    "rgb": Modality("rgb", "image", 3, 1, "mse", "rgb", "rgb8", "bicubic", ".jpg"),
    "depth": Modality("depth", "image", 1, 1, "l1", "depth", "uint16", "nearest", ".png"),
    "semseg": Modality("semseg", "labels", 133, 4, "cross_entropy", "semseg", "labels", "nearest",
                       ".png"),
    "norm_rgb": Modality("norm_rgb", "image", 3, 1, "mse", "rgb", norm_pix=True, on_disk=False),
}

#: File extensions read as images (the official MultiTaskImageFolder's list) and as arrays.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
                    ".jpx")
ARRAY_EXTENSIONS = (".npy",)


def get(name: str) -> Modality:
    if name not in MODALITIES:
        raise ValueError(f"unknown modality '{name}'; known: {sorted(MODALITIES)} "
                         "(add one in multimae_jax/modalities.py)")
    return MODALITIES[name]
