"""The notebooks run headless (nbclient) with their parameters swapped for offline ones: a small
local checkpoint instead of the released weights, the bundled synthetic sample instead of an
image URL, fixed budgets instead of the slider (nbclient waits out its timeout after an
ipywidgets output), a shortened fine-tuning run. Their .py (jupytext) twins hold the same cells, and
the committed .ipynb files carry no outputs."""
import ast
import json
from pathlib import Path

import jax
import jupytext
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

import multimae_jax as mm
from multimae_jax.models import spec

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("multimae_demo", "finetune_demo")


def execute(name: str, parameters: dict, cwd: Path) -> nbformat.NotebookNode:
    """Runs notebooks/<name>.ipynb in `cwd` with a cell setting `parameters` inserted after its
    'parameters' cell (papermill's convention); a failing cell raises CellExecutionError."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(source))
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def _outputs(nb, kind: str) -> list:
    return [o for c in nb.cells for o in c.get("outputs", []) if kind in o.get("data", {})]


def _text(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_are_stripped_and_match_their_py_twins(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    twin = jupytext.read(NOTEBOOKS / f"{name}.py")
    assert [(c.cell_type, c.source) for c in nb.cells] == \
        [(c.cell_type, c.source) for c in twin.cells]
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "colab.research.google.com/github/" in nb.cells[0].source  # the badge


def test_multimae_demo_runs_offline_and_draws_its_figures(tmp_path):
    model = mm.pretrain_multimae("tiny", depth=1, dim_tokens=64, num_heads=2, decoder_dim=32,
                                 decoder_depth=1, decoder_num_heads=2)
    variables = jax.jit(lambda: model.init(jax.random.key(0), spec.example_inputs(model),
                                           mask_inputs=False))()
    mm.save_checkpoint(model, variables, tmp_path / "weights")
    nb = execute("multimae_demo", {"WEIGHTS": str(tmp_path / "weights"), "IMAGE": "",
                                   "LABELLER": "sample", "FIGURES": str(tmp_path / "figures"),
                                   "SLIDER": False},
                 tmp_path)
    figures = {p.stem: np.asarray(Image.open(p)) for p in (tmp_path / "figures").glob("*.png")}
    expected = {"pseudo_labels", "random_alpha_0.2", "random_alpha_1.0", "random_alpha_5.0",
                "rgb_only", "hand_drawn", "budget_24", "budget_98", "budget_294"}
    assert expected <= set(figures)
    assert len(_outputs(nb, "image/png")) >= len(expected)
    for name in expected - {"pseudo_labels"}:  # the 3 x 3 grid of 224-pixel panels
        assert figures[name].shape[0] >= 3 * 224 and figures[name].shape[1] >= 3 * 224
    # every random draw keeps the budget of 98 visible patches
    for line in _text(nb).splitlines():
        if line.startswith("alpha"):
            assert sum(ast.literal_eval(line[line.index("{"):]).values()) == 98


def test_finetune_demo_trains_evaluates_the_checkpoint_and_shows_predictions(tmp_path):
    nb = execute("finetune_demo", {"EPOCHS": 1, "TRAIN_SCENES": 32, "WORKDIR": "run"},
                 tmp_path)
    metrics = json.loads((tmp_path / "run" / "evaluation" / "metrics.json").read_text())
    assert 0.0 <= metrics["val"]["mean_iou"] <= 100.0 and metrics["step"] == 2  # 32 / 16
    assert (tmp_path / "run" / "evaluation" / "val.png").is_file()
    assert len(_outputs(nb, "image/png")) >= 1
    assert "mean_iou" in _text(nb)
