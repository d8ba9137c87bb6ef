"""python -m multimae_jax.benchmark_matrix --config=configs/pretrain.py --out DIR
       [--batch_per_device 256] [--steps 10] [--warmup 2] [--budget_s 540] [--memory_gib G]
       [--batch_multiple 32] [--config.a.b=v ...]

The training-step benchmark (`multimae_jax.benchmark`) over the switches that decide a GPU
node's throughput, one subprocess per variant (an out-of-memory or unsupported variant fails
alone, and each starts with all device memory free), most informative first:

  baseline            batch_per_device, no remat, XLA attention, gather-transposed token
                      gathers, unrolled encoder blocks; the time split is measured here only
  largest batch       the largest batch that fits (below), no remat
  remat               baseline + train.remat
  cudnn attention     model.attention=cudnn (GPUs only)
  scatter grads       model.gather_grad=scatter (JAX's scatter-add transpose of the gathers)
  largest, remat      the largest batch that fits with remat
  scanned blocks      model.scan_blocks=True
  fsdp                mesh data=1, fsdp=all devices (several devices only)

The largest batch per device is estimated from the compiled memory of the matching run at
batch_per_device (XLA's memory analysis: the non-batch part = arguments + unaliased outputs,
the per-image part = temporaries / batch) against 92 % of the device's memory limit (or
--memory_gib), rounded down to a multiple of --batch_multiple; if that run still runs out of
memory it is retried once at 80 %. A variant is not started when less than 45 s of --budget_s
remain. Writes DIR/results.json (every figure of every variant), DIR/results.md (one table),
DIR/<variant>.json and DIR/<variant>.log (the child's output), and prints the table.

The children use a persistent compilation cache ($JAX_COMPILATION_CACHE_DIR, default
~/.cache/multimae_jax/xla), so that a rerun skips compiling; their compile times then read as
cache loads. This process never initialises a JAX backend (the children own the devices).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from multimae_jax import atomic

SAFETY = 0.92  # of the device memory limit, for the largest-batch estimate
RETRY = 0.8  # batch fraction tried again after an out-of-memory failure
MIN_START_S = 45  # a variant is not started with less budget than this left


def variants(batch_per_device: int) -> list[dict]:
    """The variants in run order: name, config overrides, batch ('max' or a number), whether to
    measure the time split, and what the variant needs ('gpu', 'multi', or the name of the run
    whose memory sizes the largest batch)."""
    b = batch_per_device
    return [
        dict(name="baseline", overrides={}, batch=b, split=True),
        dict(name="largest batch", overrides={}, batch="max", split=False, sized_by="baseline"),
        dict(name="remat", overrides={"train.remat": True}, batch=b, split=False),
        dict(name="cudnn attention", overrides={"model.attention": "cudnn"}, batch=b,
             split=False, needs="gpu"),
        dict(name="scatter grads", overrides={"model.gather_grad": "scatter"}, batch=b,
             split=False),
        dict(name="largest batch, remat", overrides={"train.remat": True}, batch="max",
             split=False, sized_by="remat"),
        dict(name="scanned blocks", overrides={"model.scan_blocks": True}, batch=b, split=False),
        dict(name="fsdp", overrides={"mesh.data": 1, "mesh.fsdp": -1}, batch=b, split=False,
             needs="multi"),
    ]


def largest_batch(reference: dict, limit_bytes: float, multiple: int) -> int:
    """Largest batch per device (a multiple of `multiple`, 0 if none) whose estimated memory
    stays under SAFETY * limit_bytes, from the compiled memory of the `reference` run."""
    mem = reference["compiled_memory"]
    per_device = reference["global_batch"] // reference["num_devices"]
    fixed = mem["argument"] + mem["output"] - mem["alias"]
    per_image = mem["temp"] / per_device
    fits = (SAFETY * limit_bytes - fixed) / per_image
    return max(0, int(fits // multiple) * multiple)


def _slug(name: str) -> str:
    return name.replace(",", "").replace(" ", "_")


def _out_of_memory(log: str) -> bool:
    return any(s in log for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory"))


def _last_error(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or line.startswith("error")]
    return (errors or lines or ["no output"])[-1][:300]


class Matrix:
    """Runs the variants as children of `python -m multimae_jax.benchmark` (module docstring)."""

    def __init__(self, args, extra: list[str]):
        self.args, self.extra = args, extra
        self.out = Path(args.out)
        self.deadline = time.monotonic() + args.budget_s
        self.results: dict[str, dict] = {}

    def child(self, variant: dict, batch: int) -> dict:
        """Runs one variant at `batch` per device; its JSON figures plus 'status'."""
        a, slug = self.args, _slug(variant["name"])
        json_path, log_path = self.out / f"{slug}.json", self.out / f"{slug}.log"
        json_path.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "multimae_jax.benchmark", f"--config={a.config}",
               f"--steps={a.steps}", f"--warmup={a.warmup}", f"--batch_per_device={batch}",
               f"--json={json_path}", "--split" if variant["split"] else "--nosplit",
               *[f"--config.{k}={v}" for k, v in variant["overrides"].items()], *self.extra]
        env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": os.environ.get(
            "JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "multimae_jax" / "xla")),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": os.environ.get(
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")}
        timeout = self.deadline - time.monotonic()
        print(f"--- {variant['name']}: batch {batch}/device ({' '.join(cmd[2:])})", flush=True)
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            log, rc = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:  # its output may be bytes even with text=True
            text = lambda x: x.decode(errors="replace") if isinstance(x, bytes) else x or ""
            log = text(e.stdout) + text(e.stderr) + "\ntimed out: the time budget ran out"
            rc = -1
        atomic.write_text(log_path, log)
        if rc == 0 and json_path.exists():
            return {**json.loads(json_path.read_text()), "status": "ok"}
        status = "out of memory" if _out_of_memory(log) else f"failed: {_last_error(log)}"
        return {"status": status, "batch_per_device": batch}

    def skip_reason(self, variant: dict) -> str | None:
        base = self.results.get("baseline", {})
        if time.monotonic() > self.deadline - MIN_START_S:
            return "not run: time budget spent"
        needs = variant.get("needs")
        if needs == "gpu" and base.get("platform") != "gpu":
            return f"not run: needs an NVIDIA GPU (platform {base.get('platform', 'unknown')})"
        if needs == "multi" and base.get("num_devices", 1) < 2:
            return "not run: needs several devices"
        return None

    def batch_of(self, variant: dict) -> tuple[int | None, str | None]:
        """(batch per device, None) or (None, why it cannot be run)."""
        if variant["batch"] != "max":
            return variant["batch"], None
        ref = self.results.get(variant["sized_by"], {})
        if ref.get("status") != "ok" or not ref.get("compiled_memory"):
            return None, f"not run: needs the compiled memory of '{variant['sized_by']}'"
        limit = (self.args.memory_gib * 2 ** 30 if self.args.memory_gib
                 else ref.get("bytes_limit"))
        if not limit:
            return None, "not run: no device memory limit known (pass --memory_gib)"
        batch = largest_batch(ref, limit, self.args.batch_multiple)
        return (batch, None) if batch else (None, "not run: not even one batch multiple fits")

    def run(self) -> list[dict]:
        rows = []
        for variant in variants(self.args.batch_per_device):
            reason = self.skip_reason(variant)
            batch, why = (None, reason) if reason else self.batch_of(variant)
            if why:
                result = {"status": why}
            else:
                result = self.child(variant, batch)
                if variant["batch"] == "max" and result["status"] == "out of memory":
                    smaller = int(batch * RETRY) // self.args.batch_multiple
                    if smaller and self.skip_reason(variant) is None:
                        result = self.child(variant, smaller * self.args.batch_multiple)
            self.results[variant["name"]] = result
            rows.append({"variant": variant["name"], "overrides": variant["overrides"], **result})
            print(f"    {result['status']}" + (f": {result['images_per_s']:,.1f} images/s"
                                               if result["status"] == "ok" else ""), flush=True)
            atomic.write_text(self.out / "results.json", json.dumps(rows, indent=1) + "\n")
        atomic.write_text(self.out / "results.md", table(rows))
        return rows


def _ms(s):
    return "" if s is None else f"{s * 1e3:.1f}"


def table(rows: list[dict]) -> str:
    """The rows as a markdown table, with a line naming the devices and model."""
    ok = [r for r in rows if r["status"] == "ok"]
    head = (f"{ok[0]['num_devices']} x {ok[0]['device_kind']}, {ok[0]['model']}, "
            f"{ok[0]['compute_dtype']}, {ok[0]['steps']} timed steps\n\n" if ok else "")
    lines = ["| variant | batch/device | images/s | images/s/device | MFU | step ms "
             "| encoder ms | decoders ms | other fwd+bwd ms | update ms | peak memory GiB "
             "| compile s | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            batch = r.get("batch_per_device", "")
            lines.append(f"| {r['variant']} | {batch} |" + "  |" * 10 + f" {r['status']} |")
            continue
        split = r.get("split") or {}
        mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else "n/a"
        peak = r.get("peak_bytes_in_use")
        lines.append(
            f"| {r['variant']} | {r['global_batch'] // r['num_devices']} | "
            f"{r['images_per_s']:,.1f} | {r['images_per_s_per_device']:,.1f} | {mfu} | "
            f"{_ms(r['step_time_median_s'])} | {_ms(split.get('encoder_s'))} | "
            f"{_ms(split.get('decoders_s'))} | {_ms(split.get('other_s'))} | "
            f"{_ms(split.get('update_s'))} | "
            f"{'n/a' if peak is None else f'{peak / 2 ** 30:.2f}'} | {r['compile_s']:.1f} | ok |")
    return head + "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m multimae_jax.benchmark_matrix",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a configs/*.py file[:variant]")
    parser.add_argument("--out", required=True, help="folder for the JSON, table and logs")
    parser.add_argument("--batch_per_device", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget_s", type=float, default=540.0,
                        help="wall-clock budget of the whole matrix")
    parser.add_argument("--memory_gib", type=float, default=None,
                        help="device memory for the largest-batch estimate (default: the "
                             "device's own limit)")
    parser.add_argument("--batch_multiple", type=int, default=32)
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if not e.startswith("--config.")]
    if unknown:
        parser.error(f"unknown arguments {unknown} (config overrides look like --config.a.b=v)")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = Matrix(args, extra).run()
    print("\n" + table(rows), end="")
    print(f"written: {Path(args.out) / 'results.json'}, {Path(args.out) / 'results.md'}")


if __name__ == "__main__":
    main()
