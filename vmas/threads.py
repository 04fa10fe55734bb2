"""How many CPU threads torch should use for generation: chosen in the program, not left to OpenMP's default
(issue 35 part 4).

OpenMP's default is one thread per logical CPU of the machine. For a small model the per-step matrix products are
too small to share (each window is hundreds of tiny autoregressive steps), so threads mostly wait on each other,
and when the cores are also busy with other work, spinning threads fight for them: a 60 s video took 565 s with the
default on a busy 2-core machine and 28.6 s with one thread. The choice here: one thread per
:data:`PARAMS_PER_THREAD` parameters (at least one), never more than the cores this process may use (its affinity
mask and cgroup CPU quota, not the machine's count) minus the ones other work keeps busy (1-minute load average).
``vmas generate --threads N`` or ``OMP_NUM_THREADS`` set by the user win over the choice.

Layer 1: plain values and ``os``/``torch`` calls, no config.
"""
from __future__ import annotations

import math
import os
import typing as tp

PARAMS_PER_THREAD = 100_000_000
"""Model parameters per useful thread: below ~100 M (the debug and SynthMV demo models) a second thread costs more
in synchronisation than it saves on a step's matrix products; MusicGen-small-sized LMs (300 M) use ~3."""


def available_cores() -> int:
    """CPUs this process may run on: its affinity mask (``taskset``, container cpusets), capped by a cgroup v2 CPU
    quota (``cpu.max``, e.g. ``docker --cpus 2``) when there is one; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def choose_threads(params: int, cores: tp.Optional[int] = None, load: tp.Optional[float] = None) -> int:
    """Threads for a model of ``params`` parameters on ``cores`` usable CPUs (default :func:`available_cores`)
    while other work keeps ``load`` of them busy (default: the 1-minute load average; the process has not started
    computing yet, so the load is the others')."""
    cores = available_cores() if cores is None else max(1, cores)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
    by_size = max(1, round(params / PARAMS_PER_THREAD))
    free = max(1, cores - int(load))
    return max(1, min(by_size, cores, free))


def configure_threads(params: int, requested: tp.Optional[int] = None) -> tp.Tuple[int, str]:
    """Set torch's intra-op thread count for a model of ``params`` parameters and return ``(threads, why)``:
    ``requested`` (``--threads N``, N >= 1) wins, then ``OMP_NUM_THREADS`` from the environment, then
    :func:`choose_threads`."""
    import torch

    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if requested:
        threads, why = requested, "--threads"
    elif env.isdigit() and int(env) > 0:
        threads, why = int(env), "OMP_NUM_THREADS"
    else:
        cores = available_cores()
        threads = choose_threads(params, cores)
        why = f"{params / 1e6:.0f} M parameters, {cores} usable core(s)"
    torch.set_num_threads(threads)
    return threads, why


__all__ = ["available_cores", "choose_threads", "configure_threads", "PARAMS_PER_THREAD"]
