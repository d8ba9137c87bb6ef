"""Decoding one modality's file bytes into its native array (HOST side), per its `storage`:
'rgb8' -> uint8 (H, W, 3); 'uint8' -> uint8 (H, W, channels); 'uint16' -> uint16 (H, W) from a
16- or 32-bit image, never an 8-bit one; 'labels' -> uint8 (H, W) class ids; 'npy' -> float32
(H, W[, C])."""
import io

import numpy as np
from PIL import Image

from multimae_jax.modalities import Modality


class CorruptFileError(ValueError):
    """A file that cannot be decoded as its modality expects; the message names the file."""


def open_image(data: bytes, where: str) -> Image.Image:
    return _open(data, where, 1)[0]


def _open(data: bytes, where: str, draft: int) -> tuple[Image.Image, int, tuple[int, int]]:
    """(decoded image, the draft factor applied, full (H, W)); see `decode_draft`."""
    try:
        img = Image.open(io.BytesIO(data))
        full, factor = (img.height, img.width), 1
        if draft > 1:
            # PIL picks the largest scale 1/k (k in 8, 4, 2, 1) that keeps the image at least
            # the requested size: W // (W // draft) >= draft. None for formats other than JPEG.
            drafted = img.draft(None, (max(full[1] // draft, 1), max(full[0] // draft, 1)))
            if drafted is not None:
                factor = round(full[1] / drafted[1][2])  # its box: (0, 0, W / k, H / k)
        img.load()
        return img, factor, full
    except Exception as e:  # PIL raises many types for truncated or foreign data
        raise CorruptFileError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from e


def stored_size(modality: Modality, data: bytes, where: str) -> tuple[int, int]:
    """(H, W) of one file; an image's from its header, without decoding its pixels."""
    if modality.storage == "npy":
        return decode(modality, data, where).shape[:2]
    try:
        img = Image.open(io.BytesIO(data))
    except Exception as e:
        raise CorruptFileError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from e
    return img.height, img.width


def decode(modality: Modality, data: bytes, where: str) -> np.ndarray:
    """Native array of one file's bytes; `where` (the file path or record key) names errors."""
    return decode_draft(modality, data, where, 1)[0]


def decode_draft(modality: Modality, data: bytes, where: str, factor: int
                 ) -> tuple[np.ndarray, int, tuple[int, int]]:
    """`decode`, with a JPEG downscaled by `factor` (1, 2, 4 or 8) in the DCT domain (PIL's
    `Image.draft`: libjpeg's scaled inverse DCT, cheaper than a full decode): output pixel
    (y, x) stands for the source pixels [k y, k y + k) x [k x, k x + k), and the image has
    ceil(H / k) x ceil(W / k) pixels. Other formats decode at full size.
    Returns (array, the factor applied (1 unless a JPEG), full-size (H, W))."""
    if modality.storage == "npy":
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32)
        except Exception as e:
            raise CorruptFileError(f"{where}: cannot decode .npy ({e})") from e
        return arr, 1, arr.shape[:2]
    img, applied, full = _open(data, where, factor)
    return _image_array(modality, img, where), applied, full


def _image_array(modality: Modality, img: Image.Image, where: str) -> np.ndarray:
    """The native array of a decoded image, checked against the modality's storage."""
    if modality.storage == "rgb8":
        return np.asarray(img.convert("RGB"))
    arr = np.asarray(img)
    if modality.storage == "uint8":
        arr = arr[..., None] if arr.ndim == 2 else arr
        if arr.dtype != np.uint8 or arr.shape[-1] != modality.channels:
            raise CorruptFileError(f"{where}: {modality.name} expects an 8-bit image with "
                                   f"{modality.channels} channel(s), got {arr.dtype} shape "
                                   f"{arr.shape} (PIL mode {img.mode})")
        return arr
    if arr.ndim != 2:
        raise CorruptFileError(f"{where}: {modality.name} must be a single-channel image, got "
                               f"shape {arr.shape} (PIL mode {img.mode})")
    if modality.storage == "uint16":
        # The official loader (utils/dataset_folder.py: MultiTaskImageFolder.__getitem__, which
        # keeps non-RGB images in their own mode, then utils/datasets.py:
        # DataAugmentationForMultiMAE.__call__) would take an 8-bit PNG without a word and
        # divide it by 2**16 like a 16-bit one: depth 256 times too small, in 256 levels. Such a
        # file is a wrong export (quantised or clipped depth), so it is refused like a corrupt one.
        if arr.dtype.itemsize == 1:  # modes '1', 'L', 'P'
            raise CorruptFileError(f"{where}: {modality.name} expects a 16-bit PNG, got "
                                   f"{1 if img.mode == '1' else 8}-bit mode {img.mode}")
        if arr.dtype != np.uint16 and (arr.min() < 0 or arr.max() > 65535):
            raise CorruptFileError(f"{where}: depth values outside 16 bits (mode {img.mode})")
        return arr.astype(np.uint16)
    if modality.storage == "labels":
        if img.mode not in ("L", "P"):
            raise CorruptFileError(f"{where}: {modality.name} labels must be an 8-bit 'L' or 'P' "
                                   f"image, got mode {img.mode}")
        return arr.astype(np.uint8)
    raise ValueError(f"modality {modality.name}: unknown storage '{modality.storage}'")


def encode(modality: Modality, array: np.ndarray, ext: str | None = None,
           jpeg_quality: int = 95, jpeg_subsampling: int = 0) -> bytes:
    """Inverse of `decode` (for writing datasets): PNG / JPEG / .npy bytes.

    JPEG keeps full-resolution chroma (4:4:4) by default, as 4:2:0 blurs small saturated
    textures; jpeg_subsampling takes PIL's codes (0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0, PIL's
    default and that of most photos)."""
    ext = (ext or modality.write_ext).lower()
    buf = io.BytesIO()
    if ext == ".npy":
        np.save(buf, np.asarray(array, np.float32))
    elif modality.storage == "uint16":
        Image.fromarray(np.asarray(array, np.uint16)).save(buf, format="PNG")
    elif modality.storage == "uint8" and np.ndim(array) == 3 and np.shape(array)[-1] == 1:
        Image.fromarray(np.asarray(array, np.uint8)[..., 0]).save(buf, format="PNG")
    elif ext in (".jpg", ".jpeg"):
        Image.fromarray(np.asarray(array, np.uint8)).save(buf, format="JPEG", quality=jpeg_quality,
                                                          subsampling=jpeg_subsampling)
    else:
        Image.fromarray(np.asarray(array, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
