"""Which part of a data job this process does: rank / world size / local rank from the launchers clusters run.

Curation and preprocessing are embarrassingly parallel, so there is no scheduler here and no communication
between ranks: every process reads its rank from its launcher, owns a fixed, disjoint set of work units (shards
of the preprocessing plan, parts of the curation input) and writes only those, each followed by a done-marker.
Whoever sees every marker present last rebuilds the merged outputs; ``--merge`` does the same by hand.

Where the rank comes from, first match wins:

=====================  =========================================================================================
explicit               ``--rank R --world-size W`` (both or neither)
torchrun               ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (also ``srun torchrun ...``: torchrun wins)
SLURM tasks × array    ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` and/or ``SLURM_ARRAY_TASK_ID``
                       (+ ``_MIN``, ``_STEP``, ``_COUNT``): array task ``a`` of ``A`` running task ``p`` of ``P``
                       is rank ``a·P + p`` of ``A·P``
none                   rank 0 of 1
=====================  =========================================================================================

Ownership is round robin over the unit index (unit ``i`` belongs to rank ``i mod W``): it depends only on the
plan and the world size, so a re-run with the same world size gives every rank the same units, and because a
finished unit is recognised by its marker, a re-run with a *different* world size is also safe (it only redoes
what has no marker).
"""
from __future__ import annotations

import dataclasses
import os
import socket
import typing as tp

from vmas.errors import ConfigError

T = tp.TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RankInfo:
    """This process's place in a data job.

    Args:
        rank: 0 <= rank < world_size, global over nodes and array tasks.
        world_size: number of processes sharing the job.
        local_rank: index of this process on its node (picks the GPU).
        source: where the numbers came from (``explicit``, ``torchrun``, ``slurm``, ``slurm_array``,
            ``slurm_array+tasks``, ``single``), printed in logs so a wrong launch is visible.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "single"

    def owns(self, index: int) -> bool:
        return index % self.world_size == self.rank

    def mine(self, units: tp.Sequence[T]) -> tp.List[T]:
        """The units of ``units`` this rank owns (round robin by position)."""
        return [u for i, u in enumerate(units) if self.owns(i)]

    def __str__(self) -> str:
        return f"rank {self.rank}/{self.world_size} (local {self.local_rank}, from {self.source})"


def _int(env: tp.Mapping[str, str], name: str) -> tp.Optional[int]:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer: unset it or fix the "
                          f"launcher") from None


def detect_rank(rank: tp.Optional[int] = None, world_size: tp.Optional[int] = None,
                env: tp.Optional[tp.Mapping[str, str]] = None) -> RankInfo:
    """RankInfo from explicit values, else torchrun's, SLURM's or a SLURM array's environment (module doc)."""
    env = os.environ if env is None else env
    if (rank is None) != (world_size is None):
        raise ConfigError("--rank and --world-size go together: give both (e.g. --rank 0 --world-size 4) or neither")
    if rank is not None:
        info = RankInfo(int(rank), int(world_size), _int(env, "LOCAL_RANK") or 0, "explicit")
    elif _int(env, "WORLD_SIZE") is not None and _int(env, "RANK") is not None:
        info = RankInfo(_int(env, "RANK"), _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK") or 0, "torchrun")
    else:
        info = _slurm_rank(env)
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise ConfigError(f"rank {info.rank} of world size {info.world_size} (from {info.source}) is out of range: "
                          f"need 0 <= rank < world size >= 1")
    return info


def _slurm_rank(env: tp.Mapping[str, str]) -> RankInfo:
    procid, ntasks, localid = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS"), _int(env, "SLURM_LOCALID")
    task_id = _int(env, "SLURM_ARRAY_TASK_ID")
    tasks = (procid or 0, ntasks or 1) if procid is not None and ntasks is not None else (0, 1)
    if task_id is None:
        if tasks[1] == 1 and procid is None:
            return RankInfo()
        return RankInfo(tasks[0], tasks[1], localid or 0, "slurm")
    count = _int(env, "SLURM_ARRAY_TASK_COUNT")
    if count is None:
        raise ConfigError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not (Slurm < 18?): pass "
                          "--rank $SLURM_ARRAY_TASK_ID --world-size N explicitly")
    lo, step = _int(env, "SLURM_ARRAY_TASK_MIN") or 0, _int(env, "SLURM_ARRAY_TASK_STEP") or 1
    if (task_id - lo) % step:
        raise ConfigError(f"SLURM array task {task_id} is not on the grid min={lo} step={step}: use a plain "
                          f"--array=0-{count - 1} range")
    index = (task_id - lo) // step  # 0 .. count-1, whatever the array's first index (--array=1-8 works)
    source = "slurm_array" if tasks[1] == 1 else "slurm_array+tasks"
    return RankInfo(index * tasks[1] + tasks[0], count * tasks[1], localid or 0, source)


def pin_device(device: str, info: RankInfo) -> str:
    """The device this rank should use: ``cuda`` becomes ``cuda:<local_rank mod #GPUs>`` (and is made current),
    so eight ranks on an eight-GPU node never share a GPU. Anything else is returned unchanged."""
    if device != "cuda":
        return device
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("--device cuda but torch sees no CUDA device: run on a GPU node or use --device cpu")
    index = info.local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return f"cuda:{index}"


def writer_tag() -> str:
    """Unique per process across nodes, for temp-file names (pids repeat on different hosts of a shared folder)."""
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname()) or "host"
    return f"{host}.{os.getpid()}"
