# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # MultiMAE demo: masked multi-modal reconstructions in JAX
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/multimae-jax/multimae-jax/blob/main/notebooks/multimae_demo.ipynb)
#
# The story of the official `MultiMAE_Demo.ipynb` (Bachmann et al., ECCV 2022), on today's
# Colab (Python 3.12, CPU, GPU or TPU runtime) and without PyTorch for the model:
# take any image, pseudo-label its depth and semantic segmentation, mask the three modalities
# at random or by hand, and see what the released MultiMAE-B reconstructs.
#
# The model is `multimae_jax`; the released PyTorch weights are read by its torch-free loader.
# Only the pseudo-labellers (DPT-Hybrid depth, Mask2Former COCO panoptic segmentation) use
# PyTorch, through Hugging Face `transformers`, both preinstalled on Colab.

# %% tags=["parameters"]
# Parameters (the tests replace them: a small local checkpoint, the offline sample, no torch).
WEIGHTS = ("https://github.com/EPFL-VILAB/MultiMAE/releases/download/pretrained-weights/"
           "multimae-b_98_rgb+-depth-semseg_1600e_multivit-afff3f8c.pth")
IMAGE = "https://i.imgur.com/AptRF3J.jpg"  # URL, file, "upload" (Colab), "" = synthetic sample
LABELLER = "hf"  # "hf": DPT + Mask2Former (transformers); "sample": the sample's own labels
DEPTH_MODEL = "Intel/dpt-hybrid-midas"  # Hugging Face ids (or local folders) of the labellers
SEMSEG_MODEL = "facebook/mask2former-swin-small-coco-panoptic"
REPO = "https://github.com/multimae-jax/multimae-jax"
FIGURES = ""  # a folder to also save the figures to as PNG
SLIDER = True  # an ipywidgets slider where widgets are installed; False: three fixed budgets

# %% [markdown]
# ## 1. Install
# On Colab this clones the repository and installs it (about a minute); where `multimae_jax`
# is already installed it does nothing.

# %%
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("multimae_jax") is None:
    subprocess.run(["git", "clone", "-q", "--depth", "1", REPO, "multimae-jax"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "multimae-jax"],
                   check=True)
    sys.path.insert(0, "multimae-jax")  # an editable install is seen only after a restart

# %%
from pathlib import Path

import jax
import numpy as np
from IPython.display import display
from PIL import Image

from multimae_jax import inference, viz
from multimae_jax.data.synthetic import SyntheticScenes

print("JAX devices:", jax.devices())


def show(figure, name):
    """Display a uint8 picture, and save it under FIGURES when set."""
    display(Image.fromarray(figure))
    if FIGURES:
        viz.save_png(figure, Path(FIGURES) / f"{name}.png")


# %% [markdown]
# ## 2. The model
# MultiMAE-B/16 with rgb, depth and semseg inputs and decoders. The first run downloads the
# released checkpoint (376 MB) into `~/.cache/multimae_jax`.

# %%
predictor = inference.Predictor.load(WEIGHTS)
SIZE = predictor.image_size[0]
print(f"inputs {predictor.input_tasks}, {SIZE} px, {predictor.grid[0]} x {predictor.grid[1]} "
      "patches per modality")

# %% [markdown]
# ## 3. An image and its pseudo-labels
# Any image URL or file works, or `IMAGE = "upload"` on Colab (grayscale and RGBA images are
# converted to RGB); it is centre-cropped to a square and resized to 224 as in the official
# demo. With `IMAGE = ""`, a scene from the package's synthetic renderer is used, with its own
# depth and segmentation (its classes are shapes, drawn with a generated palette instead of the
# COCO colours).

# %%
if IMAGE == "upload":  # Colab's file picker
    from google.colab import files
    IMAGE = next(iter(files.upload()))  # the uploaded file, saved in the working folder
if IMAGE:
    rgb = inference.center_crop_resize(IMAGE, SIZE)  # float (224, 224, 3) in [0, 1]
else:
    scene = SyntheticScenes(num_samples=1, image_size=SIZE, seed=3)[0]
    rgb = scene["rgb"].astype(np.float32) / 255

modalities = dict(predictor.modalities)
if LABELLER == "hf":  # the paper's labellers, through transformers (PyTorch)
    from multimae_jax.data.labellers_hf import HfDepthLabeller, HfSemsegLabeller
    image_uint8 = np.round(rgb * 255).astype(np.uint8)
    depth = HfDepthLabeller.from_pretrained(DEPTH_MODEL, modality=modalities["depth"])
    semseg = HfSemsegLabeller.from_pretrained(SEMSEG_MODEL, modality=modalities["semseg"])
    depth, semseg = depth([image_uint8])[0], semseg([image_uint8])[0]  # uint16, uint8 (S, S)
elif LABELLER == "sample" and not IMAGE:
    depth, semseg = scene["depth"], scene["semseg"]
    modalities["semseg"] = modalities["semseg"].replace(label_set=None)
else:
    raise ValueError(f"LABELLER={LABELLER!r}: use 'hf', or 'sample' with IMAGE = ''")

inputs = inference.prepare_inputs(modalities, rgb=rgb, depth=depth, semseg=semseg)
show(viz.modality_figure(inputs, [modalities[t] for t in ("rgb", "depth", "semseg")]),
     "pseudo_labels")

# %% [markdown]
# ## 4. Random masks
# 98 of the 588 patches stay visible; a Dirichlet(α) draw splits them between the modalities
# per image. Small α gives most of the budget to one modality, large α splits it evenly.
# Each figure: masked input | prediction with the visible patches pasted back | target.

# %%
shown = [modalities[t] for t in ("rgb", "depth", "semseg")]
for alpha in (0.2, 1.0, 5.0):
    preds, masks = predictor.predict(inputs, num_encoded_tokens=98, alphas=alpha, seed=1)
    visible = {t: int((m == 0).sum()) for t, m in masks.items()}
    print(f"alpha {alpha}: visible patches {visible}")
    show(viz.reconstruction_grid(inputs, preds, masks, shown, num_samples=1),
         f"random_alpha_{alpha}")

# %% [markdown]
# ## 5. RGB only
# Depth and semantic segmentation are predicted from 98 RGB patches alone.

# %%
preds, masks = predictor.predict({"rgb": inputs["rgb"]}, num_encoded_tokens=98, seed=1)
show(viz.reconstruction_grid(inputs, preds, masks, shown, num_samples=1), "rgb_only")

# %% [markdown]
# ## 6. Hand-drawn masks
# One 14 × 14 grid per modality, `#` masked and `.` visible: here the left half of the RGB
# image, a band of depth and the top right corner of the segmentation.

# %%
def grid(*rows):
    return np.array([[c == "#" for c in row] for row in rows], int)


n = predictor.grid[0]
half = "." * (n // 2) + "#" * (n - n // 2)
hand = inference.masks_from_grid({
    "rgb": grid(*[half] * n),
    "depth": grid(*(["#" * n] * (n // 2 - 1) + ["." * n] * 2 + ["#" * n] * (n - n // 2 - 1))),
    "semseg": grid(*(["#" * (n - 4) + "...."] * 4 + ["#" * n] * (n - 4))),
})
preds, masks = predictor.predict(inputs, hand)
show(viz.reconstruction_grid(inputs, preds, masks, shown, num_samples=1), "hand_drawn")

# %% [markdown]
# ## 7. The visible-token budget
# With widgets (Colab, Jupyter) a slider sets how many patches stay visible; each new budget
# compiles once (seconds on a GPU, up to a minute for ViT-B on a CPU), then moving back is
# instant. Without widgets (or with
# `SLIDER = False`), three budgets.

# %%
def budget(num_encoded_tokens=98):
    preds, masks = predictor.predict(inputs, num_encoded_tokens=num_encoded_tokens, seed=1)
    return viz.reconstruction_grid(inputs, preds, masks, shown, num_samples=1)


try:
    import ipywidgets
except ImportError:
    ipywidgets = None
if SLIDER and ipywidgets is not None:
    slider = ipywidgets.IntSlider(value=98, min=1, max=3 * n * n, step=1,
                                  continuous_update=False, description="visible")
    ipywidgets.interact(lambda visible: display(Image.fromarray(budget(visible))),
                        visible=slider)
else:
    for k in (24, 98, 294):
        print(f"{k} visible patches")
        show(budget(k), f"budget_{k}")
