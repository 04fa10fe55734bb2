"""This rank's training micro-batches, in an order fixed by the global batch layout, with a resumable position.

Synthetic: batch ``n`` of rank ``r`` holds global clips ``(n·world + r)·micro + j``, so 1 process x micro-batch 4
and 2 processes x micro-batch 2 see the same global batch. Shards: every batch carries its reader's stream
position (``"__pos__"``: epoch, shard, sample in shard, shuffle RNG and buffer references, see
:class:`vmas.data.loader.ShardStream`); the checkpoint keeps the newest position of each reader (this rank's
dataloader workers) and resume seeks there, so its cost does not depend on the step (no replay).
"""
from __future__ import annotations

import typing as tp

from vmas.config import Config
from vmas.data import loader as shard_loader
from vmas.errors import CheckpointError
from vmas.solvers.synthetic import SyntheticClips


class DataStream:
    """This rank's micro-batches in order, with a position that checkpoints can save and restore.

    State = micro-batches consumed by this rank (``position``) and, for shards, the stream position of each of
    this rank's readers after its last consumed batch (``readers``).

    Args:
        cfg (Config): ``data`` (loader, micro-batch) and ``train.synthetic/seed/synthetic_clips``.
        rank / world_size: this process among the data-parallel ranks.
    """

    def __init__(self, cfg: Config, rank: int, world_size: int):
        self.data_cfg, self.rank, self.world = cfg.data, rank, world_size
        self.micro = cfg.data.batch_size
        self.workers = cfg.data.num_workers
        self.position = 0
        self.readers: tp.Dict[int, tp.Dict[str, tp.Any]] = {}
        self._iter: tp.Optional[tp.Iterator] = None
        self._replay = False  # no reader positions to seek to: replay to ``position``
        self.synthetic = SyntheticClips(cfg, cfg.train.seed, cfg.train.synthetic_clips) if cfg.train.synthetic else None

    def describe(self) -> str:
        """What this run trains on, for the start-up log: a synthetic run must not look like a shard run."""
        d = self.data_cfg
        if self.synthetic is not None:
            return (f"synthetic batches (train.synthetic=true; {self.synthetic.num_clips} distinct clips), "
                    "no shards are read")
        text = f"shards {d.train_shards}"
        if d.unpaired_fraction > 0:
            text += f" + music-only {d.unpaired_shards} ({d.unpaired_fraction:g} of the clips)"
        return text

    def state_dict(self) -> tp.Dict[str, tp.Any]:
        return {"position": self.position, "world_size": self.world, "micro": self.micro,
                "num_workers": self.workers, "readers": dict(self.readers)}

    def load_state_dict(self, state: tp.Mapping[str, tp.Any]) -> None:
        if state["world_size"] != self.world or state["micro"] != self.micro:
            raise CheckpointError(f"checkpoint was written with world size {state['world_size']} x micro-batch "
                                  f"{state['micro']}, this run has {self.world} x {self.micro}: resume with the same "
                                  "layout to reproduce the data order")
        if "readers" in state and state["readers"] and state.get("num_workers", self.workers) != self.workers:
            raise CheckpointError(f"checkpoint was written with data.num_workers={state['num_workers']}, this run has "
                                  f"{self.workers}: the stream is split over ranks x workers, resume with the same")
        self.position = int(state["position"])
        self.readers = {int(k): v for k, v in state.get("readers", {}).items()}
        self._replay = not self.readers  # a checkpoint from before positions were saved (or a loader without them)
        self._iter = None

    def _loader_iter(self) -> tp.Iterator:
        # looked up on the module at call time, so tests can substitute the loader
        loader = shard_loader.build_loader(self.data_cfg, rank=self.rank, world_size=self.world, train=True,
                                           repeat=True, track_position=True)
        if self.readers and hasattr(loader, "dataset"):
            # batches alternate over the workers: the next one comes from reader position % workers
            loader.dataset.resume_from(self.readers, worker_offset=self.position % max(self.workers, 1))
        it = iter(loader)
        if self._replay:  # old checkpoint (no reader positions): read and drop the consumed batches
            for _ in range(self.position):
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
            pos = batch.pop("__pos__", None) if isinstance(batch, dict) else None
            if pos is not None:
                self.readers[int(pos["reader"])] = pos
        self.position += 1
        return batch
