#!/usr/bin/env bash
# Run the main job on this machine: launch/local.sh [--config=...] [--config.a.b=v ...]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m multimae_jax.main --config="${CONFIG:-configs/pretrain.py}" "$@"
