"""Import the official MultiMAE modules from a checkout, without their training-only dependencies.

The official `utils/__init__.py` imports the whole training stack (torchvision, the data pipelines,
wandb, ...), none of which the fixtures need. So `utils` is registered here as a bare package that
points at the checkout's `utils/` folder: `import utils.registry` then loads that one file. The few
names that are missing under a plain `torch numpy einops` environment get stand-ins, here and never
in the checkout:

- `torch._six` (removed in torch 2.0): `utils/native_scaler.py` imports only `inf` from it.
- `yaml`: `run_pretraining_multimae.get_args` needs it only to read a `--config` file; none is given.
- `utils.datasets`: the pre-training data pipeline (torchvision); `get_model` never calls it.
- `utils.dataset_regression`, `utils.datasets_semseg`, `utils.taskonomy`, `utils.log_images`: the
  fine-tuning data pipelines and wandb pictures (albumentations, cv2, wandb), imported by the
  `run_finetuning_*.py` scripts; the metric and loss functions taken from them never call these.
- `numpy.float` (removed in numpy 1.24): `utils/semseg_metrics.py` allocates its float64 totals
  with it; the alias is the builtin `float`, as in the numpy of its time.
- `torchvision._meta_registrations`: fake kernels for torchvision's detection ops, which fail to
  register when its compiled extension does not load (the PyPI wheel links CUDA torch); the data
  transforms never call those ops.

The real data transforms (albumentations 1.1.0, torchvision) are loaded as well, under names of
their own (`semseg_data`, `regression_data`, `taskonomy_transforms`), beside the stubs above.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types
from pathlib import Path

import numpy


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
    _module("torchvision._meta_registrations")
    utils = _module("utils", __path__=[str(checkout / "utils")])
    _module("utils.datasets",
            build_multimae_pretraining_dataset=_missing("build_multimae_pretraining_dataset"))
    for name, attrs in (("dataset_regression", ("build_regression_dataset", "nyu_transform")),
                        ("datasets_semseg", ("build_semseg_dataset", "simple_transform")),
                        ("taskonomy", ("TaskonomyDataset",)),
                        ("log_images", ("log_semseg_wandb", "log_taskonomy_wandb"))):
        _module(f"utils.{name}", **{a: _missing(a) for a in attrs})
    numpy.float = float
    sub = {name: importlib.import_module(f"utils.{name}") for name in (
        "registry", "model_builder", "native_scaler", "task_balancing", "pos_embed",
        "data_constants", "optim_factory", "semseg_metrics", "dist", "logger")}
    # The names run_pretraining_multimae.py takes from the package itself.
    utils.create_model = sub["model_builder"].create_model
    utils.NativeScalerWithGradNormCount = sub["native_scaler"].NativeScalerWithGradNormCount
    utils.cosine_scheduler = sub["native_scaler"].cosine_scheduler
    # ... and the fine-tuning scripts.
    utils.SEG_IGNORE_INDEX = sub["data_constants"].SEG_IGNORE_INDEX
    utils.get_world_size = sub["dist"].get_world_size
    utils.is_main_process = sub["dist"].is_main_process

    # utils/__init__.py star-imports the constants; the data modules take them from the package.
    vars(utils).update({k: v for k, v in vars(sub["data_constants"]).items() if k.isupper()})
    data = {name: _from_file(f"utils.{name}_code", checkout / "utils" / f"{name}.py")
            for name in ("datasets_semseg", "dataset_regression")}
    _module("taskonomy_code", __path__=[str(checkout / "utils" / "taskonomy")])

    multimae = importlib.import_module("multimae")
    return types.SimpleNamespace(
        semseg_data=data["datasets_semseg"],
        regression_data=data["dataset_regression"],
        taskonomy_transforms=importlib.import_module("taskonomy_code.transforms"),
        checkout=checkout,
        multimae=multimae,
        multimae_module=importlib.import_module("multimae.multimae"),
        multimae_utils=importlib.import_module("multimae.multimae_utils"),
        output_adapter_utils=importlib.import_module("multimae.output_adapter_utils"),
        run_pretraining=_from_file("run_pretraining_multimae",
                                   checkout / "run_pretraining_multimae.py"),
        multimae2vit=_from_file("multimae2vit_converter",
                                checkout / "tools" / "multimae2vit_converter.py"),
        **{f"finetuning_{task}": _from_file(f"run_finetuning_{task}",
                                            checkout / f"run_finetuning_{task}.py")
           for task in ("semseg", "depth", "taskonomy")},
        **sub,
    )
