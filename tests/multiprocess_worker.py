"""One process of a local multi-process training run (driven by tests/multiprocess_helpers.py).

    python tests/multiprocess_worker.py --workdir=DIR --config=configs/FILE.py:VARIANT \
        --overrides=JSON [--coordinator=127.0.0.1:PORT --num_processes=N --process_id=I] \
        [--stop_at_step=S | --evaluate=CHECKPOINT]

With --evaluate it evaluates CHECKPOINT (`multimae_jax.evaluate`, the config's evaluators) and
writes DIR/metrics.json instead of training. Run with XLA_FLAGS=--xla_force_host_platform_device_count=K and JAX_PLATFORMS=cpu in the
environment (K local CPU devices). Without --coordinator it is a plain one-process run.
`--overrides` is a JSON object {"a.b": value} applied to the config.
"""
import argparse
import importlib
import json
import sys
from pathlib import Path

import jax

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's multimae_jax and configs, wherever pytest runs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--config", default="configs/pretrain.py:tiny")
    p.add_argument("--overrides", default="{}")
    p.add_argument("--coordinator", default="")
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--process_id", type=int, default=0)
    p.add_argument("--stop_at_step", type=int, default=None)
    p.add_argument("--evaluate", default="")
    args = p.parse_args()

    if args.coordinator:
        # CPU collectives across processes; must be set before the backend starts.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=args.coordinator,
                                   num_processes=args.num_processes, process_id=args.process_id,
                                   initialization_timeout=120)

    from multimae_jax.evaluate import evaluate
    from multimae_jax.train.loop import train

    path, variant = args.config.split(":")
    config = importlib.import_module(f"configs.{Path(path).stem}").get_config(variant)
    config.update_from_flattened_dict(json.loads(args.overrides))
    if args.evaluate:
        metrics = evaluate(config, args.evaluate, args.workdir)
    else:
        metrics = train(config, args.workdir, stop_at_step=args.stop_at_step)
    print(f"process {jax.process_index()}/{jax.process_count()}, "
          f"{jax.local_device_count()}/{jax.device_count()} devices: {json.dumps(metrics)}",
          flush=True)
    if args.coordinator:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
