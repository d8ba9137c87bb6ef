"""Packaging: running a model (and the inference and picture layer) needs no input pipeline or
training code; tfds is an extra."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from multimae_jax.data.tfds_source import TfdsSource

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("grain", "tensorflow", "tensorflow_datasets", "multimae_jax.train")

# A notebook that only builds, runs, saves and reloads a model.
MODEL_ONLY = """
import json, sys
import jax
import multimae_jax as mm
import multimae_jax.inference, multimae_jax.viz  # the notebooks' layer
from multimae_jax.models.spec import example_inputs

model = mm.multivit("base", ("rgb",), dim_tokens=32, depth=1, num_heads=2, image_size=32)
x = example_inputs(model, 2)
variables = jax.jit(lambda x: model.init(jax.random.key(0), x))(x)
tokens = jax.jit(model.apply)(variables, x)
mm.save_checkpoint(model, variables, "ckpt")
mm.load_pretrained("ckpt")
heavy = %r
print(json.dumps(sorted(m for m in sys.modules
                        if any(m == h or m.startswith(h + ".") for h in heavy))))
"""


def test_running_a_model_imports_no_input_pipeline_or_training_code(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    if jax.config.jax_compilation_cache_dir:  # the test session's cache (conftest.py)
        env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir
    out = subprocess.run([sys.executable, "-c", MODEL_ONLY % (HEAVY,)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.splitlines()[-1]) == []


def test_a_tfds_source_without_tensorflow_datasets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails as if missing
    with pytest.raises(ImportError, match=r"tfds:mnist:train.*pip install 'multimae-jax\[tfds\]'"):
        TfdsSource("mnist", "train", ())
