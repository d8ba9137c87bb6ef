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
# # Fine-tuning demo: semantic segmentation in a few CPU minutes
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/multimae-jax/multimae-jax/blob/main/notebooks/finetune_demo.ipynb)
#
# Fine-tunes a small MultiViT with the official ConvNeXt segmentation head on the package's
# synthetic scenes (`configs/finetune_semseg.py:nyu_rgb_tiny`: the NYUv2 recipe shrunk to a
# 4-block encoder at 64 px; about 3 minutes on a 2-core CPU), then evaluates the saved Orbax
# checkpoint with the evaluation API and shows its predictions. The same code runs the full
# recipes on GPUs and TPUs: change the config, the data path and `INIT`.

# %% tags=["parameters"]
# Parameters (the tests shorten the run).
CONFIG = "nyu_rgb_tiny"  # a variant of configs/finetune_semseg.py (nyu_depth_tiny, ...)
INIT = ""  # a pre-trained checkpoint or workdir (e.g. of configs/pretrain.py:tiny); "" = scratch
EPOCHS = 8
TRAIN_SCENES = 640
WORKDIR = "workdir/finetune_demo"
REPO = "https://github.com/multimae-jax/multimae-jax"

# %% [markdown]
# ## 1. Install
# On Colab this clones the repository (its `configs/` hold the recipes) and installs it.

# %%
import importlib.util
import subprocess
import sys
from pathlib import Path

if importlib.util.find_spec("multimae_jax") is None:
    subprocess.run(["git", "clone", "-q", "--depth", "1", REPO, "multimae-jax"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "multimae-jax"],
                   check=True)
    sys.path.insert(0, "multimae-jax")  # an editable install is seen only after a restart
# configs/ lives in the repository beside the package (an editable install or the clone)
ROOT = Path(importlib.util.find_spec("multimae_jax").origin).resolve().parents[1]
if not (ROOT / "configs" / "finetune_semseg.py").is_file():
    raise FileNotFoundError(f"{ROOT / 'configs'}: the recipes come with the repository; "
                            "clone it and install it with pip install -e")
sys.path.insert(0, str(ROOT))

# %%
import jax
from IPython.display import display
from PIL import Image

from configs import finetune_semseg
from multimae_jax.evaluate import evaluate
from multimae_jax.train.loop import train

print("JAX devices:", jax.devices())

# %% [markdown]
# ## 2. The recipe
# A config is an `ml_collections.ConfigDict`: every field the command line sets with
# `--config.a.b=v` is set here directly.

# %%
config = finetune_semseg.get_config(CONFIG)
config.train.epochs = EPOCHS
config.data.synthetic_samples = TRAIN_SCENES
config.init = INIT
print(f"model: {config.model.size} at {config.model.image_size} px, inputs "
      f"{config.model.input_tasks}, head {config.head.type}; {config.target.num_classes} "
      f"classes; batch {config.data.global_batch_size}, {EPOCHS} epochs, lr {config.optimizer.lr}")

# %% [markdown]
# ## 3. Fine-tune
# Progress bar, losses and a validation table every epoch; checkpoints (Orbax) go to
# `WORKDIR/checkpoints/<step>/`, the best one by mIoU to `WORKDIR/best_val/`, pictures to
# `WORKDIR/pictures/`. Running the cell again resumes from the last checkpoint.

# %%
summary = train(config, WORKDIR)

# %% [markdown]
# ## 4. Evaluate the saved checkpoint
# `evaluate` rebuilds the model from the config, reads the Orbax checkpoint, runs the
# validation set and writes `metrics.json` and a picture: input | prediction | ground truth.

# %%
best = Path(WORKDIR) / "best_val"
results = evaluate(config, best if best.exists() else WORKDIR, Path(WORKDIR) / "evaluation")
print({name: {k: round(float(v), 4) for k, v in metrics.items()}
       for name, metrics in results.items()})

# %% [markdown]
# ## 5. Predictions

# %%
for picture in sorted((Path(WORKDIR) / "evaluation").glob("*.png")):
    print(picture.name)
    display(Image.open(picture))
