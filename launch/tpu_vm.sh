#!/usr/bin/env bash
# Pre-training on every worker of a Cloud TPU VM (a single host or a pod slice), run from your
# own machine:
#
#   launch/tpu_vm.sh TPU_NAME ZONE [--config.a.b=v ...]
#   CONFIG=configs/pretrain.py WORKDIR=/mnt/nfs/runs/b16 launch/tpu_vm.sh my-v4-64 us-central2-b
#
# Starts `python -m multimae_jax.main --config=$CONFIG --workdir=$WORKDIR [args]` in $REPO_DIR
# on all workers at once (gcloud ... ssh --worker=all); extra arguments are passed on unchanged.
#
# Environment (all optional):
#   CONFIG    config file[:variant]                 default configs/pretrain.py
#   WORKDIR   checkpoints and logs; on a pod every worker writes its checkpoint shards here, so
#             it must be a folder all workers share (NFS, a gcsfuse mount)   default workdir
#   REPO_DIR  this repository on the workers (same path on each)  default ~/multimae-jax
#   PYTHON    the Python with multimae-jax and jax[tpu] on the workers       default python3
#   PROJECT   gcloud project                                                 default gcloud's
#   JAX_COORDINATOR_ADDRESS  host:port of the jax.distributed coordinator; default worker 0's
#             internal IP on port 8476 (JAX's TPU default), looked up with gcloud
#   DRY_RUN=1 print the gcloud command instead of running it
#
# Exporting JAX_COORDINATOR_ADDRESS on the workers is what makes multimae_jax.main call
# jax.distributed.initialize(); JAX then reads each worker's process id and the process count
# from the TPU VM metadata (a GCE TPU VM sets no TPU_WORKER_HOSTNAMES variable).
# Every worker needs the same code, packages and data path (GCS, tfds or a shared mount).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 64
fi
TPU_NAME=$1
ZONE=$2
shift 2

CONFIG=${CONFIG:-configs/pretrain.py}
WORKDIR=${WORKDIR:-workdir}
REPO_DIR=${REPO_DIR:-'~/multimae-jax'}  # expanded by the worker's shell
PYTHON=${PYTHON:-python3}
gcloud_flags=(--zone "$ZONE")
if [[ -n ${PROJECT:-} ]]; then
  gcloud_flags+=(--project "$PROJECT")
fi

if [[ -z ${JAX_COORDINATOR_ADDRESS:-} ]]; then
  if [[ -n ${DRY_RUN:-} ]]; then
    JAX_COORDINATOR_ADDRESS="WORKER0_IP:8476"
  else
    worker0=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${gcloud_flags[@]}" \
      --format='value(networkEndpoints[0].ipAddress)')
    if [[ -z $worker0 ]]; then
      echo "tpu_vm.sh: no network endpoint for TPU '$TPU_NAME' in zone $ZONE" >&2
      exit 1
    fi
    JAX_COORDINATOR_ADDRESS="$worker0:8476"
  fi
fi

# The remote command, each argument quoted for the worker's shell (REPO_DIR stays unquoted so
# that a leading ~ expands there).
args=("--config=$CONFIG" "--workdir=$WORKDIR" "$@")
remote="cd $REPO_DIR && JAX_COORDINATOR_ADDRESS=$(printf %q "$JAX_COORDINATOR_ADDRESS")"
remote+=" $(printf %q "$PYTHON") -m multimae_jax.main$(printf ' %q' "${args[@]}")"

cmd=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_flags[@]}" --worker=all
     --command "$remote")
if [[ -n ${DRY_RUN:-} ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
