#!/usr/bin/env bash
# One training process on this machine, driving all of its devices.
#
#   launch/local.sh [--config.a.b=v ...]
#   CONFIG=configs/pretrain.py:tiny WORKDIR=runs/tiny launch/local.sh --config.train.num_steps=100
#
# CONFIG (default configs/pretrain.py) and WORKDIR (default workdir) pick the config file and
# the output folder; extra arguments go to `python -m multimae_jax.main` unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m multimae_jax.main --config="${CONFIG:-configs/pretrain.py}" \
  --workdir="${WORKDIR:-workdir}" "$@"
