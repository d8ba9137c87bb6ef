"""The building blocks of MAE's linear probing (facebookresearch/mae), run with the MAE code:
writes tests/fixtures/official/linprobe.npz + .json.

    git -C MAE_MIRROR archive HEAD util | tar -x -C /tmp/mae
    /work/torchenv/bin/python tests/official/linprobe_cases.py --mae /tmp/mae \\
        --commit "$(git -C MAE_MIRROR rev-parse HEAD)"

(--commit may be left out when --mae is a git checkout.) Loads `util/lars.py` (imports only torch),
`util/lr_sched.py` (only math) and `util/crop.py` (its torchvision imports stubbed: get_params
reads only the image size) by file path; the BatchNorm is torch's own BatchNorm1d as
`main_linprobe.py` builds it. Runs on the CPU, single-threaded, seeds fixed: a rerun rewrites the
same bytes. The MAE checkout is never edited.

lars: `LARS(params, lr=0, weight_decay=wd)` (defaults momentum 0.9, trust_coefficient 1e-3), one
param group, 4 steps with the lr set before each by `adjust_learning_rate` at the fractional
epoch data_iter_step / steps_per_epoch, as `engine_finetune.train_one_epoch` does.
batchnorm: `BatchNorm1d(D, affine=False, eps=1e-6)` in train mode on 3 batches (sizes differ,
so the unbiased running variance is visible), then eval mode.
lr_sched: `adjust_learning_rate` over every iteration of two runs.
crop: `RandomResizedCrop.get_params(img, (0.08, 1), (3/4, 4/3))` under CROP_SEEDS on images of
CROP_SIZES, with the two uniform draws it made (re-drawn from the same seed).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import re
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Fixture, trim_mantissa  # noqa: E402
from make_fixtures import DEFAULT_OUT, write  # noqa: E402

MAE_REPO = "facebookresearch/mae"
FILES = ("util/lars.py", "util/lr_sched.py", "util/crop.py")

# LARS: params (shape) and the cases (weight decay). 'zero' has ||p|| = 0 and 'nograd' a zero
# gradient (||g|| = 0 when wd = 0): the trust ratio falls back to 1.
LARS_SHAPES = {"weight": (3, 4), "bias": (4,), "kernel3d": (2, 2, 3), "zero": (2, 3),
               "nograd": (3, 2)}
LARS_WEIGHT_DECAYS = {"wd0.05": 0.05, "wd0": 0.0}
# adjust_learning_rate args of the LARS steps: iterations 0..3 of 2 per epoch give
# lr 0, 5, 10, 8.54 (warm-up from 0, then the cosine).
LARS_SCHEDULE = dict(lr=10.0, min_lr=0.0, warmup_epochs=1, epochs=3, steps_per_epoch=2)
LARS_STEPS = 4

BN_DIM = 5
BN_BATCHES = (4, 6, 3)
BN_EVAL_BATCH = 4

LR_CASES = {
    "lr0.1_w10_e90": dict(lr=0.1, min_lr=0.0, warmup_epochs=10, epochs=90, steps_per_epoch=4),
    "lr1_min1e-3_w2_e5": dict(lr=1.0, min_lr=1e-3, warmup_epochs=2, epochs=5, steps_per_epoch=7),
}


# crop: (H, W) of the images (wide and tall ones make the clamp to the image happen), seeds each
CROP_SIZES = ((224, 224), (375, 500), (500, 333), (40, 400), (400, 40))
CROP_SEEDS = range(8)
CROP_SCALE, CROP_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def load_file(mae: Path, relative: str):
    spec = importlib.util.spec_from_file_location(relative.replace("/", ".")[:-3], mae / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sched_args(c: dict) -> SimpleNamespace:
    return SimpleNamespace(lr=c["lr"], min_lr=c["min_lr"], warmup_epochs=c["warmup_epochs"],
                           epochs=c["epochs"])


def lars_case(lars_mod, lr_sched, rng: np.random.Generator, arrays: dict) -> dict:
    init = {}
    for name, shape in LARS_SHAPES.items():
        init[name] = (np.zeros(shape, np.float32) if name == "zero"
                      else trim_mantissa(rng.standard_normal(shape).astype(np.float32)))
        arrays[f"lars/init/{name}"] = init[name]
    grads = []
    for step in range(LARS_STEPS):
        g = {}
        for name, shape in LARS_SHAPES.items():
            g[name] = (np.zeros(shape, np.float32) if name == "nograd"
                       else trim_mantissa(0.1 * rng.standard_normal(shape).astype(np.float32)))
            arrays[f"lars/grad/{step}/{name}"] = g[name]
        grads.append(g)
    c = LARS_SCHEDULE
    lrs = []
    for case, wd in LARS_WEIGHT_DECAYS.items():
        params = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in init.items()}
        optimizer = lars_mod.LARS(list(params.values()), lr=0, weight_decay=wd)
        lrs = []
        for step in range(LARS_STEPS):
            # engine_finetune.train_one_epoch: adjust_learning_rate(optimizer,
            # data_iter_step / len(data_loader) + epoch, args) before the step
            lrs.append(lr_sched.adjust_learning_rate(
                optimizer, step / c["steps_per_epoch"], sched_args(c)))
            for name, p in params.items():
                p.grad = torch.from_numpy(grads[step][name].copy())
            optimizer.step()
            for name, p in params.items():
                arrays[f"lars/{case}/{step}/{name}"] = p.detach().numpy().copy()
    arrays["lars/lr"] = np.asarray(lrs, np.float64)
    return {"shapes": {k: list(v) for k, v in LARS_SHAPES.items()},
            "weight_decay": LARS_WEIGHT_DECAYS, "schedule": LARS_SCHEDULE, "steps": LARS_STEPS,
            "momentum": 0.9, "trust_coefficient": 0.001}


def batchnorm_case(rng: np.random.Generator, arrays: dict) -> dict:
    bn = torch.nn.BatchNorm1d(BN_DIM, affine=False, eps=1e-6)
    # per-feature offsets and scales; the last feature's variance (1e-6) is of the order of eps
    # (no offset there: float32 x - mean would lose most of its digits)
    loc = np.array([2.0, -1.0, 0.0, 0.5, 0.0], np.float32)
    scale = np.array([3.0, 0.5, 1.0, 2.0, 1e-3], np.float32)

    def batch(n):
        return trim_mantissa(loc + scale * rng.standard_normal((n, BN_DIM)).astype(np.float32))
    bn.train()
    for i, n in enumerate(BN_BATCHES):
        x = batch(n)
        with torch.no_grad():
            y = bn(torch.from_numpy(x))
        arrays[f"bn/train/{i}/x"] = x
        arrays[f"bn/train/{i}/y"] = y.numpy()
        arrays[f"bn/train/{i}/running_mean"] = bn.running_mean.numpy().copy()
        arrays[f"bn/train/{i}/running_var"] = bn.running_var.numpy().copy()
    bn.eval()
    x = batch(BN_EVAL_BATCH)
    with torch.no_grad():
        arrays["bn/eval/x"] = x
        arrays["bn/eval/y"] = bn(torch.from_numpy(x)).numpy()
    return {"dim": BN_DIM, "train_batches": list(BN_BATCHES), "eval_batch": BN_EVAL_BATCH,
            "module": "torch.nn.BatchNorm1d(5, affine=False, eps=1e-6) (momentum 0.1)"}


def lr_sched_case(lr_sched, arrays: dict) -> dict:
    optimizer = SimpleNamespace(param_groups=[{}])
    for name, c in LR_CASES.items():
        spe = c["steps_per_epoch"]
        epochs = np.array([it / spe + epoch for epoch in range(c["epochs"]) for it in range(spe)])
        arrays[f"lr_sched/{name}/epoch"] = epochs
        arrays[f"lr_sched/{name}/lr"] = np.array(
            [lr_sched.adjust_learning_rate(optimizer, float(e), sched_args(c)) for e in epochs])
    return LR_CASES


def stub_torchvision() -> None:
    """util/crop.py subclasses torchvision's RandomResizedCrop and reads the image size through
    torchvision.transforms.functional._get_image_size; get_params needs nothing else."""
    functional = types.ModuleType("torchvision.transforms.functional")
    functional._get_image_size = lambda img: list(img.size)  # PIL: (width, height)
    transforms = types.ModuleType("torchvision.transforms")
    transforms.RandomResizedCrop = type("RandomResizedCrop", (), {})
    transforms.functional = functional
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = transforms
    sys.modules.update({"torchvision": torchvision, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional})


def crop_case(crop, arrays: dict) -> dict:
    rows = []
    for height, width in CROP_SIZES:
        image = SimpleNamespace(size=(width, height))
        for seed in CROP_SEEDS:
            torch.manual_seed(seed)
            i, j, h, w = crop.RandomResizedCrop.get_params(image, CROP_SCALE, CROP_RATIO)
            torch.manual_seed(seed)  # the same two draws again, as get_params makes them
            area_fraction = torch.empty(1).uniform_(*CROP_SCALE).item()
            log_ratio = torch.log(torch.tensor(CROP_RATIO))
            log_aspect = torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item()
            rows.append((height, width, area_fraction, log_aspect, i, j, h, w))
    table = np.array(rows, np.float64)
    arrays["crop/size"] = table[:, :2].astype(np.int64)
    arrays["crop/area_fraction"] = table[:, 2]
    arrays["crop/log_aspect"] = table[:, 3]
    arrays["crop/ijhw"] = table[:, 4:].astype(np.int64)
    return {"scale": CROP_SCALE, "ratio": CROP_RATIO, "sizes": CROP_SIZES,
            "seeds": list(CROP_SEEDS)}


def source_commit(mae: Path, commit: str | None) -> str:
    def git(*argv):
        return subprocess.run(["git", "-C", str(mae), *argv], check=True, capture_output=True,
                              text=True).stdout.strip()
    try:  # only a checkout whose top level is --mae itself (not a folder inside another repo)
        head = git("rev-parse", "HEAD") if Path(git("rev-parse", "--show-toplevel")).resolve() \
            == mae.resolve() else None
    except (subprocess.CalledProcessError, FileNotFoundError):
        head = None
    if commit is not None and not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise SystemExit(f"--commit {commit}: give the full 40-digit commit id")
    if commit is None and head is None:
        raise SystemExit(f"{mae} is not a git checkout: pass --commit (the MAE commit it holds)")
    if commit is not None and head is not None and head != commit:
        raise SystemExit(f"--commit {commit} but {mae} is at {head}")
    return commit or head


def linprobe(mae: Path, commit: str) -> Fixture:
    torch.manual_seed(0)
    stub_torchvision()
    lars_mod, lr_sched, crop = (load_file(mae, f) for f in FILES)
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    meta = {
        "what": (
            "MAE linear-probing parts, float32 unless said. lars/init/<p>, lars/grad/<step>/<p>: "
            "initial params and each step's gradients; lars/<case>/<step>/<p>: the params after "
            "util/lars.py LARS.step() number <step> (0-based) with weight decay "
            "weight_decay[<case>]; lars/lr (float64): the lr of each step, set by "
            "adjust_learning_rate(optimizer, step / steps_per_epoch, schedule). "
            "bn/train/<i>/{x,y,running_mean,running_var}: BatchNorm1d in train mode on batch i "
            "(sizes train_batches), output and the running statistics after it; bn/eval/{x,y}: "
            "eval mode after the 3 batches. lr_sched/<case>/{epoch,lr} (float64): "
            "util/lr_sched.py adjust_learning_rate(optimizer, epoch, args) at epoch = "
            "it / steps_per_epoch + e for every iteration of the run. crop/size (H, W), "
            "crop/area_fraction, crop/log_aspect (its two uniform draws, float32 values), "
            "crop/ijhw: util/crop.py RandomResizedCrop.get_params per case."),
        "source": {"repo": f"https://github.com/{MAE_REPO}", "commit": commit,
                   "files": {f: hashlib.sha256((mae / f).read_bytes()).hexdigest() for f in FILES},
                   "also": "main_linprobe.py (head), engine_finetune.py (per-iteration lr)"},
        "torch": torch.__version__,
        "lars": lars_case(lars_mod, lr_sched, rng, arrays),
        "batchnorm": batchnorm_case(rng, arrays),
        "lr_sched": lr_sched_case(lr_sched, arrays),
        "crop": crop_case(crop, arrays),
    }
    return Fixture("linprobe", arrays, meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mae", type=Path, required=True,
                        help="a facebookresearch/mae checkout (or its util/ folder extracted)")
    parser.add_argument("--commit", help="the MAE commit of --mae (read from git if a checkout)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    fixture = linprobe(args.mae, source_commit(args.mae, args.commit))
    args.out.mkdir(parents=True, exist_ok=True)
    write(fixture, args.out)
    sizes = {s: (args.out / f"linprobe.{s}").stat().st_size for s in ("npz", "json")}
    print(f"wrote {args.out}/linprobe.npz ({sizes['npz']} B) and .json ({sizes['json']} B)")


if __name__ == "__main__":
    main()
