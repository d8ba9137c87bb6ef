#!/usr/bin/env bash
# The one-shot GPU benchmark of the pre-training step: on one H100/H200 it fits in 10 minutes.
#
#   launch/gpu_benchmark.sh [--config.a.b=v ...]
#   OUT=bench BATCH=128 launch/gpu_benchmark.sh --config.train.compute_dtype=float32
#
# Runs `python -m multimae_jax.benchmark_matrix` (see its docstring): the real ViT-B step at
# BATCH images per device and at the largest batch that fits, remat on/off, XLA vs cuDNN
# attention, gather- vs scatter-transposed token gathers, unrolled vs scanned encoder blocks,
# data-parallel vs FSDP where there are several GPUs. Writes $OUT/results.json (every figure),
# $OUT/results.md (img/s, MFU, peak memory and the time split: encoder, decoders, other
# forward + backward, optimizer update) and one log per variant. Extra arguments are config
# overrides passed to every variant.
#
# Environment (all optional):
#   CONFIG     config file[:variant]                         default configs/pretrain.py
#   OUT        output folder                                 default benchmark_results
#   BATCH      images per device of the fixed-batch variants default 256
#   STEPS      timed steps per variant (after 2 warm-up)     default 10
#   BUDGET_S   wall-clock budget; later variants are skipped default 540
#   MEMORY_GIB device memory for the largest-batch estimate  default the device's limit
#   BATCH_MULTIPLE  the largest batch is a multiple of this  default 32
#   JAX_COMPILATION_CACHE_DIR  persistent compilation cache: a rerun skips compiling
#                                                  default ~/.cache/multimae_jax/xla
# bfloat16 is the config's compute dtype (configs/pretrain.py). JAX may use 95 % of GPU memory
# here (its default is 75 %), so that the largest batch is the largest the GPU holds.
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/multimae_jax/xla}"
args=(--config="${CONFIG:-configs/pretrain.py}" --out="${OUT:-benchmark_results}"
      --batch_per_device="${BATCH:-256}" --steps="${STEPS:-10}" --warmup=2
      --budget_s="${BUDGET_S:-540}" --batch_multiple="${BATCH_MULTIPLE:-32}")
[[ -n "${MEMORY_GIB:-}" ]] && args+=(--memory_gib="$MEMORY_GIB")
exec "${PYTHON:-python}" -m multimae_jax.benchmark_matrix "${args[@]}" "$@"
