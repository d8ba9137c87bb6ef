"""Write the golden outputs of the official PyTorch MultiMAE that the tests compare against.

    python tests/official/make_fixtures.py --official /path/to/MultiMAE
    python tests/official/make_fixtures.py --official /path/to/MultiMAE --check-against OLD_DIR

Runs in a torch environment (see README.md beside this file), never under pytest. The first form
writes every fixture into tests/fixtures/official/ (or --out). The second writes nothing: it loads the
weights and inputs of an earlier fixture set, recomputes that set's outputs with the official code
and prints the largest difference per array.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import official_code  # noqa: E402
from classify_cases import cls_losses, mixup_batch  # noqa: E402
from common import Fixture  # noqa: E402
from dense_transform_cases import dense_transforms  # noqa: E402
from erasing_case import random_erasing  # noqa: E402
from finetune_metric_cases import dense_losses, finetune_metrics  # noqa: E402
from finetune_step_case import finetune_step  # noqa: E402
from multivit_cases import (  # noqa: E402
    multivit_heads_tiny, multivit_outputs, timm_tokens, tiny_multivit, vit_tiny_timm)
from npz_writer import save_npz  # noqa: E402
from param_group_cases import finetune_param_groups  # noqa: E402
from posemb_case import posemb_outputs, posemb_resize  # noqa: E402
from pretrain_cases import (  # noqa: E402
    multimae_b_pretrain_keys, pretrain_tiny, pretrain_tiny_outonly, pretraining_outputs,
    tiny_pretraining_model)
from training_cases import clip_grad, schedules, task_balancing  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "fixtures" / "official"
SIZE_LIMIT = 12_000_000  # bytes
CHECK_TOLERANCE = 1e-5


def write(fixture: Fixture, out: Path) -> None:
    if fixture.arrays:
        save_npz(out / f"{fixture.name}.npz", fixture.arrays)
    (out / f"{fixture.name}.json").write_text(json.dumps(fixture.meta, indent=1) + "\n")
    if fixture.checkpoint is not None:
        torch.save(fixture.checkpoint, out / f"{fixture.name}.pth")


def generate(off, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    heads, multivit = multivit_heads_tiny(off)
    makers = [
        lambda: pretrain_tiny(off), lambda: pretrain_tiny_outonly(off), lambda: heads,
        lambda: vit_tiny_timm(off, multivit), lambda: posemb_resize(off),
        lambda: multimae_b_pretrain_keys(off), lambda: schedules(off), lambda: task_balancing(off),
        clip_grad,
        lambda: dense_losses(off), lambda: finetune_metrics(off),
        lambda: finetune_param_groups(off), lambda: finetune_step(off),
        lambda: dense_transforms(off),
        lambda: mixup_batch(off), lambda: cls_losses(off), lambda: random_erasing(off),
    ]
    for make in makers:
        start = time.perf_counter()
        fixture = make()
        write(fixture, out)
        print(f"{fixture.name:26s} {time.perf_counter() - start:6.1f} s")
    total = sum(f.stat().st_size for f in out.parent.rglob("*") if f.is_file())
    print(f"{out.parent}: {total / 1e6:.2f} MB")
    if total > SIZE_LIMIT:
        raise SystemExit(f"fixtures exceed {SIZE_LIMIT / 1e6:.0f} MB")


# --- --check-against -----------------------------------------------------------------------------

def _shared(folder: Path, name: str):
    with np.load(folder / f"{name}.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads((folder / f"{name}.json").read_text())
    pth = folder / f"{name}.pth"
    checkpoint = torch.load(pth, map_location="cpu", weights_only=False) if pth.exists() else None
    return arrays, meta, checkpoint


def _inputs(arrays):
    return {k: v for k, v in arrays.items() if k.startswith(("input/", "mask/"))}


def _diffs(name: str, got: dict, want: dict) -> list[tuple[str, float]]:
    rows = []
    for key in sorted(set(got) & set(want)):
        a, b = np.asarray(got[key]), np.asarray(want[key])
        diff = float(np.abs(a.astype(np.float64) - b).max()) if a.shape == b.shape else float("inf")
        rows.append((f"{name}:{key}", diff))
    return rows


def check(off, folder: Path) -> list[tuple[str, float]]:
    rows = []

    arrays, meta, checkpoint = _shared(folder, "pretrain_tiny")
    domains = meta["domains"]
    model, args = tiny_pretraining_model(off, domains, domains, checkpoint["args"].num_encoded_tokens)
    model.load_state_dict(checkpoint["model"])
    got = pretraining_outputs(off, model, args, _inputs(arrays))
    rows += _diffs("pretrain_tiny", got, arrays)
    rows += _diffs("pretrain_tiny", {f"losses/{t}": got[f"loss/{t}"] for t in meta["losses"]},
                   {f"losses/{t}": v for t, v in meta["losses"].items()})

    arrays, meta, checkpoint = _shared(folder, "multivit_heads_tiny")
    model = tiny_multivit(off)
    model.load_state_dict(checkpoint["model"])
    rows += _diffs("multivit_heads_tiny", multivit_outputs(off, model, _inputs(arrays)), arrays)

    timm_arrays, _, timm_checkpoint = _shared(folder, "vit_tiny_timm")
    converted = off.multimae2vit.multimae_to_vit(checkpoint["model"])
    tensors = _diffs("vit_tiny_timm", {k: v.numpy() for k, v in converted.items()},
                     {k: v.numpy() for k, v in timm_checkpoint["model"].items()})
    same_keys = set(converted) == set(timm_checkpoint["model"])
    rows.append((f"vit_tiny_timm: multimae_to_vit of the multivit .pth = the .pth ({len(tensors)} "
                 "tensors)", max(diff for _, diff in tensors) if same_keys else float("inf")))
    rows += _diffs("vit_tiny_timm", {"encoder_tokens": timm_tokens(model, timm_arrays["input_rgb"])},
                   timm_arrays)

    arrays, _, _ = _shared(folder, "posemb_resize")
    rows += _diffs("posemb_resize", posemb_outputs(off, arrays["ac_true_in"]), arrays)

    want = json.loads((folder / "multimae_b_pretrain_keys.json").read_text())["keys"]
    got = multimae_b_pretrain_keys(off).meta["keys"]
    rows.append(("multimae_b_pretrain_keys: same keys and shapes", 0.0 if got == want else float("inf")))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True,
                        help="checkout of EPFL-VILAB/MultiMAE (commit 66910f5)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the fixtures")
    parser.add_argument("--check-against", type=Path, metavar="DIR",
                        help="recompute the outputs of the fixture set in DIR and compare; writes nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the same float reductions on every machine size
    off = official_code.load(args.official)
    start = time.perf_counter()
    if args.check_against:
        rows = check(off, args.check_against)
        for key, diff in rows:
            print(f"{diff:10.3g}  {key}")
        worst = max(diff for _, diff in rows)
        print(f"{len(rows)} arrays compared, max abs diff {worst:.3g}")
        return 0 if worst <= CHECK_TOLERANCE else 1
    generate(off, args.out)
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
