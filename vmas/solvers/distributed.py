"""Ranks, world size and the process group: the few facts about the launch that the other solver parts need.

The launcher (``deepspeed.launcher.runner``, torchrun, SLURM) describes the process through ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``; a process started without one is rank 0 of a world of 1. Nothing here reads the
config.
"""
from __future__ import annotations

import os
import socket
import typing as tp
from pathlib import Path

import torch
import torch.distributed as dist


def dist_env() -> tp.Tuple[int, int, int]:
    """(rank, local_rank, world_size) from the launcher's environment (1 process when unset)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_single_process_env() -> None:
    """DeepSpeed always initialises torch.distributed: give a lone process (no launcher) a loopback world of 1."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def init_deepspeed_distributed(local_rank: int) -> None:
    """Process group for DeepSpeed (NCCL on GPUs, gloo on CPU) and this rank's GPU; a no-op when already set up."""
    set_single_process_env()
    # DeepSpeed JIT-builds a small op on first use (~1 min): cache it inside the repo, not in ~/.cache
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[2] / ".cache" /
                                                      "torch_extensions"))
    import deepspeed

    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def mean_over_ranks(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """Average ``x`` over the ranks in place (logging stats: each rank saw a different micro-batch)."""
    if world_size > 1:
        dist.all_reduce(x)
        x /= world_size
    return x
