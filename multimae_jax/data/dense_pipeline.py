"""grain pipelines of dense fine-tuning and evaluation: source (`dense_sources`) -> this
process's share -> recipe (`dense_recipes`, HOST transforms) -> batches of local_batch rows.

Host batch layout (numpy; `pipeline.global_batch` makes global jax.Arrays of it), B = local
batch, S = the recipe's input size; which key plays which part is the recipe's (the config's):
- image inputs, e.g. 'rgb': uint8 (B, S, S, 3), not normalised (ImageNet mean/std on device);
- depth inputs (segmentation), e.g. 'depth': float32 (B, S, S, 1), standardised per sample
  (`dense_transforms.depth_input`), 0 where the validity mask is not 255;
- label targets, e.g. 'semseg': int32 (B, S, S), classes 0..C-1, 255 = ignore (padding and void);
- regression targets, e.g. NYUv2 'depth': float32 (B, S, S, 1) ((depth - mean) / std, 0 where
  invalid) or a Taskonomy task float32 (B, S, S, C), with the mask, e.g. 'mask_valid', bool
  (B, S, S, 1);
- evaluation batches only: 'valid' bool (B,), False for the padding rows.

Training (`train_dataset`) is endless: epoch after epoch a fresh seeded permutation, cut into
global batches of which each process takes its rows (`pipeline.ProcessStream`); the random
augmentation of a sample comes from (seed, its global position), so a batch depends on the
seed and the global batch size only, and the iterator's state (get_state / set_state, saved by
`train.checkpoint.save` like the pre-training one) resumes it exactly. Evaluation
(`eval_dataset`) is one pass over every sample exactly once across processes, in source order,
padded to whole global batches.
"""
from __future__ import annotations

import dataclasses

import grain
import numpy as np
from absl import flags

from multimae_jax.data.pipeline import ProcessStream


@dataclasses.dataclass(frozen=True)
class _Prepare(grain.transforms.Map):
    """(global position, sample[, valid]) -> batch row; picklable into grain workers. The rng
    of a sample is drawn from (seed, position); seed None (evaluation) passes none, so that a
    training augmentation given to an evaluation pipeline fails instead of drawing."""
    recipe: object
    seed: int | None

    def map(self, item):
        position, sample, *valid = item
        rng = None if self.seed is None else np.random.default_rng((self.seed, position))
        out = self.recipe(sample, rng)
        if valid:  # a recipe may mark a row it could not read invalid too
            out["valid"] = np.bool_(valid[0] and out.get("valid", True))
        return out


class _EvalStream:
    """This process's share of one pass over `source`, padded to whole global batches.

    Global position g < n is sample g; positions n .. (whole global batches) - 1 repeat
    sample g % n with valid False. As in training, process p owns rows [p * L, (p + 1) * L) of
    every global batch of L * process_count rows, so global batch b holds positions
    b * G .. b * G + G - 1 in order. Item j is (g, sample, valid)."""

    def __init__(self, source, process_index: int, process_count: int, local_batch: int):
        if not len(source):
            raise ValueError(f"{source!r}: no samples to evaluate")
        self.source, self.index, self.count, self.local = (source, process_index, process_count,
                                                            local_batch)
        global_batch = local_batch * process_count
        self.num_batches = -(-len(source) // global_batch)
        self.length = self.num_batches * local_batch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, j: int):
        g = (j // self.local) * self.local * self.count + self.index * self.local + j % self.local
        return g, self.source[g % len(self.source)], g < len(self.source)


def _batched(stream, recipe, seed: int | None, local_batch_size: int, drop_remainder: bool,
             num_workers: int, prefetch: int) -> grain.IterDataset:
    # Batched before the iterator: workers then take whole batches in turn, so a batch's rows
    # do not depend on num_workers. grain's default read-ahead (500 elements, here batches)
    # would hold hundreds of batches in memory: `prefetch` batches are made ahead, each by
    # its own thread.
    ds = grain.MapDataset.source(stream).map(_Prepare(recipe, seed))
    it = ds.batch(local_batch_size, drop_remainder=drop_remainder).to_iter_dataset(
        grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=prefetch))
    if num_workers > 0:
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; notebooks don't parse
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return it


def train_dataset(source, recipe, *, local_batch_size: int, seed: int = 0,
                  process_index: int = 0, process_count: int = 1, num_workers: int = 0,
                  prefetch: int = 2) -> grain.IterDataset:
    """Endless training batches of this process (see the module docstring for the layout);
    `recipe`: a training recipe of `dense_recipes` (its augmentation with train=True).
    num_workers > 0: batches made in that many processes; prefetch: batches made ahead (in as
    many threads) by this process or each worker."""
    stream = ProcessStream(source, seed, process_index, process_count, local_batch_size, None)
    return _batched(stream, recipe, seed, local_batch_size, True, num_workers, prefetch)


def eval_dataset(source, recipe, *, local_batch_size: int, process_index: int = 0,
                 process_count: int = 1, num_workers: int = 0,
                 prefetch: int = 2) -> grain.IterDataset:
    """One pass of evaluation batches of this process, each with 'valid' (B,): every sample of
    `source` is a valid row exactly once across all processes; every process yields the same
    number of batches, ceil(len(source) / (local_batch_size * process_count))."""
    stream = _EvalStream(source, process_index, process_count, local_batch_size)
    return _batched(stream, recipe, None, local_batch_size, False, num_workers, prefetch)
