"""How many loader worker processes a run gets: `auto` shares this process's CPUs among the devices it feeds."""

from __future__ import annotations

import os

MAX_AUTO_WORKERS = 8  # past ~8 decoding processes per device the GPU, not the loader, is the limit at 224 px


def cpus_available() -> int:
    """CPUs this process may run on (its affinity mask, as a container or taskset limits it), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def resolve_workers(num_workers: int | str, devices: int = 1) -> int:
    """`auto` = this process's CPUs divided by the devices on this machine (each device has its own loader), at
    most MAX_AUTO_WORKERS; 0 (load in the main process) on a single CPU, where a worker only adds copying."""
    if num_workers != "auto":
        return int(num_workers)
    cpus = cpus_available()
    if cpus < 2:
        return 0
    return max(1, min(MAX_AUTO_WORKERS, cpus // max(1, devices)))


def local_devices() -> int:
    """Devices (processes) sharing this machine's CPUs in a distributed run: torchrun's LOCAL_WORLD_SIZE, else
    Lightning's WORLD_SIZE (exact on one machine, an overestimate across machines: fewer workers, never more)."""
    for name in ("LOCAL_WORLD_SIZE", "WORLD_SIZE"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1
