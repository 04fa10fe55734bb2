"""O(1) resume of the training data stream (issue 19): the stream seeks to its saved position (shard, sample in
shard, shuffle RNG, shuffle-buffer references) instead of replaying every batch since the start.

Checked: the samples after resume are exactly those of the uninterrupted stream (buffer shuffle, several epochs,
dataloader workers, 2 ranks, the decoded cache), the work a resume does (samples read and decoded) does not grow
with the step it resumes at, and the solver's ``DataStream`` saves and restores it through a checkpoint.
"""
from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vmas.config import load_config
from vmas.data import loader
from vmas.data.shards import _npy, encode_frames

DEBUG = Path(__file__).resolve().parent.parent / "configs" / "debug.yaml"


def debug_cfg(tmp_path, *overrides):
    return load_config(DEBUG, [f"train.out_dir={tmp_path}", "train.engine=torch", "train.progress=false", *overrides])


def _write_shards(root, sizes, cfg):
    """Decodable tiny shards (jpg frames) of the debug data config; clip keys ``s{shard}_{j}``."""
    d = cfg.data
    T, Ta, H = d.num_frames, round(d.clip_seconds * d.frame_rate), d.image_size
    rng = np.random.default_rng(0)
    keys = []
    for s, n in enumerate(sizes):
        with tarfile.open(root / f"train-{s:06d}.tar", "w") as tar:
            for j in range(n):
                key = f"s{s}_{j:03d}"
                members = {
                    "frames.jpgs": encode_frames(rng.integers(0, 255, (T, H, H, 3), dtype=np.uint8), "jpg", 50),
                    "codes.npy": _npy(rng.integers(0, 64, (4, Ta)).astype(np.int16)),
                    "music_beats.npy": _npy(rng.random(Ta) < 0.1),
                    "motion.npy": _npy(rng.random(T - 1).astype(np.float32)),
                    "beat_weights.npy": _npy(np.ones(Ta, np.float32)),
                    "tags.txt": b"piano",
                    "json": json.dumps({"start": float(j)}).encode(),
                }
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                keys.append(key)
    return keys


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    _write_shards(root, [5, 5, 5, 5, 5, 3], load_config(DEBUG))  # 28 clips, the last shard partial
    return root


def _cfg(tmp_path, shard_dir, *overrides):
    return debug_cfg(tmp_path, "train.synthetic=false", f"data.train_shards={shard_dir}/train-*.tar",
                     "data.shuffle_buffer=6", "data.batch_size=2", *overrides)


def _keys(batch):
    return list(batch["key"])


def _stream(cfg, rank=0, world=1, positions=None, offset=0):
    dl = loader.build_loader(cfg.data, rank=rank, world_size=world, train=True, repeat=True, track_position=True)
    if positions is not None:
        dl.dataset.resume_from(positions, offset)
    return iter(dl)


@pytest.mark.parametrize("workers,world,extra", [(0, 1, ()), (2, 1, ()), (0, 2, ()), (0, 1, ("data.cache_decoded=true",)),
                                                 (0, 1, ("data.shuffle_buffer=0",))])
def test_resumed_stream_equals_uninterrupted(tmp_path, shard_dir, workers, world, extra):
    """Resume at every batch boundary of ~2.5 epochs: the following batches are the uninterrupted ones."""
    cfg = _cfg(tmp_path, shard_dir, f"data.num_workers={workers}", *extra)
    for rank in range(world):
        it = _stream(cfg, rank, world)
        batches = [next(it) for _ in range(36 // world)]  # 72 clips / world: past two epoch ends
        full = [_keys(b) for b in batches]
        assert len({k for b in full for k in b}) >= 28 // world  # this rank's part of each epoch
        positions = {}
        for n in (1, 5, 13, len(batches) - 4):
            positions = {}
            for b in batches[:n]:
                positions[b["__pos__"]["reader"]] = b["__pos__"]
            resumed = _stream(cfg, rank, world, positions, offset=n % max(workers, 1))
            assert [_keys(next(resumed)) for _ in range(3)] == full[n:n + 3], (n, workers, world, extra)


def test_tracking_keeps_the_stream_unchanged(tmp_path, shard_dir):
    """The position bookkeeping does not change which samples come in which order."""
    cfg = _cfg(tmp_path, shard_dir)
    plain = loader.build_loader(cfg.data, train=True, repeat=True)
    tracked = _stream(cfg)
    a = [_keys(b) for b, _ in zip(plain, range(20))]
    assert a == [_keys(next(tracked)) for _ in range(20)]


def test_resume_cost_does_not_grow_with_the_step(tmp_path, shard_dir, monkeypatch):
    """Samples read and decoded by a resume at batch 3 and at batch 33 (2.4 epochs later) are bounded by the
    shuffle buffer + one shard, and the same order of magnitude; a replay would decode 66 clips at batch 33."""
    cfg = _cfg(tmp_path, shard_dir)
    it = _stream(cfg)
    batches = [next(it) for _ in range(34)]
    reads, decodes = [0], [0]
    real_tar, real_decode = loader.indexed_tar_samples, loader.decode_sample

    def counting_tar(*a, **k):
        for x in real_tar(*a, **k):
            reads[0] += 1
            yield x

    def counting_decode(*a, **k):
        decodes[0] += 1
        return real_decode(*a, **k)

    monkeypatch.setattr(loader, "indexed_tar_samples", counting_tar)
    monkeypatch.setattr(loader, "decode_sample", counting_decode)
    cost = {}
    for n in (3, 33):
        reads[0] = decodes[0] = 0
        t0 = time.perf_counter()
        resumed = _stream(cfg, positions={0: batches[n - 1]["__pos__"]})
        assert _keys(next(resumed)) == _keys(batches[n])
        cost[n] = (reads[0], decodes[0], time.perf_counter() - t0)
    buffer, shard = cfg.data.shuffle_buffer, 5
    for r, d, _ in cost.values():
        assert d == cfg.data.batch_size, cost  # only the batch itself is decoded
        assert r <= buffer + shard + cfg.data.batch_size, cost  # buffer references + the current shard's tail
    assert cost[33][0] <= cost[3][0] + shard, cost


def test_datastream_checkpoint_round_trip(tmp_path, shard_dir):
    """The solver's DataStream saves reader positions and resumes without replay (and refuses another layout)."""
    from vmas.errors import CheckpointError
    from vmas.solvers.stream import DataStream

    cfg = _cfg(tmp_path, shard_dir, "data.num_workers=2")
    a = DataStream(cfg, rank=0, world_size=1)
    seen = [_keys(a.next()) for _ in range(7)]
    state = a.state_dict()
    assert state["position"] == 7 and set(state["readers"]) == {0, 1}
    after = [_keys(a.next()) for _ in range(3)]
    b = DataStream(cfg, rank=0, world_size=1)
    b.load_state_dict(torch.load(_save(tmp_path, state), weights_only=False))
    assert [_keys(b.next()) for _ in range(3)] == after and seen
    with pytest.raises(CheckpointError, match="data.num_workers"):
        DataStream(_cfg(tmp_path, shard_dir, "data.num_workers=0"), 0, 1).load_state_dict(state)


def _save(tmp_path, state):
    path = tmp_path / "rank.pt"
    torch.save(state, path)
    return path


def test_solver_resume_on_shards_repeats_the_uninterrupted_run(tmp_path, shard_dir):
    """Solver on shards (torch engine): stop after step 3, resume from that checkpoint, and the loss curve and the
    clips of every later step equal the uninterrupted run's (the position travels through rank_00000.pt)."""
    from vmas.solvers.solver import Solver

    def run(out, resume=False, stop_after=None):
        cfg = _cfg(out, shard_dir, "optim.max_steps=6", "train.save_every=3", "model.lm.cond_dropout=0")
        solver = Solver(cfg, resume=resume)
        keys, real_next = [], solver.data.next

        def spy():
            batch = real_next()
            keys.append(list(batch["key"]))
            return batch

        solver.data.next = spy
        return solver.fit(stop_after=stop_after), keys

    full, full_keys = run(tmp_path / "a")
    run(tmp_path / "b", stop_after=3)
    resumed, resumed_keys = run(tmp_path / "b", resume=True)
    assert resumed["resumed_from_step"] == 3
    assert resumed_keys == full_keys[3:]
    assert resumed["loss_curve"] == pytest.approx(full["loss_curve"], abs=1e-6)
