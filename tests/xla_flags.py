"""XLA flags every test process uses (the pytest process and the multi-process workers)."""

# Fake CPU devices run as threads that meet in a rendezvous for each collective. XLA aborts the
# whole process when one of them arrives more than ~40 s late, which happens on a loaded 2-core
# CI machine with 8 devices; a real deadlock still ends, after 15 minutes.
COLLECTIVE_TIMEOUTS = ("--xla_cpu_collective_call_warn_stuck_timeout_seconds=120 "
                       "--xla_cpu_collective_call_terminate_timeout_seconds=900 "
                       "--xla_cpu_collective_timeout_seconds=900")


# Compiling dominates the suite's time on small test models; -O0 code generation roughly halves
# it. It changes how the CPU code is optimised, not what it computes.
CHEAP_CODEGEN = "--xla_backend_optimization_level=0"


def cpu_flags(num_devices: int) -> str:
    """XLA_FLAGS for a CPU process with ``num_devices`` fake devices."""
    return f"--xla_force_host_platform_device_count={num_devices} {COLLECTIVE_TIMEOUTS} {CHEAP_CODEGEN}"
