"""What a training workdir holds and who may write it.

    WORKDIR/config.json      the config of the newest run (written once its restore succeeded)
    WORKDIR/run_info.json    its devices, processes and package versions
    WORKDIR/history/         the previous config.json / run_info.json, kept whenever a restart
                             changes them ('<file>.before_step_<N>')
    WORKDIR/lock             host, pid and start time of the run writing it now

A restart is compared with config.json before anything is compiled: fields that change the
train state's structure or meaning (`IDENTITY`) are refused; a changed global batch size only
with `train.allow_batch_size_change` (it rescales the lr and the epoch length).
"""
import datetime
import json
import os
import socket
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util
from jax.experimental import multihost_utils

from multimae_jax import atomic

CONFIG, RUN_INFO, HISTORY, LOCK = "config.json", "run_info.json", "history", "lock"
#: Config fields (flattened 'a.b' prefixes) a restart may not change: the model and its
#: adapters, the tasks, and the task balancer (whose parameters are in the optimizer state).
IDENTITY = ("objective", "model.", "modalities.", "train.task_balancer", "head.", "target.",
            "data.recipe")
#: ... except the model fields that choose how it computes, not what (or that a config.json
#: written before they existed lacks)
COMPUTE = ("model.attention", "model.scan_blocks", "model.gather_grad")
BATCH = "data.global_batch_size"


class WorkdirError(RuntimeError):
    """A run that may not use this workdir; the message is one line saying why."""


def _flat(tree: dict) -> dict:
    return traverse_util.flatten_dict(tree, sep=".")


def config_dict(config) -> dict:
    """The config as plain JSON values (tuples as lists), as config.json stores it."""
    return json.loads(config.to_json_best_effort())


def _used_modalities(flat: dict) -> set:
    return set(flat.get("model.input_tasks", [])) | set(flat.get("model.output_tasks", []))


def changed_fields(old: dict, new: dict) -> dict:
    """{field: (old, new)} of the flattened configs' differing fields (modalities only for the
    tasks either config uses)."""
    a, b = _flat(old), _flat(new)
    used = _used_modalities(a) | _used_modalities(b)

    def relevant(k):
        return not k.startswith("modalities.") or k.split(".")[1] in used
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if relevant(k) and a.get(k) != b.get(k)}


def check_restart(workdir, config, process_count: int) -> dict:
    """Refuses (WorkdirError) a restart whose config cannot continue the checkpoints in
    `workdir`; returns the changed fields it accepts ({field: (old, new)}, empty for a new
    workdir or an unchanged config)."""
    workdir = Path(workdir)
    saved = workdir / CONFIG
    if not saved.is_file():
        return {}
    try:
        changes = changed_fields(json.loads(saved.read_text()), config_dict(config))
    except (json.JSONDecodeError, AttributeError) as e:
        raise WorkdirError(f"{saved}: unreadable ({e}); restore it from "
                           f"{workdir / HISTORY} or use a new workdir") from None
    refused = {k: v for k, v in changes.items() if k.startswith(IDENTITY) and k not in COMPUTE}
    if refused:
        fields = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise WorkdirError(f"{workdir} holds checkpoints of another model or tasks; changed: "
                           f"{fields}. Use a new workdir (or initialise from these weights)")
    if BATCH in changes and not config.train.allow_batch_size_change:
        old, new = changes[BATCH]
        raise WorkdirError(f"config.{BATCH}={new}: {workdir} was trained with {old}; the lr "
                           f"(blr x batch / 256) and the epoch length would change mid-run. "
                           f"Set config.train.allow_batch_size_change=True to accept that")
    info = workdir / RUN_INFO
    if info.is_file():
        before = json.loads(info.read_text()).get("process_count", process_count)
        if before != process_count:
            raise WorkdirError(f"{workdir} was trained by {before} process(es), this run has "
                               f"{process_count}: the data iterator state is saved per process")
    return changes


def record_run(workdir, config, run_info: dict, start_step: int) -> None:
    """Writes config.json and run_info.json, first moving changed previous ones to history/."""
    workdir = Path(workdir)
    new = {CONFIG: json.dumps(config_dict(config), indent=1),
           RUN_INFO: json.dumps(run_info, indent=1, default=str)}
    for name, text in new.items():
        path = workdir / name
        if path.is_file() and path.read_text() != text:
            (workdir / HISTORY).mkdir(exist_ok=True)
            os.replace(path, workdir / HISTORY / f"{name}.before_step_{start_step}")
        atomic.write_text(path, text)


def _start_time(pid: int) -> str | None:
    """The kernel's start time of process `pid` (tells a reused pid apart); None off Linux."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = _start_time(holder["pid"])
    return started is None or holder.get("start_time") in (None, started)


class WorkdirLock:
    """WORKDIR/lock, taken by process 0 for the run's lifetime: a second run on the same workdir
    is refused. A lock left by a dead process of this host (kill -9, a crash) is taken over; a
    lock of another host is trusted until someone deletes it (its liveness cannot be seen)."""

    def __init__(self, workdir):
        self.path = Path(workdir) / LOCK
        self.held = False

    def _try(self) -> str | None:
        """Takes the lock; or returns why not."""
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "start_time": _start_time(os.getpid()),
              "since": datetime.datetime.now().isoformat(timespec="seconds")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    holder = json.loads(self.path.read_text())
                except (OSError, json.JSONDecodeError):
                    holder = None  # being written this instant, or garbage
                if holder is None or (holder.get("host") == me["host"] and not _alive(holder)):
                    print(f"warning: taking over the stale lock {self.path} ({holder})",
                          flush=True)
                    self.path.unlink(missing_ok=True)
                    continue
                return (f"{self.path.parent} is in use by pid {holder.get('pid')} on "
                        f"{holder.get('host')} since {holder.get('since')}; if that run is "
                        f"gone, delete {self.path}")
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return None
        return f"could not take {self.path}"

    def __enter__(self):
        """Collective: every process raises WorkdirError if process 0 could not take it."""
        why = None
        if jax.process_index() == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            why = self._try()
        refused = bool(why)
        if jax.process_count() > 1:
            refused = bool(multihost_utils.broadcast_one_to_all(np.int32(refused)))
        if refused:
            raise WorkdirError(why or "the workdir is locked by another run (see process 0)")
        return self

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
