"""Two pre-training steps of train_helpers.small_config on a {'data': 2, 'fsdp': 4} mesh of 8 fake
CPU devices; writes the parameters and metrics to an .npz (run by tests/test_train.py).

    XLA_FLAGS=--xla_force_host_platform_device_count=16 python tests/fsdp_worker.py OUT.npz

Why a process of its own, with 16 fake devices of which the mesh uses 8: XLA:CPU runs the
collectives of its emulated devices on one thread pool of max(cores, devices) threads, and this
program's ~90 independent sub-group collectives (all-gathers over 'fsdp', all-reduces over
'data') each hold a thread while they wait for their group. With as many threads as devices, a
device whose collective finds no free thread never arrives: the run deadlocked in 3 of 4 tries on
a 2-core machine with 8 fake devices, and in none of 8 with 16. XLA then aborts the process (the
test session would die with it); the test retries once on that abort.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # train_helpers; this checkout's configs

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402

from train_helpers import FSDP_MIN_SIZE, run_steps, small_config  # noqa: E402


def main(out: str) -> None:
    config = small_config(**{"train.fsdp_min_size": FSDP_MIN_SIZE})
    params, metrics, state = run_steps(config, {"data": 2, "fsdp": 4}, jax.devices()[:8])
    qkv = state["params"]["encoder"]["0"]["attn"]["qkv"]["kernel"]
    flat = {"params/" + "/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}
    np.savez(out, **flat, **{f"metrics/{k}": v for k, v in metrics.items()},
             qkv_spec=np.array(str(qkv.sharding.spec)))


if __name__ == "__main__":
    main(sys.argv[1])
