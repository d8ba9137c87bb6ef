"""The grain input pipeline: source -> per-epoch global shuffle -> this process's share ->
decode -> aligned augmentation (HOST) -> batch -> worker prefetch; then global jax.Arrays.

Device-side steps (RGB normalisation, depth standardisation) are `transforms.prepare_batch`,
called inside the jitted train step. Every random choice is a function of (seed, position in the
shuffled stream), so a run is reproducible and its iterator state can be saved and restored.
"""
import dataclasses

import grain
import jax
import numpy as np
from absl import flags

from multimae_jax.modalities import resolve
from multimae_jax.data.folder import FolderSource
from multimae_jax.data.records import decode_record
from multimae_jax.data.shards import ShardSource, is_shard_dir
from multimae_jax.data.synthetic import SyntheticScenes
from multimae_jax.data.tfds_source import TfdsSource, parse_tfds_path
from multimae_jax.data.transforms import PretrainAugment


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


@dataclasses.dataclass(frozen=True)
class _DecodeAndAugment(grain.transforms.Map):
    """Pickled into worker processes with its Modality objects (never looked up by name)."""
    augment: PretrainAugment
    seed: int
    skip_corrupt: bool

    def map(self, item):
        position, record = item
        sample = decode_record(record, self.augment.modalities, self.skip_corrupt)
        if sample is None:
            return None
        out = self.augment({t: sample[t] for t in self.augment.tasks},
                           np.random.default_rng((self.seed, position)))
        out["label"] = np.int32(sample["label"])
        return out


def make_dataset(source, modalities, *, image_size: int, local_batch_size: int, seed: int = 0,
                 process_index: int = 0, process_count: int = 1, num_workers: int = 0,
                 skip_corrupt: bool = False, num_epochs: int | None = None,
                 hflip: float = 0.5) -> grain.IterDataset:
    """Batches of HOST-augmented samples for this process: {task: (local_batch, ...), 'label'}
    for `modalities` (Modality objects or default names).

    Every epoch is a fresh permutation of the whole dataset, split between processes batch by
    batch (see `ProcessStream`); each sample's crop and flip come from (seed, its global
    position). With `skip_corrupt`, corrupt samples (see `records.decode_record`) are dropped
    (and logged) instead of stopping the run. `num_workers` > 0 decodes and augments in that
    many worker processes.
    """
    stream = ProcessStream(source, seed, process_index, process_count, local_batch_size,
                            num_epochs)
    ds = grain.MapDataset.source(stream).map(
        _DecodeAndAugment(PretrainAugment(tuple(modalities), image_size, hflip=hflip), seed,
                          skip_corrupt))
    if skip_corrupt:
        ds = ds.filter(lambda sample: sample is not None)
    it = ds.to_iter_dataset().batch(local_batch_size, drop_remainder=True)
    if num_workers > 0:
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
