"""Local multi-process runs for tests: worker subprocesses (tests/multiprocess_worker.py) with
jax.distributed over 127.0.0.1 and gloo CPU collectives, each with its own XLA_FLAGS, so the
pytest process (8 fake devices, see conftest.py) is left alone."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from multimae_jax.train import checkpoint
from xla_flags import cpu_flags

WORKER = Path(__file__).with_name("multiprocess_worker.py")
# Variables a cluster launcher might have set, which would make jax.distributed look elsewhere.
CLUSTER_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS",
                "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "OMPI_COMM_WORLD_SIZE")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(num_devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARS}
    env["XLA_FLAGS"] = cpu_flags(num_devices)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    # The persistent compilation cache of the test session (conftest.py), if any: repeated runs
    # skip most of the compiling. It is keyed on the program, so it never changes results.
    cache_dir = jax.config.jax_compilation_cache_dir
    if cache_dir:
        env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(
            jax.config.jax_persistent_cache_min_compile_time_secs)
    return env


class Runs:
    """Worker subprocesses of one config ('configs/pretrain.py:tiny') with flattened
    `overrides`, their output in log files; all killed on the way out."""

    def __init__(self, logdir: Path, config: str, overrides: dict):
        self.logdir, self.procs = logdir, {}
        self.args = [f"--config={config}", f"--overrides={json.dumps(overrides)}"]

    def start(self, name: str, num_devices: int, workdir: Path, *extra: str) -> None:
        log = open(self.logdir / f"{name}.log", "wb")
        cmd = [sys.executable, str(WORKER), f"--workdir={workdir}", *self.args, *extra]
        self.procs[name] = (subprocess.Popen(cmd, env=worker_env(num_devices), stdout=log,
                                             stderr=subprocess.STDOUT), log)

    def start_processes(self, name: str, count: int, num_devices: int, workdir: Path,
                        *extra: str) -> None:
        """`count` processes of one run (name0, name1, ...) on a fresh coordinator port."""
        coordinator = f"127.0.0.1:{free_port()}"
        for i in range(count):
            self.start(f"{name}{i}", num_devices, workdir, f"--coordinator={coordinator}",
                       f"--num_processes={count}", f"--process_id={i}", *extra)

    def output(self, name: str, tail: int = 6000) -> str:
        text = (self.logdir / f"{name}.log").read_text(errors="replace")
        return text if len(text) <= tail else "...\n" + text[-tail:]

    def metrics(self, name: str, process: int, processes: int, devices: int) -> dict:
        """The final metrics the worker printed, checking where it ran."""
        out, expected = self.output(name), (f"process {process}/{processes}, "
                                            f"{devices // processes}/{devices} devices: ")
        assert expected in out, out
        return json.loads(out.split(expected, 1)[1].splitlines()[0])

    def report(self) -> str:
        return "\n".join(f"----- {name} (exit {proc.returncode}) -----\n{self.output(name)}"
                         for name, (proc, _) in self.procs.items())

    def wait(self, timeout: float) -> None:
        """Waits for all; stops everything at the first failure or at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            codes = {name: proc.poll() for name, (proc, _) in self.procs.items()}
            failed = [name for name, code in codes.items() if code not in (None, 0)]
            if failed:
                self.kill()
                pytest.fail(f"{', '.join(failed)} failed\n{self.report()}")
            if all(code == 0 for code in codes.values()):
                return
            if time.monotonic() > deadline:
                running = [name for name, code in codes.items() if code is None]
                self.kill()
                pytest.fail(f"{', '.join(running)} still running after {timeout:.0f} s\n"
                            f"{self.report()}")
            time.sleep(0.5)

    def kill(self) -> None:
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc, log in self.procs.values():
            proc.wait()
            log.close()


def flat(tree) -> dict:
    """{'['params']['encoder']...': numpy array} of a state tree."""
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def restore_numpy(workdir: Path, step: int) -> dict:
    found_step, state = checkpoint.restore_state_only(workdir, step)
    assert found_step == step
    return state
