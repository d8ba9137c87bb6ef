"""XLA flags every test process uses (the pytest process and the multi-process workers)."""


def collective_timeouts(terminate_s: int) -> str:
    """Fake CPU devices run as threads that meet in a rendezvous for each collective. XLA aborts
    the whole process when one of them arrives more than ~40 s late, which happens on a loaded
    2-core CI machine with 8 devices; with these flags a collective that never completes (a
    deadlock) still ends the process, after `terminate_s`."""
    return (f"--xla_cpu_collective_call_warn_stuck_timeout_seconds=120 "
            f"--xla_cpu_collective_call_terminate_timeout_seconds={terminate_s} "
            f"--xla_cpu_collective_timeout_seconds={terminate_s}")


# Compiling dominates the suite's time on small test models; -O0 code generation roughly halves
# it. It changes how the CPU code is optimised, not what it computes.
CHEAP_CODEGEN = "--xla_backend_optimization_level=0"


def cpu_flags(num_devices: int, terminate_s: int = 900) -> str:
    """XLA_FLAGS for a CPU process with ``num_devices`` fake devices."""
    return (f"--xla_force_host_platform_device_count={num_devices} "
            f"{collective_timeouts(terminate_s)} {CHEAP_CODEGEN}")
