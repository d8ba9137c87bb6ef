"""python -m multimae_jax.data.benchmark --realistic [--num_samples 256] [--num_workers 2]
       [--n 640] [--max_size 256] [--canvas 384]

The host input pipeline on realistic files (`realistic.RealisticScenes`: ImageNet's sizes, rgb
JPEG q90 4:2:0, 16-bit depth PNG, 8-bit semseg PNG, photo-like entropy), per path and switch,
in SAMPLES PER CPU-SECOND (= per core: one core busy for one second is one CPU-second), three
modalities at 224 px; and each fast path's pixel differences from the official-exact path.

Method (CPU time, robust to other jobs sharing the machine): the pipeline runs as in training
(`pipeline.make_dataset`, batches of 32, endless), a few batches warm it up, then the CPU time
(user + system) consumed by this process (all its threads: grain's decoding threads, batching,
the consuming loop) and by every live descendant process (grain's worker processes, read from
/proc/<pid>/stat) is taken before and after `n` more samples; the rate is n / that CPU time.
Wall-clock throughput depends on the cores free at the time; CPU time does not (cache and
memory-bandwidth contention aside). Work a worker prefetched before the first reading or after
the last is counted in neither, and the consumer is always waiting on the workers, so the
window sees steady state. Without /proc (not Linux) only this process's time is counted.

Pixel differences (mean |delta| per modality against the official path, same samples, same
crop box): rgb in 8-bit levels, depth in 16-bit units and in standard deviations of the
sample's official depth crop (the scale the model sees after standardisation), semseg as the
percentage of labels that differ. For pre-resized shards the official box is mapped into the
stored image (a fractional box, resampled by `device_augment.crop_resize`, which equals PIL's on
integer boxes) so that only what the smaller files lose is measured; labels are brought back to
full size (nearest) and cropped by the official path.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from multimae_jax.data.device_augment import crop_resize, crop_resize_batch
from multimae_jax.data.pack import pack
from multimae_jax.data.pipeline import ProcessStream, make_dataset, make_source
from multimae_jax.data.realistic import RealisticScenes
from multimae_jax.data.records import decode_record
from multimae_jax.data.resize import resize_image
from multimae_jax.data.transforms import PretrainAugment
from multimae_jax.modalities import resolve

TASKS = RealisticScenes.MODALITIES
BATCH = 32
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) of a live process, None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def _descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        children = [c for c, p in parents.items() if p == parent]
        found += children
        todo += children
    return found


def cpu_snapshot() -> dict[int, float]:
    """{pid: CPU seconds} of this process and its live descendants (this process alone, by
    time.process_time, where /proc is missing)."""
    if not Path("/proc/self/stat").exists():
        return {os.getpid(): time.process_time()}
    pids = [os.getpid()] + _descendants(os.getpid())
    return {p: t for p in pids if (t := _proc_cpu(p)) is not None}


def cpu_between(before: dict, after: dict) -> float:
    """CPU seconds spent between two snapshots (a process born in between counts whole)."""
    return sum(t - before.get(p, 0.0) for p, t in after.items())


def measure(dataset, n: int, warmup_batches: int = 3) -> tuple[float, float]:
    """(samples per CPU-second, samples per wall-second) of `n` samples of a batched dataset
    after `warmup_batches` batches (see the module docstring)."""
    it = iter(dataset)
    for _ in range(warmup_batches):
        next(it)
    batches = max(1, n // BATCH)
    before, start = cpu_snapshot(), time.perf_counter()
    for _ in range(batches):
        next(it)
    wall, cpu = time.perf_counter() - start, cpu_between(before, cpu_snapshot())
    del it  # stops grain's workers
    return batches * BATCH / cpu, batches * BATCH / wall


# ------------------------------------------------------------------------------------------------
# Pixel differences


def _unit(mod) -> str:
    return ("% labels" if mod.kind == "labels" else "units; σ" if mod.storage == "uint16"
            else "levels")


def differences(official: list[dict], fast: list[dict], mods) -> dict[str, str]:
    """{modality: 'mean |delta|' text} between two lists of per-sample outputs in
    `PretrainAugment`'s layout, in `_unit`s (see the module docstring)."""
    out = {}
    for m in mods:
        ref = [np.asarray(o[m.name], np.float64) for o in official]
        got = [np.asarray(f[m.name], np.float64) for f in fast]
        delta = [np.abs(a - b).mean() for a, b in zip(ref, got)]
        if m.kind == "labels":
            out[m.name] = f"{100 * np.mean([(a != b).mean() for a, b in zip(ref, got)]):.2g} %"
        elif m.storage == "uint16":
            sigma = np.mean([d / max(a.std(), 1e-9) for d, a in zip(delta, ref)])
            out[m.name] = f"{np.mean(delta):.2g} ({sigma:.2g} σ)"
        else:
            out[m.name] = f"{np.mean(delta):.2g}"
    return out


def _samples(source, mods, k: int, seed: int, **switches) -> list[dict]:
    """The first k samples of the pipeline over `source`, one per batch, in the host layout
    (device augmentation finished by `crop_resize_batch` on this machine's CPU)."""
    it = iter(make_dataset(source, mods, image_size=224, local_batch_size=1, seed=seed,
                           num_epochs=1, worker_mode="thread", num_workers=2, **switches))
    finish = jax.jit(lambda b: crop_resize_batch(b, mods, 224))
    out = []
    for _ in range(k):
        batch = next(it)
        if switches.get("augment") == "device":
            batch = jax.device_get(finish(batch))
        out.append({m.name: batch[m.name][0] for m in mods})
    return out


def _pack_samples(original, small, mods, k: int, seed: int) -> list[dict]:
    """The first k samples of pre-resized shards `small` with the official box of `original`
    mapped into them (see the module docstring)."""
    augment = PretrainAugment(mods, 224)
    full_stream = ProcessStream(original, seed, 0, 1, 1, 1)
    small_stream = ProcessStream(small, seed, 0, 1, 1, 1)
    out = []
    for p in range(k):
        g, record = full_stream[p]
        full = decode_record(record, mods)
        stored = decode_record(small_stream[p][1], mods)
        height, width = full[mods[0].name].shape[:2]
        i, j, h, w, flip = box = augment.draw(height, width, np.random.default_rng((seed, g)))
        sample = {}
        for m in mods:
            x = stored[m.name]
            if m.resample != "bicubic":  # back to full size, then the official gather
                sample[m.name] = augment.apply(m, resize_image(m, x, (height, width)), *box)
                continue
            sy, sx = x.shape[0] / height, x.shape[1] / width
            scaled = np.array([[i * sy, j * sx, h * sy, w * sx, flip]], np.float32)
            canvas = x.reshape((1,) + x.shape[:2] + (-1,))
            sample[m.name] = np.asarray(crop_resize(canvas, scaled, 224, m.storage == "uint16"))[0]
        out.append(sample)
    return out


# ------------------------------------------------------------------------------------------------


def run(num_samples: int, num_workers: int, n: int, max_size: int, canvas: int,
        diff_samples: int = 64, seed: int = 0) -> None:
    """Writes the realistic files, packs them, prints the throughput and difference tables."""
    mods = tuple(resolve(TASKS).values())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        RealisticScenes(num_samples, seed).write_folder(tmp / "folder", progress=True)
        pack(tmp / "folder", tmp / "shards", TASKS, num_shards=4)
        pack(tmp / "folder", tmp / "small", TASKS, num_shards=4, max_size=max_size)
        raw16 = [m.name for m in mods if m.storage == "uint16"]  # the slowest PNGs to decode
        pack(tmp / "folder", tmp / "small_raw16", TASKS, num_shards=4, max_size=max_size,
             decoded=raw16)
        pack(tmp / "folder", tmp / "small_decoded", TASKS, num_shards=4, max_size=max_size,
             decoded=True)
        sources = {name: make_source(str(tmp / name), TASKS)
                   for name in ("folder", "shards", "small", "small_raw16", "small_decoded")}
        sizes = {name: sum(f.stat().st_size for f in (tmp / name).rglob("*") if f.is_file())
                 / num_samples / 1e3 for name in sources}
        print(f"\n{num_samples} realistic samples; KB per sample: " +
              ", ".join(f"{k} {v:.0f}" for k, v in sizes.items()))

        k = min(diff_samples, num_samples)
        official = _samples(sources["shards"], mods, k, seed)
        diffs = {
            "official": {m.name: "0 (exact)" for m in mods},
            "draft": differences(official, _samples(sources["shards"], mods, k, seed,
                                                    jpeg_draft=True), mods),
            "pack": differences(official, _pack_samples(sources["shards"], sources["small"],
                                                        mods, k, seed), mods),
            "device512": differences(official, _samples(sources["shards"], mods, k, seed,
                                                        augment="device", device_canvas=512),
                                     mods),
            f"device{canvas}": differences(official, _samples(
                sources["shards"], mods, k, seed, augment="device", device_canvas=canvas), mods),
        }
        augment = PretrainAugment(mods, 224)
        stream = ProcessStream(sources["shards"], seed, 0, 1, 1, 1)
        drafted = np.mean([augment.draft_factor(augment.draw(
            *decode_record(stream[p][1], mods)[mods[0].name].shape[:2],
            np.random.default_rng((seed, stream[p][0])))) > 1 for p in range(k)])
        print(f"jpeg_draft applies to {100 * drafted:.0f} % of these {k} samples' crops")

        w = num_workers
        s = f"pack --max_size {max_size}"
        paths = [  # (name, source, switches, differences)
            (f"official-exact, folder, {w} processes", "folder", {}, "official"),
            (f"official-exact, folder, {w} threads", "folder", {"worker_mode": "thread"},
             "official"),
            (f"official-exact, shards, {w} processes", "shards", {}, "official"),
            (f"official-exact, shards, {w} threads", "shards", {"worker_mode": "thread"},
             "official"),
            (f"jpeg_draft, shards, {w} threads", "shards",
             {"worker_mode": "thread", "jpeg_draft": True}, "draft"),
            (f"{s}, host augment, {w} threads", "small", {"worker_mode": "thread"}, "pack"),
            (f"augment=device (canvas 512), shards, {w} threads", "shards",
             {"worker_mode": "thread", "augment": "device", "device_canvas": 512},
             "device512"),
            (f"augment=device (canvas {canvas}), shards, {w} threads", "shards",
             {"worker_mode": "thread", "augment": "device", "device_canvas": canvas},
             f"device{canvas}"),
            (f"{s} + augment=device (canvas {canvas}), {w} processes", "small",
             {"augment": "device", "device_canvas": canvas}, "pack"),
            (f"{s} + augment=device (canvas {canvas}), {w} threads", "small",
             {"worker_mode": "thread", "augment": "device", "device_canvas": canvas}, "pack"),
            (f"{s} --decoded {' '.join(raw16)} + augment=device (canvas {canvas}), {w} threads",
             "small_raw16", {"worker_mode": "thread", "augment": "device",
                             "device_canvas": canvas}, "pack"),
            (f"{s} --decoded + augment=device (canvas {canvas}), {w} threads", "small_decoded",
             {"worker_mode": "thread", "augment": "device", "device_canvas": canvas}, "pack"),
        ]
        print(f"\nhost pipeline, realistic files -> 224 px, rgb+depth+semseg ({n} samples "
              "timed per path)")
        print("| path / switches | samples per core-second | wall samples/s | " +
              " | ".join(f"mean abs delta {m.name} ({_unit(m)})" for m in mods) +
              " | cores per GPU at 6,000 img/s | cores per 8-GPU node |")
        print("|---|---|---|" + "---|" * len(mods) + "---|---|")
        for name, source, switches, diff in paths:
            dataset = make_dataset(sources[source], mods, image_size=224, local_batch_size=BATCH,
                                   seed=seed, num_workers=w, **switches)
            rate, wall = measure(dataset, n)
            print(f"| {name} | {rate:.0f} | {wall:.0f} | " +
                  " | ".join(diffs[diff][m.name] for m in mods) +
                  f" | {6000 / rate:.1f} | {8 * 6000 / rate:.0f} |", flush=True)
