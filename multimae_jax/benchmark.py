"""python -m multimae_jax.benchmark --config=configs/FILE.py[:variant] [--config.a.b=v]
       [--steps N] [--warmup W] [--nosplit] [--json PATH]

Throughput of the REAL training step of the config's objective (`Trainer.step`; pre-training:
masking, forward, the official losses, backward, AdamW update, non-finite skip; fine-tuning:
forward, the recipe's loss, backward, AdamW with layer decay) on device-resident synthetic
batches: random arrays in the layout and dtypes of the objective's data pipeline
(`objective.random_batch`; pre-training: 'rgb' uint8 (B, S, S, 3), 'depth' int32 (B, S, S, 1),
'semseg' uint8 (B, S/4, S/4)), created once on the devices with the batch sharding, so no host
input pipeline is in the loop. Prints the devices, compile time, step time (median and
mean of N steps after W warm-up steps, each waited for with block_until_ready), images/s, model
FLOPs per image, MFU and memory, and the step's time split into the encoder, the decoders, the
rest of forward + backward and the optimizer update (`benchmark_split.py`; --nosplit skips its
extra compilations). --json writes every figure to a file (launch/gpu_benchmark.sh collects them).
Lower --config.data.global_batch_size to fit memory.

FLOPs per image come from XLA's cost analysis of the compiled step (forward + backward + optimizer
update, every op of the program, plus the recomputed forward with config.train.remat), divided by
the images per program; an analytic estimate (matmul weights x the tokens they touch, plus
attention, x 3 for forward + backward) is printed next to it as a cross-check. MFU = achieved
FLOP/s per device / peak dense FLOP/s of the device kind (PEAK_FLOPS) in the compute dtype, with
either count; 'n/a' where the peak is unknown (CPUs). The analytic count covers the pre-training
MultiMAE only ('n/a' for fine-tuning). The one synthetic batch is reused every step; masks and
drop path still change (they are drawn from the step number).
"""
import json
import math
import statistics
import sys
import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from multimae_jax import atomic
from multimae_jax.benchmark_split import time_split
from multimae_jax.train import distributed, sharding
from multimae_jax.train.objectives import make_objective
from multimae_jax.train.step import Trainer
from multimae_jax.train.validate import ConfigError, validate

#: (substring of the lower-cased device_kind, peak dense bf16 FLOP/s, peak dense float32 FLOP/s)
#: per device, first match wins. float32: what float32 matmuls run at under JAX's default
#: precision: TF32 tensor cores on NVIDIA Ampere and later, one bf16 MXU pass on TPUs.
PEAK_FLOPS = (
    ("h100 pcie", 756e12, 378e12),
    ("h100", 989e12, 494.5e12),   # SXM (and NVL, nearly)
    ("h200", 989e12, 494.5e12),   # H200 / GH200: H100 compute
    ("a100", 312e12, 156e12),
    ("v5 lite", 197e12, 197e12),  # TPU v5e
    ("v5e", 197e12, 197e12),
    ("v5p", 459e12, 459e12),
    ("tpu v5", 459e12, 459e12),   # v5p reports 'TPU v5'
    ("v6 lite", 918e12, 918e12),  # TPU v6e (Trillium)
    ("v6e", 918e12, 918e12),
    ("tpu v4", 275e12, 275e12),
)


class BenchmarkError(RuntimeError):
    pass


def peak_flops(device_kind: str, compute_dtype: str):
    """Peak dense FLOP/s of one device of this kind in compute_dtype, or None if unknown."""
    kind = device_kind.lower()
    for key, bf16, fp32 in PEAK_FLOPS:
        if key in kind:
            return bf16 if compute_dtype == "bfloat16" else fp32
    return None


def synthetic_batch(objective, config, batch_sharding, seed: int = 0) -> dict:
    """A random global batch in the layout and dtypes of the objective's data pipeline
    (`objective.random_batch`), created on the devices (jit with out_shardings: no array of the
    whole batch ever exists on the host)."""
    make = lambda key: objective.random_batch(key, config.data.global_batch_size)
    return jax.jit(make, out_shardings=batch_sharding)(jax.random.key(seed))


def analytic_flops_per_image(config, params):
    """Training FLOPs per image of the MultiMAE matmuls: 2 x (each kernel's size x the tokens it
    is applied to) plus attention (QK^T and AV: 4 x queries x keys x width), all x 3 for forward
    + backward. Encoder: the visible + global tokens; input adapters: every patch; output
    adapters: `proj_context` and the cross-attention keys/values on the encoder tokens, everything
    else on the task's full token grid. Embedding lookups, norms, element-wise ops, losses and the
    optimizer are left out. None if the parameters do not have the expected structure."""
    try:
        mc = config.model
        grid = (mc.image_size // mc.patch_size) ** 2
        ctx = config.masking.num_encoded_tokens + mc.num_global_tokens
        fwd = 0
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            names = [str(getattr(p, "key", p)) for p in path]
            if names[-1] != "kernel":
                continue
            if names[0] == "encoder":
                tokens = ctx
            elif names[0] == "input_adapters":
                tokens = grid
            elif names[0] == "output_adapters":
                on_ctx = names[2] == "proj_context" or names[2:4] == ["decoder", "kv"]
                tokens = ctx if on_ctx else grid
            else:
                return None
            fwd += 2 * math.prod(leaf.shape) * tokens
        enc = params["encoder"]
        d_enc = params["global_tokens"].shape[-1]
        fwd += len(enc) * 4 * ctx * ctx * d_enc
        for adapter in params["output_adapters"].values():
            d_dec = adapter["decoder"]["q"]["kernel"].shape[-1]
            fwd += 4 * grid * ctx * d_dec  # cross-attention
            fwd += len(adapter.get("decoder_transformer", {})) * 4 * grid * grid * d_dec
        return 3.0 * fwd
    except (KeyError, TypeError, AttributeError, IndexError):
        return None


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return dict(cost or {})


def _xla_flops_per_image(config, runner, state, batch, compiled):
    """(FLOPs per image, where they come from) from XLA's cost analysis of the compiled step.

    The compiled program is the SPMD-partitioned one: its cost analysis counts the work of one
    device, i.e. of global_batch / num_devices images. XLA counts a while loop's body once, so
    with gradient accumulation (a scan over micro-batches) the step of one micro-batch
    (grad_accum_steps=1, global batch / grad_accum_steps) is compiled for the count instead."""
    accum, n = config.train.grad_accum_steps, jax.device_count()
    images = config.data.global_batch_size // n
    source = "XLA cost_analysis of the compiled step: forward + backward + AdamW update"
    if config.train.remat:
        source += " + the rematerialised forward"
    if accum > 1:
        micro = config.copy_and_resolve_references()
        micro.train.grad_accum_steps = 1
        micro.data.global_batch_size = config.data.global_batch_size // accum
        one = Trainer(make_objective(micro), micro, runner.mesh, 2, 1, 1e-4)
        spec = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
        abstract_state = jax.tree.map(spec, state, one.state_sharding)
        abstract_batch = {k: jax.ShapeDtypeStruct((x.shape[0] // accum,) + x.shape[1:], x.dtype,
                                                  sharding=one.batch_sharding)
                          for k, x in batch.items()}
        compiled = one.step.lower(abstract_state, abstract_batch).compile()
        images //= accum
        source += " of one micro-batch, compiled apart (XLA counts a loop body once)"
    flops = _cost(compiled).get("flops")
    return (flops / images if flops and flops > 0 else None), source


def _memory_analysis(compiled) -> dict | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 -- not implemented on every backend
        return None
    if m is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
              "temp_size_in_bytes", "generated_code_size_in_bytes")
    out = {f.removesuffix("_size_in_bytes"): getattr(m, f, None) for f in fields}
    if any(v is None for v in out.values()):
        return None
    # live at once: arguments + outputs not aliased to (donated) arguments + temporaries
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def _memory_stat(name: str, reduce=max):
    """`reduce` over the local devices of memory_stats()[name] (e.g. 'peak_bytes_in_use',
    'bytes_limit'), or None where the backend has no memory statistics (CPUs)."""
    values = []
    for d in jax.local_devices():
        try:
            stats = d.memory_stats()
        except Exception:  # noqa: BLE001 -- CPU backends may raise or return None
            stats = None
        if stats and name in stats:
            values.append(stats[name])
    return reduce(values) if values else None


#: config fields that change the compiled step's speed, reported with every run
SWITCHES = ("model.attention", "model.scan_blocks", "model.gather_grad", "train.remat",
            "train.compute_dtype", "train.residual_dtype", "data.augment")


def _switches(config) -> dict:
    out = {}
    for name in SWITCHES:
        node = config
        for part in name.split("."):
            node = node.get(part) if node is not None and part in node else None
        out[name] = node
    return out


def run(config, steps: int = 20, warmup: int = 3, split: bool = True) -> dict:
    """Compiles the training step of `config` and times `steps` steps after `warmup` ones on
    device-resident synthetic batches; with `split`, also the parts of the step
    (`benchmark_split.time_split`). Returns the figures (see `report`). Raises ConfigError
    for an invalid config and BenchmarkError if a step's loss or gradient is not finite."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps={steps} must be >= 1 and warmup={warmup} >= 0")
    devices = jax.devices()
    validate(config, len(devices), jax.process_count())
    mesh = sharding.make_mesh(config.mesh.to_dict())
    gb = config.data.global_batch_size
    total = warmup + steps + 1
    objective = make_objective(config)
    runner = Trainer(objective, config, mesh, total_steps=total, warmup_steps=1,
                     base_lr=objective.base_lr(config))
    params = runner.abstract_state["params"]

    state = runner.init(runner.key)
    batch = synthetic_batch(objective, config, runner.batch_sharding, config.seed)
    jax.block_until_ready((state, batch))

    start = time.perf_counter()
    compiled = runner.step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start

    times, finite = [], []
    for i in range(warmup + steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
        finite.append(metrics["finite"])
        loss = metrics["loss"]
    bad = [i for i, f in enumerate(jax.device_get(finite)) if not bool(f)]
    if bad:
        raise BenchmarkError(f"non-finite loss or gradient at step(s) {bad} (loss "
                             f"{float(jax.device_get(loss))}); the benchmark does not time "
                             "skipped updates")
    loss = float(jax.device_get(loss))
    median = statistics.median(times)
    parts = time_split(runner, state, batch, median) if split else None

    flops_per_image, flops_source = _xla_flops_per_image(config, runner, state, batch, compiled)
    mean = statistics.fmean(times)
    images_per_s = gb / median
    dev = devices[0]
    peak = peak_flops(dev.device_kind, config.train.compute_dtype)
    achieved = flops_per_image * images_per_s / len(devices) if flops_per_image else None
    analytic = analytic_flops_per_image(config, params)
    achieved_analytic = analytic * images_per_s / len(devices) if analytic else None
    return {
        "platform": dev.platform, "device_kind": dev.device_kind, "num_devices": len(devices),
        "num_processes": jax.process_count(), "mesh": dict(mesh.shape),
        "model": f"{config.model.size} /{config.model.patch_size} at {config.model.image_size}px",
        "params": runner.num_params, "compute_dtype": config.train.compute_dtype,
        "global_batch": gb, "grad_accum_steps": config.train.grad_accum_steps,
        "steps": steps, "warmup": warmup, "compile_s": compile_s,
        "step_time_median_s": median, "step_time_mean_s": mean,
        "step_time_min_s": min(times), "step_time_max_s": max(times), "step_times_s": times,
        "images_per_s": images_per_s, "images_per_s_per_device": images_per_s / len(devices),
        "flops_per_image": flops_per_image,
        "flops_source": flops_source,
        "flops_per_image_analytic": analytic,
        "achieved_flops_per_s_per_device": achieved,
        "peak_flops_per_device": peak,
        "mfu": achieved / peak if achieved and peak else None,
        "mfu_analytic": achieved_analytic / peak if achieved_analytic and peak else None,
        "peak_bytes_in_use": _memory_stat("peak_bytes_in_use"),
        "bytes_limit": _memory_stat("bytes_limit", min),
        "compiled_memory": _memory_analysis(compiled),
        "split": parts, "switches": _switches(config),
        "loss": loss,
    }


def _si(x, unit="", digits=3):
    if x is None:
        return "n/a"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.{digits}g} {prefix}{unit}"
    return f"{x:.{digits}g} {unit}".rstrip()


def _rate(x):
    return f"{x:,.1f}" if x >= 10 else f"{x:.3g}"


def _bytes(x):
    if x is None:
        return "n/a"
    return f"{x / 2 ** 30:.2f} GiB" if x >= 2 ** 30 else f"{x / 2 ** 20:.1f} MiB"


def _split_line(parts: dict | None, step: float) -> str:
    if parts is None:
        return "not measured (--nosplit)"
    ms = lambda s: "n/a" if s is None else f"{s * 1e3:.1f} ms ({100 * s / step:.0f} %)"
    return (f"encoder {ms(parts['encoder_s'])}, decoders {ms(parts['decoders_s'])}, other "
            f"forward + backward {ms(parts['other_s'])}, optimizer update {ms(parts['update_s'])}"
            " [sub-programs timed apart; multimae_jax/benchmark_split.py]")


def report(r: dict) -> str:
    """The figures of `run` as aligned 'key: value' lines."""
    ms = lambda s: f"{s * 1e3:.1f} ms"
    mem = r["compiled_memory"]
    analytic = r["flops_per_image_analytic"]
    ratio = (f" (XLA / analytic = {r['flops_per_image'] / analytic:.2f})"
             if analytic and r["flops_per_image"] else "")
    rows = [
        ("devices", f"{r['num_devices']} x {r['device_kind']} ({r['platform']}), "
                    f"{r['num_processes']} process(es), mesh {r['mesh']}"),
        ("model", f"{r['model']}, {r['params']:,} trainable parameters, {r['compute_dtype']}"),
        ("global batch", f"{r['global_batch']} ({r['global_batch'] // r['num_devices']} per device"
                         + (f", {r['grad_accum_steps']} micro-batches" if r["grad_accum_steps"] > 1
                            else "") + ")"),
        ("compile time", f"{r['compile_s']:.1f} s"),
        ("step time", f"median {ms(r['step_time_median_s'])}, mean {ms(r['step_time_mean_s'])} "
                      f"(min {ms(r['step_time_min_s'])}, max {ms(r['step_time_max_s'])}; "
                      f"{r['steps']} steps after {r['warmup']} warm-up)"),
        ("images/s", f"{_rate(r['images_per_s'])} total, "
                     f"{_rate(r['images_per_s_per_device'])} per device (at the median step time)"),
        ("FLOPs/image", f"{_si(r['flops_per_image'], 'FLOP')} [{r['flops_source']}]"),
        ("FLOPs/image analytic", f"{_si(analytic, 'FLOP')} [matmuls + attention, 3 x forward]"
                                 f"{ratio}"),
        ("achieved", f"{_si(r['achieved_flops_per_s_per_device'], 'FLOP/s')} per device"),
        ("peak", f"{_si(r['peak_flops_per_device'], 'FLOP/s')} per device "
                 f"({r['compute_dtype']} dense)" if r["peak_flops_per_device"] else
                 f"n/a (no peak known for '{r['device_kind']}')"),
        ("MFU", f"{100 * r['mfu']:.1f} % (with the analytic FLOPs: {100 * r['mfu_analytic']:.1f} %)"
                if r["mfu"] is not None and r["mfu_analytic"] is not None else
                f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a"),
        ("peak memory/device", _bytes(r["peak_bytes_in_use"])
         + ("" if r["peak_bytes_in_use"] is not None else " (no memory_stats on this backend)")),
        ("compiled memory/device", "n/a" if mem is None else
         f"{_bytes(mem['total'])} (arguments {_bytes(mem['argument'])}, outputs "
         f"{_bytes(mem['output'])}, aliased {_bytes(mem['alias'])}, temporaries "
         f"{_bytes(mem['temp'])})"),
        ("time split", _split_line(r["split"], r["step_time_median_s"])),
        ("switches", ", ".join(f"{k}={v}" for k, v in r["switches"].items() if v is not None)),
        ("final loss", f"{r['loss']:.4f}"),
    ]
    width = max(len(k) for k, _ in rows) + 2
    return "\n".join(f"{k + ':':<{width}}{v}" for k, v in rows)


_CONFIG = config_flags.DEFINE_config_file("config", None, "a configs/*.py file", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 20, "timed steps")
_WARMUP = flags.DEFINE_integer("warmup", 3, "untimed steps after compilation")
_SPLIT = flags.DEFINE_bool("split", True, "also time the encoder, the decoders and the optimizer "
                           "update apart (more compilations)")
_JSON = flags.DEFINE_string("json", None, "write every figure to this JSON file")
_BATCH_PER_DEVICE = flags.DEFINE_integer(
    "batch_per_device", 0, "> 0: set data.global_batch_size to this times the number of devices")


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    distributed.maybe_initialize()
    config = _CONFIG.value
    if _BATCH_PER_DEVICE.value > 0:
        config = config.copy_and_resolve_references()
        config.data.global_batch_size = _BATCH_PER_DEVICE.value * jax.device_count()
    try:
        result = run(config, _STEPS.value, _WARMUP.value, _SPLIT.value)
    except (ConfigError, BenchmarkError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if jax.process_index() == 0:
        print(report(result), flush=True)
        if _JSON.value:
            atomic.write_text(_JSON.value, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
