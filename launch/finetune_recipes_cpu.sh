#!/usr/bin/env bash
# Every full-size fine-tuning recipe (ViT-B at its real input size, its real head) compiled and
# run for 2 steps at batch 1 (classification at batch 2: mixup pairs samples, the linear probe's
# BatchNorm needs two): the check that each one starts, and its compile and step time
# (docs/benchmarks.md). About 55 minutes on 2 CPU cores.
#
#   launch/finetune_recipes_cpu.sh [--config.a.b=v ...]
#   RECIPES="configs/finetune_semseg.py:nyu_rgbd" launch/finetune_recipes_cpu.sh
#
# Each recipe runs `python -m multimae_jax.benchmark --steps 2 --warmup 0` (random batches in
# the layout of the recipe's data pipeline) in float32 (DTYPE=bfloat16 for the recipes' own
# bfloat16; bfloat16 matmuls are slow on CPUs) with the encoder blocks rematerialised
# (REMAT=False to keep activations: the 640 px RGB-D recipe then needs about 32 GiB, against
# 4 GiB); extra arguments go to every run.
set -euo pipefail
cd "$(dirname "$0")/.."
SEMSEG="ade_rgb hypersim_rgb hypersim_depth hypersim_rgbd nyu_rgb nyu_depth nyu_rgbd"
TASKONOMY="curvature depth edges keypoints2d keypoints3d normal occlusion reshading"
default=$(for v in $SEMSEG; do echo "configs/finetune_semseg.py:$v"; done
          echo "configs/finetune_depth.py:nyu"
          for v in $TASKONOMY; do echo "configs/finetune_taskonomy.py:$v"; done
          echo "configs/finetune_cls.py:in1k"
          echo "configs/linear_probe.py:in1k")
for recipe in ${RECIPES:-$default}; do
  echo "=== $recipe"
  batch=1
  case $recipe in *finetune_cls.py*|*linear_probe.py*) batch=2;; esac
  python -m multimae_jax.benchmark --config="$recipe" --steps 2 --warmup 0 \
    --config.data.global_batch_size=$batch --config.train.compute_dtype="${DTYPE:-float32}" \
    --config.train.remat="${REMAT:-True}" "$@"
done
