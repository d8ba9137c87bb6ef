"""Inference on any image, as the official demo (`MultiMAE_Demo.ipynb`) does it.

    predictor = Predictor.load("multimae-b_98_rgb+-depth-semseg_1600e_multivit-afff3f8c.pth")
    rgb = center_crop_resize(load_image("https://.../photo.jpg"))     # (224, 224, 3) in [0, 1]
    inputs = prepare_inputs(predictor.modalities, rgb=rgb, depth=depth, semseg=semseg)
    preds, masks = predictor.predict(inputs, num_encoded_tokens=98, alphas=1.0, seed=1)
    preds, masks = predictor.predict(inputs, masks_from_grid({"rgb": grid, ...}))

Numpy in, numpy out; each (shape, token count) is compiled once. Importing this module does not
import the training or data stack (grain, optax, tfds).
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from multimae_jax import masking
from multimae_jax.data.transforms import normalize
from multimae_jax.models.input_adapters import pair
from multimae_jax.models.multimae import MultiMAE
from multimae_jax.modalities import resolve
from multimae_jax.pretrained import load_pretrained

URL_TIMEOUT_S = 30
CACHE_DIR = Path(os.environ.get("MULTIMAE_JAX_CACHE", Path.home() / ".cache" / "multimae_jax"))


def _is_url(source) -> bool:
    return str(source).startswith(("http://", "https://"))


@contextlib.contextmanager
def _download(url):
    """The open response of `url`; a failure (DNS, refused, HTTP error, timeout, a read or
    write inside the block) raises a ValueError naming the URL."""
    try:
        with urllib.request.urlopen(str(url), timeout=URL_TIMEOUT_S) as response:
            yield response
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ValueError(f"{url}: cannot download ({getattr(e, 'reason', e)})") from e


def fetch(source, cache_dir=None) -> Path:
    """A local path for `source`: a path is returned as it is; an http(s) URL is downloaded
    once into `cache_dir` (default $MULTIMAE_JAX_CACHE or ~/.cache/multimae_jax) under its
    file name, with a progress bar, written to a temporary file and renamed when complete (an
    interrupted download leaves nothing behind). A URL that fails raises a ValueError naming it."""
    if not _is_url(source):
        return Path(source)
    target = Path(cache_dir or CACHE_DIR) / str(source).rstrip("/").rsplit("/", 1)[-1]
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f, _download(source) as r:
            size = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=target.name) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def load_image(source) -> Image.Image:
    """An RGB PIL image from a path, an http(s) URL, raw bytes, a PIL image or a uint8 (H, W[,
    C]) array. Grayscale, palette, CMYK and RGBA images are converted to RGB (as the official
    loader's `.convert('RGB')`; transparency is dropped). A URL that does not resolve or a file
    that is not an image raises a ValueError naming it."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, np.ndarray):
        return Image.fromarray(np.asarray(source, np.uint8)).convert("RGB")
    if isinstance(source, bytes):
        data, where = source, "image bytes"
    elif _is_url(source):
        with _download(source) as response:
            data, where = response.read(), str(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"{path}: no such image file")
        data, where = path.read_bytes(), str(path)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{where}: not a readable image ({type(e).__name__}: {e})") from e
    return image.convert("RGB")


def center_crop_resize(image, size: int = 224) -> np.ndarray:
    """The demo's preprocessing: `TF.center_crop(TF.to_tensor(im), min(im.size))` then
    `TF.resize(img, size)` on the tensor (bilinear, half-pixel centres, no antialiasing).
    image: anything `load_image` takes. -> float32 (size, size, 3) in [0, 1]."""
    x = np.asarray(load_image(image), np.float32) / 255.0
    h, w = x.shape[:2]
    side = min(h, w)
    top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))  # torchvision's
    x = x[top:top + side, left:left + side]
    resized = jax.image.resize(x, (size, size, 3), "linear", antialias=False)
    return np.asarray(resized, np.float32)


def prepare_inputs(modalities, **data) -> dict[str, np.ndarray]:
    """The demo's model inputs, a batch of one, from data at the image size S (each optional):
    an image modality (S, S, C) or (S, S) float — rgb in [0, 1] is normalised with its
    modality's mean / std; depth (any scale) is standardised per image as the demo (10-90 %
    truncated mean and unbiased variance, eps 1e-6) when its modality says `standardize`;
    labels (S, S) int are resized nearest to S / stride as the demo's `TF.resize(...,
    NEAREST)` on a tensor (torch's nearest: source index floor(i * S_in / S_out), not PIL's).
    modalities: `Modality` objects or default names, e.g. `predictor.modalities`.
    -> {task: (1, ...)} float32 images NHWC, int32 labels."""
    mods = resolve(modalities)
    unknown = sorted(set(data) - set(mods))
    if unknown:
        raise ValueError(f"prepare_inputs: no modality {unknown}; known: {sorted(mods)}")
    out = {}
    for task, x in data.items():
        mod, x = mods[task], np.asarray(x)
        if mod.kind == "labels":
            rows, cols = (_torch_nearest(n, n // mod.stride_level) for n in x.shape[:2])
            out[task] = x[rows][:, cols][None].astype(np.int32)
            continue
        x = x.astype(np.float32).reshape(x.shape[:2] + (-1,))[None]
        # the device normalisation of training, minus its storage scale: x is given as values
        out[task] = np.asarray(normalize(x, mod.replace(scale=1.0)))
    return out


def _torch_nearest(n_in: int, n_out: int) -> np.ndarray:
    """Source indices (n_out,) of torch's `F.interpolate(mode='nearest')` along one axis."""
    return np.minimum(np.floor(np.arange(n_out) * (n_in / n_out)).astype(np.int64), n_in - 1)


def masks_from_grid(grids: dict) -> dict[str, np.ndarray]:
    """Hand-drawn masks: {task: (n_h, n_w) 0/1 or bool, 1 = masked} -> {task: (1, n_h * n_w)}
    int32 in the model's row-major patch order (the demo's 14 x 14 lists)."""
    return {task: np.asarray(g, np.int32).reshape(1, -1) for task, g in grids.items()}


def masks_from_coords(visible: dict, grid: tuple[int, int], full_tasks=()) -> dict:
    """Masks from lists of visible (x, y) = (column, row) patches per task (the demo's
    `make_mask`); tasks in `full_tasks` fully visible, every other patch masked.
    -> {task: (1, n_h * n_w)} int32."""
    tasks = tuple(visible) + tuple(t for t in full_tasks if t not in visible)
    return masking.make_mask(grid[0], grid[1], visible, full_tasks, tasks)


class Predictor:
    """A MultiMAE with decoders, ready for reconstructions: `predict(inputs, masks=None)`."""

    def __init__(self, model: MultiMAE, variables: dict, modalities=None, where: str = "model"):
        """modalities: `Modality` objects or names for the model's tasks (default: the
        registry's entries of its input and output task names)."""
        if not isinstance(model, MultiMAE) or not model.output_adapters:
            kind = type(model).__name__ + ("" if isinstance(model, MultiMAE) else
                                           " (a fine-tuning network)")
            raise ValueError(f"{where}: is a {kind} without pre-training decoders; "
                             "reconstructions need a MultiMAE pre-training checkpoint with "
                             "output adapters (e.g. the released "
                             "multimae-b_98_rgb+-depth-semseg_1600e_multivit-afff3f8c.pth)")
        self.model, self.variables = model, variables
        tasks = list(model.input_adapters) + [t for t in model.output_adapters
                                              if t not in model.input_adapters]
        self.modalities = resolve(modalities if modalities is not None else tasks)
        adapter = next(iter(model.input_adapters.values()))
        self.image_size = pair(adapter.image_size)
        patch = pair(adapter.patch_size_full)
        self.grid = (self.image_size[0] // patch[0], self.image_size[1] // patch[1])
        self._apply = jax.jit(self._forward, static_argnames=("num_encoded_tokens", "alphas"))

    @classmethod
    def load(cls, path, modalities=None, **model_overrides) -> "Predictor":
        """From any checkpoint `load_pretrained` reads (official .pth, export, our folder or
        workdir), or an http(s) URL of a file (downloaded once, `fetch`); another architecture
        (a MultiViT, a timm ViT) is refused naming the file."""
        model, variables = load_pretrained(fetch(path), **model_overrides)
        return cls(model, variables, modalities, where=str(path))

    @property
    def input_tasks(self) -> tuple[str, ...]:
        return tuple(self.model.input_adapters)

    def _forward(self, variables, inputs, masks, key, num_encoded_tokens, alphas):
        if masks is None:
            return self.model.apply(variables, inputs, rngs={"masking": key},
                                    num_encoded_tokens=num_encoded_tokens, alphas=alphas)
        return self.model.apply(variables, inputs, masks, num_encoded_tokens=num_encoded_tokens)

    def predict(self, inputs: dict, masks: dict | None = None, *, num_encoded_tokens: int = 98,
                alphas=1.0, seed: int = 0):
        """Reconstruct every output task from the visible patches of `inputs` ({task: (B,
        ...)}, e.g. from `prepare_inputs`; input tasks left out are not given to the encoder).

        masks: None draws random masks: a Dirichlet(`alphas`) split of `num_encoded_tokens`
          visible tokens per sample, from `seed`. Else {task: (B, N_t)} 1 = masked for every
          task in `inputs` (e.g. `masks_from_grid`); every sample must keep the same number
          of visible tokens.
        Returns numpy (preds {task: (B, H, W, C)}, semseg logits at 1/4; masks {task: (B, N_t)}).
        """
        unknown = sorted(set(inputs) - set(self.input_tasks))
        if unknown:
            raise ValueError(f"inputs {unknown} are not input tasks of this model "
                             f"{list(self.input_tasks)}")
        if masks is not None:
            missing = sorted(set(inputs) - set(masks))
            if missing:
                raise ValueError(f"masks: no mask for input task(s) {missing}")
            masks = {t: np.asarray(masks[t], np.int32) for t in inputs}
            num_encoded_tokens = masking.count_visible(np.concatenate(list(masks.values()), 1))
        alphas = tuple(alphas) if isinstance(alphas, (list, tuple)) else float(alphas)
        inputs = {t: jnp.asarray(x) for t, x in inputs.items()}
        preds, out_masks = self._apply(self.variables, inputs, masks, jax.random.key(seed),
                                       num_encoded_tokens=num_encoded_tokens, alphas=alphas)
        return jax.tree.map(np.asarray, (preds, out_masks))
