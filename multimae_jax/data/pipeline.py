"""The grain input pipeline: source -> per-epoch global shuffle -> this process's share ->
decode -> aligned augmentation (HOST) -> batch -> worker prefetch; then global jax.Arrays.

Device-side steps (RGB normalisation, depth standardisation) are `transforms.prepare_batch`,
called inside the jitted train step. Every random choice is a function of (seed, position in the
shuffled stream), so a run is reproducible and its iterator state can be saved and restored.

Fast-path switches of `make_dataset` (defaults: the official-exact path): augment='device'
(`device_augment`: the host decodes, the step crops and resizes), worker_mode='thread'
(decoding threads in this process instead of worker processes: PIL's decoders and numpy release
the GIL), jpeg_draft (JPEGs decoded at 1/2, 1/4 or 1/8 in the DCT domain when the crop shrinks
that much anyway).
"""
import dataclasses
import logging

import grain
import jax
import numpy as np
from absl import flags

from multimae_jax.modalities import resolve
from multimae_jax.data.codecs import CorruptFileError, stored_size
from multimae_jax.data.device_augment import CanvasAugment
from multimae_jax.data.folder import FolderSource
from multimae_jax.data.records import decode_record
from multimae_jax.data.shards import ShardSource, is_shard_dir
from multimae_jax.data.synthetic import SyntheticScenes
from multimae_jax.data.tfds_source import TfdsSource, parse_tfds_path
from multimae_jax.data.transforms import PretrainAugment

AUGMENTS = ("host", "device")  # data.augment
WORKER_MODES = ("process", "thread")  # data.worker_mode


class SyntheticSource:
    """SyntheticScenes as raw records (already decoded arrays), label = 0."""

    def __init__(self, scenes: SyntheticScenes):
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict:
        return {"key": f"synthetic/{index}", "label": 0, **self.scenes[index]}

    def __repr__(self) -> str:
        s = self.scenes
        return (f"SyntheticScenes({s.num_samples} samples, {s.image_size}px, "
                f"{s.num_classes} classes, seed {s.seed})")


def make_source(path: str, modalities, *, synthetic_samples: int = 10_000,
                synthetic_size: int = 224, seed: int = 0, allow_incomplete: bool = False,
                tfds_fields=None):
    """The synthetic scenes when `path` is empty, TensorFlow Datasets for 'tfds:NAME[:SPLIT]',
    packed shards when `path` holds meta.json, else the official folder layout.
    `modalities`: the Modality objects (or default names) to read; `tfds_fields`: {modality:
    TFDS feature} where the names differ."""
    mods = resolve(modalities)
    for m in mods.values():
        if not m.on_disk:
            raise ValueError(f"'{m.name}' is computed from '{m.source}', not read from disk")
    tasks = tuple(mods)
    if not path:
        unknown = set(tasks) - set(SyntheticScenes.MODALITIES)
        if unknown:
            raise ValueError(f"the synthetic scenes have {list(SyntheticScenes.MODALITIES)}, not "
                             f"{sorted(unknown)}; set data.path to a dataset that has them")
        classes = [m.num_classes for m in mods.values() if m.kind == "labels"]
        return SyntheticSource(SyntheticScenes(synthetic_samples, synthetic_size,
                                               min(classes + [8]), seed))
    if path.startswith("tfds:"):
        return TfdsSource(*parse_tfds_path(path), tuple(mods.values()), tfds_fields)
    if is_shard_dir(path):
        return ShardSource(path, tasks)
    return FolderSource(path, tasks, allow_incomplete)


class ProcessStream:
    """This process's share of the global sample stream, as a random-access source.

    Global position g walks through the dataset epoch after epoch (epoch g // n reshuffled with
    its own permutation) and is cut into global batches of G = L * process_count positions;
    process p owns positions [p * L, (p + 1) * L) of every global batch. Item j is
    (g, raw record). Samples, their order and (below) their augmentation thus depend on the seed
    and the global batch size only, never on how many processes share the work.
    """

    def __init__(self, source, seed: int, process_index: int, process_count: int,
                 local_batch: int, num_epochs: int | None):
        self.source = source
        self.order = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat(num_epochs)
        self.index, self.count, self.local = process_index, process_count, local_batch
        self.length = len(self.order) // (local_batch * process_count) * local_batch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, j: int):
        g = (j // self.local) * self.local * self.count + self.index * self.local + j % self.local
        return g, self.source[self.order[g]]


def _stored_size(record: dict, mod) -> tuple[int, int]:
    """(H, W) of a raw record's data of `mod`: an encoded image's from its header."""
    value = record[mod.name]
    if not isinstance(value, bytes):
        return value.shape[:2]
    return stored_size(mod, value, record.get("paths", {}).get(
        mod.name, f"{record['key']} ({mod.name})"))


@dataclasses.dataclass(frozen=True)
class _DecodeAndAugment(grain.transforms.Map):
    """Pickled into worker processes with its Modality objects (never looked up by name).
    augment: a `PretrainAugment` (host) or `CanvasAugment` (device augmentation)."""
    augment: PretrainAugment | CanvasAugment
    seed: int
    skip_corrupt: bool
    jpeg_draft: bool = False

    def map(self, item):
        position, record = item
        rng = np.random.default_rng((self.seed, position))
        mods = self.augment.modalities
        if not self.jpeg_draft:
            sample = decode_record(record, mods, self.skip_corrupt)
            if sample is None:
                return None
            out = self.augment({t: sample[t] for t in self.augment.tasks}, rng)
        else:
            # The box comes first, from the first task's size as the official code draws it
            # (read from the file header: no pixel decoded yet), so the same rng calls give the
            # same box as without the draft.
            try:
                size = _stored_size(record, mods[0])
            except CorruptFileError as e:
                if not self.skip_corrupt:
                    raise
                logging.warning("skipping corrupt sample: %s", e)
                return None
            box = self.augment.draw(*size, rng)
            factor = self.augment.draft_factor(box)
            draft = {m.name: factor for m in mods if m.resample == "bicubic" and factor > 1}
            sample = decode_record(record, mods, self.skip_corrupt, draft=draft)
            if sample is None:
                return None
            out = self.augment.crop(sample, box, sample.get("drafted"))
        out["label"] = np.int32(sample["label"])
        return out


def make_dataset(source, modalities, *, image_size: int, local_batch_size: int, seed: int = 0,
                 process_index: int = 0, process_count: int = 1, num_workers: int = 0,
                 skip_corrupt: bool = False, num_epochs: int | None = None,
                 hflip: float = 0.5, augment: str = "host", device_canvas: int = 384,
                 worker_mode: str = "process", jpeg_draft: bool = False) -> grain.IterDataset:
    """Batches of HOST-augmented samples for this process: {task: (local_batch, ...), 'label'}
    for `modalities` (Modality objects or default names).

    Every epoch is a fresh permutation of the whole dataset, split between processes batch by
    batch (see `ProcessStream`); each sample's crop and flip come from (seed, its global
    position). With `skip_corrupt`, corrupt samples (see `records.decode_record`) are dropped
    (and logged) instead of stopping the run.
    worker_mode 'process': `num_workers` > 0 decodes and augments in that many worker processes
    (each reading with grain's default threads), 0 in this process's grain threads; 'thread':
    in `num_workers` threads of this process (0: on the consuming thread), yielding the very
    batches of num_workers=0 in 'process' mode.
    augment 'device': the layout of `device_augment.CanvasAugment` (canvases of device_canvas
    pixels and boxes; `crop_resize_batch` finishes the augmentation on the device).
    jpeg_draft: JPEGs of bicubic modalities are decoded at 1/k in the DCT domain, k the
    largest of 2, 4, 8 that keeps the crop at least image_size pixels
    (`PretrainAugment.draft_factor`); an approximation (docs/benchmarks.md).
    """
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    if worker_mode not in WORKER_MODES:
        raise ValueError(f"worker_mode must be one of {WORKER_MODES}, got {worker_mode!r}")
    stream = ProcessStream(source, seed, process_index, process_count, local_batch_size,
                            num_epochs)
    aug = PretrainAugment(tuple(modalities), image_size, hflip=hflip)
    if augment == "device":
        aug = CanvasAugment(aug, device_canvas)
    ds = grain.MapDataset.source(stream).map(_DecodeAndAugment(aug, seed, skip_corrupt,
                                                               jpeg_draft))
    if skip_corrupt:
        ds = ds.filter(lambda sample: sample is not None)
    # grain maps a MapDataset's elements in the threads of its ReadOptions (16 by default)
    threads = grain.ReadOptions(num_threads=num_workers) if worker_mode == "thread" else None
    it = ds.to_iter_dataset(threads).batch(local_batch_size, drop_remainder=True)
    if num_workers > 0 and worker_mode == "process":
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; notebooks never parse them
            flags.FLAGS.mark_as_parsed()
        # Each worker builds whole batches from its share of the stream (moving single samples
        # between processes costs more than augmenting them), so which samples share a batch
        # depends on num_workers; every sample's augmentation does not.
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return it


def global_batch(local: dict, sharding: jax.sharding.Sharding) -> dict:
    """Process-local numpy batch -> global jax.Arrays laid out by `sharding` (batch axis first)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local.items()}
