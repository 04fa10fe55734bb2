"""This rank's training micro-batches, in an order fixed by the global batch layout, with a resumable position.

Synthetic: batch ``n`` of rank ``r`` holds global clips ``(n·world + r)·micro + j``, so 1 process x micro-batch 4
and 2 processes x micro-batch 2 see the same global batch. Shards: the loader's stream is deterministic for a fixed
(seed, world size, workers), so resuming replays it and skips the consumed batches (reading, not training, them).
"""
from __future__ import annotations

import typing as tp

from vmas.config import Config
from vmas.data import loader as shard_loader
from vmas.errors import CheckpointError
from vmas.solvers.synthetic import SyntheticClips


class DataStream:
    """This rank's micro-batches in order, with a position that checkpoints can save and restore.

    Position = micro-batches consumed by this rank.

    Args:
        cfg (Config): ``data`` (loader, micro-batch) and ``train.synthetic/seed/synthetic_clips``.
        rank / world_size: this process among the data-parallel ranks.
    """

    def __init__(self, cfg: Config, rank: int, world_size: int):
        self.data_cfg, self.rank, self.world = cfg.data, rank, world_size
        self.micro = cfg.data.batch_size
        self.position = 0
        self._iter: tp.Optional[tp.Iterator] = None
        self.synthetic = SyntheticClips(cfg, cfg.train.seed, cfg.train.synthetic_clips) if cfg.train.synthetic else None

    def state_dict(self) -> tp.Dict[str, int]:
        return {"position": self.position, "world_size": self.world, "micro": self.micro}

    def load_state_dict(self, state: tp.Mapping[str, int]) -> None:
        if state["world_size"] != self.world or state["micro"] != self.micro:
            raise CheckpointError(f"checkpoint was written with world size {state['world_size']} x micro-batch "
                                  f"{state['micro']}, this run has {self.world} x {self.micro}: resume with the same "
                                  "layout to reproduce the data order")
        self.position = int(state["position"])
        self._iter = None

    def _loader_iter(self) -> tp.Iterator:
        # looked up on the module at call time, so tests can substitute the loader
        loader = shard_loader.build_loader(self.data_cfg, rank=self.rank, world_size=self.world, train=True,
                                           repeat=True)
        it = iter(loader)
        for _ in range(self.position):  # replay to the saved position
            next(it)
        return it

    def next(self) -> tp.Dict[str, tp.Any]:
        """The next micro-batch (the loader's batch dict, DEVELOPERS.md) and advance the position."""
        if self.synthetic is not None:
            base = (self.position * self.world + self.rank) * self.micro
            batch = shard_loader.collate([self.synthetic.clip(base + j) for j in range(self.micro)])
        else:
            if self._iter is None:
                self._iter = self._loader_iter()
            batch = next(self._iter)
        self.position += 1
        return batch
