"""Import the official MultiMAE modules from a checkout, without their training-only dependencies.

The official `utils/__init__.py` imports the whole training stack (torchvision, the data pipelines,
wandb, ...), none of which the fixtures need. So `utils` is registered here as a bare package that
points at the checkout's `utils/` folder: `import utils.registry` then loads that one file. The few
names that are missing under a plain `torch numpy einops` environment get stand-ins, here and never
in the checkout:

- `torch._six` (removed in torch 2.0): `utils/native_scaler.py` imports only `inf` from it.
- `yaml`: `run_pretraining_multimae.get_args` needs it only to read a `--config` file; none is given.
- `utils.datasets`: the pre-training data pipeline (torchvision); `get_model` never calls it.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types
from pathlib import Path


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def _from_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _missing(what: str):
    def fail(*args, **kwargs):
        raise RuntimeError(f"{what} is stubbed out by tests/official/official_code.py")
    return fail


def load(checkout: Path) -> types.SimpleNamespace:
    """The official modules of the MultiMAE checkout at `checkout`, as one namespace."""
    checkout = Path(checkout).resolve()
    if not (checkout / "multimae" / "multimae.py").is_file():
        raise SystemExit(f"--official {checkout}: not a MultiMAE checkout (no multimae/multimae.py)")
    if "utils" in sys.modules or "multimae" in sys.modules:
        raise RuntimeError("official modules must be loaded once, before any other 'utils'/'multimae'")
    sys.path.insert(0, str(checkout))

    _module("torch._six", inf=math.inf)
    _module("yaml", safe_load=_missing("yaml.safe_load"))
    utils = _module("utils", __path__=[str(checkout / "utils")])
    _module("utils.datasets",
            build_multimae_pretraining_dataset=_missing("build_multimae_pretraining_dataset"))
    sub = {name: importlib.import_module(f"utils.{name}") for name in (
        "registry", "model_builder", "native_scaler", "task_balancing", "pos_embed",
        "data_constants", "optim_factory")}
    # The names run_pretraining_multimae.py takes from the package itself.
    utils.create_model = sub["model_builder"].create_model
    utils.NativeScalerWithGradNormCount = sub["native_scaler"].NativeScalerWithGradNormCount
    utils.cosine_scheduler = sub["native_scaler"].cosine_scheduler

    multimae = importlib.import_module("multimae")
    return types.SimpleNamespace(
        checkout=checkout,
        multimae=multimae,
        multimae_module=importlib.import_module("multimae.multimae"),
        multimae_utils=importlib.import_module("multimae.multimae_utils"),
        output_adapter_utils=importlib.import_module("multimae.output_adapter_utils"),
        run_pretraining=_from_file("run_pretraining_multimae",
                                   checkout / "run_pretraining_multimae.py"),
        multimae2vit=_from_file("multimae2vit_converter",
                                checkout / "tools" / "multimae2vit_converter.py"),
        **sub,
    )
