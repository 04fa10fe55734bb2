"""Streaming loader over the tar shards of :mod:`vmas.data.shards` (SPEC §6.5).

:class:`ShardStream` is an ``IterableDataset`` that

- expands a brace/glob pattern or a list of shard paths/URLs (``pipe:``/``http`` through ``webdataset.gopen``);
- shuffles the shard order with ``(seed, epoch)``, then gives each (rank, dataloader worker) a disjoint part:
  whole shards when there are at least as many shards as readers, else every reader scans all shards and keeps
  the samples ``i % readers == reader`` (few shards, e.g. a last partial shard or a small val set);
- shuffles samples through a buffer (reservoir style, compressed bytes) seeded by ``(seed, epoch, reader)``;
- decodes each sample to tensors and checks its sizes against the data config;
- skips unreadable shards or samples with a warning (bad data never stops a run).

Determinism: the stream of a reader is a function of (shard list, seed, epoch, rank, world_size, num_workers).
Call :meth:`ShardStream.set_epoch` (or ``loader.dataset.set_epoch``) before each epoch to reshuffle.

:func:`collate` builds the batch dict of DEVELOPERS.md; :func:`build_loader` wires it into a ``DataLoader``.
"""
from __future__ import annotations

import glob
import json
import logging
import math
import random
import tarfile
import typing as tp
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vmas.data.shards import FRAME_EXT, decode_frames, load_npy
from vmas.errors import DataError

if tp.TYPE_CHECKING:
    from vmas.config import DataConfig

log = logging.getLogger(__name__)

_FORMAT_OF_EXT = {ext: fmt for fmt, ext in FRAME_EXT.items()}


def expand_shards(shards: tp.Union[str, tp.Sequence[str]]) -> tp.List[str]:
    """``data/train-{000000..000009}.tar``, a glob, several of those joined by ``::`` (webdataset's separator), or
    a list -> list of shard paths/URLs (globs sorted; brace order kept)."""
    if isinstance(shards, str):
        import braceexpand

        parts = [p for s in shards.split("::") if s.strip() for p in braceexpand.braceexpand(s.strip())]
    else:
        parts = list(shards)
    out: tp.List[str] = []
    for p in parts:
        if any(c in p for c in "*?[") and "://" not in p and not p.startswith("pipe:"):
            hits = sorted(glob.glob(p))
            if not hits:
                raise DataError(f"shard pattern '{p}' matches no file: check data.train_shards / data.val_shards")
            out.extend(hits)
        else:
            out.append(p)
    if not out:
        raise DataError(f"no shards in '{shards}': set data.train_shards / data.val_shards")
    return out


def _open(url: str) -> tp.IO[bytes]:
    if "://" in url or url.startswith("pipe:"):
        import webdataset as wds

        return wds.gopen(url, "rb")
    return open(url, "rb")


def iter_tar_samples(url: str) -> tp.Iterator[tp.Dict[str, tp.Any]]:
    """Group consecutive members ``<key>.<ext>`` of one tar into ``{"__key__": key, ext: bytes}`` dicts.

    A truncated or corrupt shard ends its iteration with a warning; what was read before the damage is kept.
    """
    for _, sample in indexed_tar_samples(url):
        yield sample


def indexed_tar_samples(url: str, skip: int = 0, want: tp.Optional[tp.Container[int]] = None
                        ) -> tp.Iterator[tp.Tuple[int, tp.Dict[str, tp.Any]]]:
    """(index in the shard, sample) pairs of :func:`iter_tar_samples`.

    ``skip``: pass over the first ``skip`` samples without keeping their bytes (seeking into a shard on resume);
    ``want``: only the samples whose index is in it (re-reading a saved shuffle buffer).
    """
    sample: tp.Dict[str, tp.Any] = {}
    index, key_now = -1, None
    try:
        with _open(url) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name.rsplit("/", 1)[-1]
                key, _, ext = name.partition(".")
                if key != key_now:
                    if sample:
                        yield index, sample
                        sample = {}
                    index, key_now = index + 1, key
                if index < skip or (want is not None and index not in want):
                    continue  # the tar stream moves past the member's data without keeping it
                sample["__key__"] = key
                sample[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        log.warning("shard %s is damaged (%s): keeping the samples read before the damage", url, err)
        sample = {}  # the sample in progress may be incomplete
    if sample:
        yield index, sample


def decode_sample(raw: tp.Mapping[str, tp.Any], data_cfg: "DataConfig") -> tp.Dict[str, tp.Any]:
    """Raw tar members -> tensors, sizes checked against ``data_cfg`` (a mismatch means stale shards)."""
    d = data_cfg
    T, Ta = d.num_frames, round(d.clip_seconds * d.frame_rate)
    key = raw["__key__"]
    meta = json.loads(raw["json"]) if "json" in raw else {}
    has_video = meta.get("has_video", True)
    ext = next((e for e in _FORMAT_OF_EXT if e in raw), None)
    if ext is None and has_video:
        raise DataError(f"sample {key}: no frames member ({', '.join(_FORMAT_OF_EXT)})")
    if has_video:
        frames = torch.from_numpy(decode_frames(raw[ext], _FORMAT_OF_EXT[ext]))  # [T, H, W, 3]
    else:  # music-only clip (issue 25): zero frames keep the batch layout; the model never sees them (null video)
        frames = torch.zeros((T, d.image_size, d.image_size, 3), dtype=torch.uint8)
    codes = torch.from_numpy(load_npy(raw["codes.npy"]).astype(np.int64))  # [K, Ta]
    if tuple(frames.shape) != (T, d.image_size, d.image_size, 3) or codes.shape[-1] != Ta:
        raise DataError(f"sample {key}: frames {tuple(frames.shape)}, codes {tuple(codes.shape)} but the data config "
                        f"wants [{T}, {d.image_size}, {d.image_size}, 3] and [K, {Ta}]: re-run tools/preprocess.py "
                        f"with this config")
    return {
        "frames": frames,  # uint8 [T, H, W, 3]
        "codes": codes,  # long [K, Ta]
        "music_beats": torch.from_numpy(load_npy(raw["music_beats.npy"]).astype(bool)),  # [Ta]
        "motion": (torch.from_numpy(load_npy(raw["motion.npy"]).astype(np.float32)) if has_video
                   else torch.zeros(T - 1)),  # [T-1]
        "beat_weights": torch.from_numpy(load_npy(raw["beat_weights.npy"]).astype(np.float32)),  # [Ta]
        "tags": raw.get("tags.txt", b"").decode(),
        "key": key,
        "start": float(meta.get("start", 0.0)),
        "has_video": bool(has_video),
    }


def collate(samples: tp.Sequence[tp.Mapping[str, tp.Any]]) -> tp.Dict[str, tp.Any]:
    """List of decoded samples -> the batch dict of DEVELOPERS.md."""
    return {
        "frames": torch.stack([s["frames"] for s in samples]),  # uint8 [B, T, H, W, 3]
        "codes": torch.stack([s["codes"] for s in samples]),  # long [B, K, Ta]
        "music_beats": torch.stack([s["music_beats"] for s in samples]),  # bool [B, Ta]
        "motion": torch.stack([s["motion"] for s in samples]),  # float [B, T-1]
        "beat_weights": torch.stack([s["beat_weights"] for s in samples]),  # float [B, Ta]
        "tags": [s["tags"] for s in samples],
        "key": [s["key"] for s in samples],
        "start": torch.tensor([s["start"] for s in samples], dtype=torch.float32),  # [B]
        "has_video": torch.tensor([s.get("has_video", True) for s in samples], dtype=torch.bool),  # [B]
        **({"__pos__": samples[-1]["__pos__"]} if "__pos__" in samples[-1] else {}),  # stream position after it
    }


class ShardStream(IterableDataset):
    """Samples of a shard list, split across ranks and workers, buffer-shuffled, deterministic per (seed, epoch).

    Args:
        shards: pattern or list (see :func:`expand_shards`).
        data_cfg: sizes to check against, ``seed`` and ``shuffle_buffer``.
        rank / world_size: this process among the data-parallel ranks (all nodes).
        shuffle: shuffle shard order and samples (training); False keeps manifest order (evaluation).
        repeat: loop over epochs forever (epoch += 1 each pass), so ranks with fewer samples never run dry first.
        decode: False yields raw tar members (tests and tools that only need keys).
        track_position: attach ``"__pos__"`` to every decoded sample: the reader's position *after* it (see
            :meth:`resume_from`); :func:`collate` keeps the batch's last one.
        block: readers take blocks of ``block`` consecutive samples of the global order in turn (sample-level split
            over every shard): evaluation with ``block = batch size`` gives each rank whole batches of the 1-rank
            order, so sharded validation forms the same batches as one rank does.

    **Position** (O(1) resume): a reader's stream is fixed by (epoch, where it is in its shard list, the shuffle
    RNG, which samples sit in the shuffle buffer). ``"__pos__"`` holds exactly that, with buffer entries as
    references (shard, index in shard), so resuming opens one shard at the saved sample, re-reads the referenced
    buffer samples (bounded by the buffer size, whatever the step) and continues with the identical sequence.
    """

    def __init__(self, shards: tp.Union[str, tp.Sequence[str]], data_cfg: "DataConfig", rank: int = 0,
                 world_size: int = 1, shuffle: bool = True, repeat: bool = False, decode: bool = True,
                 track_position: bool = False, block: int = 0):
        super().__init__()
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        self.shards = expand_shards(shards)
        self.cfg, self.rank, self.world_size = data_cfg, rank, world_size
        self.shuffle, self.repeat, self.decode = shuffle, repeat, decode
        self.track_position, self.block = track_position, block
        self.epoch = 0
        self.resume: tp.Dict[int, tp.Dict[str, tp.Any]] = {}
        self.worker_offset = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_from(self, positions: tp.Mapping[int, tp.Mapping[str, tp.Any]], worker_offset: int = 0) -> None:
        """Continue each reader from its saved ``"__pos__"`` (reader id -> position; a reader without one starts
        at the beginning). ``worker_offset``: dataloader worker ``w`` plays reader ``(w + offset) % workers`` of this
        rank, so the first batch after resume comes from the reader whose turn it was (batches alternate workers)."""
        self.resume = {int(k): dict(v) for k, v in positions.items()}
        self.worker_offset = worker_offset

    def _reader(self) -> tp.Tuple[int, int]:
        """(global reader id, number of readers) over ranks x dataloader workers."""
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * nw + (wid + self.worker_offset) % nw, self.world_size * nw

    def assignment(self, epoch: int, reader: int, readers: int) -> tp.Tuple[tp.List[str], int, int]:
        """(shards this reader opens, sample stride, sample offset) for one epoch."""
        order = list(self.shards)
        if self.shuffle:
            random.Random(f"shards:{self.cfg.seed}:{epoch}").shuffle(order)
        if len(order) >= readers and not self.block:
            return order[reader::readers], 1, 0
        return order, readers, reader  # few shards: split at sample level so every reader gets work

    def _epoch_samples(self, epoch: int, start: tp.Sequence[int] = (0, 0, 0)
                       ) -> tp.Iterator[tp.Tuple[tp.Tuple[int, int], tp.Dict[str, tp.Any], tp.Tuple[int, int, int]]]:
        """(ref, raw sample, position after it) of this reader for one epoch, in shard order, from ``start``.

        ``ref`` = (index in this epoch's shard list, index in the shard); a position = (shard, sample in it,
        samples of the epoch's shard list passed so far), the point the next sample is read from.
        """
        reader, readers = self._reader()
        shards, stride, offset = self.assignment(epoch, reader, readers)
        block = max(1, self.block)
        cursor, member, i = start
        for c in range(cursor, len(shards)):
            first = member if c == cursor else 0
            for m, raw in indexed_tar_samples(shards[c], skip=first):
                take = (i // block) % stride == offset
                i += 1
                if take:
                    yield (c, m), raw, (c, m + 1, i)

    def _fetch(self, epoch: int, refs: tp.Sequence[tp.Sequence[int]]) -> tp.List[tp.Dict[str, tp.Any]]:
        """Raw samples of saved buffer references, in the given order (one pass per shard they come from)."""
        reader, readers = self._reader()
        shards, _, _ = self.assignment(epoch, reader, readers)
        by_shard: tp.Dict[int, tp.Set[int]] = {}
        for c, m in refs:
            by_shard.setdefault(int(c), set()).add(int(m))
        got: tp.Dict[tp.Tuple[int, int], tp.Dict[str, tp.Any]] = {}
        for c, wanted in sorted(by_shard.items()):
            for m, raw in indexed_tar_samples(shards[c], skip=min(wanted), want=wanted):
                got[(c, m)] = raw
        missing = [tuple(r) for r in refs if (int(r[0]), int(r[1])) not in got]
        if missing:
            raise DataError(f"resume: shuffle-buffer samples {missing[:3]} are gone from their shards (did the shards "
                            "change since the checkpoint?)")
        return [got[(int(c), int(m))] for c, m in refs]

    def _shuffled(self, it, epoch: int, state: tp.Optional[tp.Mapping[str, tp.Any]] = None):
        """Buffer shuffle of ``_epoch_samples`` output, yielding (raw, position dict after it)."""
        reader, readers = self._reader()
        base = {"reader": reader, "readers": readers, "epoch": epoch}
        size = self.cfg.shuffle_buffer
        pos = tuple(state["input"]) if state else (0, 0, 0)
        if not self.shuffle or size <= 1:
            for _, x, pos in it:
                yield x, {**base, "input": pos, "rng": None, "buf": [], "drain": False}
            return
        rng = random.Random(f"samples:{self.cfg.seed}:{epoch}:{reader}:{readers}")
        refs: tp.List[tp.Tuple[int, int]] = []
        buf: tp.List[tp.Any] = []
        if state is not None:
            refs = [tuple(r) for r in state["buf"]]
            buf = self._fetch(epoch, refs)
            if state["drain"]:  # input was exhausted and the buffer shuffled: the rest of it, in order
                for k, x in enumerate(buf):
                    yield x, {**base, "input": pos, "rng": None, "buf": refs[k + 1:], "drain": True}
                return
            rng.setstate(_rng_state(state["rng"]))
        for ref, x, pos in it:
            if len(buf) < size:
                buf.append(x)
                refs.append(ref)
                continue
            j = rng.randrange(size)
            buf[j], x = x, buf[j]
            refs[j] = ref
            yield x, {**base, "input": pos, "rng": rng.getstate(), "buf": list(refs), "drain": False}
        order = list(range(len(buf)))
        rng.shuffle(order)  # the same permutation rng.shuffle(buf) makes
        refs = [refs[k] for k in order]
        for n, k in enumerate(order):
            yield buf[k], {**base, "input": pos, "rng": None, "buf": refs[n + 1:], "drain": True}

    def _decoded(self, raws):
        """(raw, position) -> decoded samples (position attached when tracked); unreadable samples are skipped."""
        for raw, pos in raws:
            try:
                sample = decode_sample(raw, self.cfg)
            except DataError:
                raise  # stale shards vs config: the user must fix this, not skip everything
            except Exception as err:
                log.warning("skip sample %s: %s", raw.get("__key__"), err)
                continue
            if self.track_position:
                sample["__pos__"] = pos
            yield sample

    def _from_cache(self, epoch: int, state: tp.Optional[tp.Mapping[str, tp.Any]] = None):
        """``data.cache_decoded``: the first epoch streams (and keeps) decoded samples, later epochs are
        permutations of the kept list, seeded like the stream (seed, epoch, reader).

        Resume re-streams the first epoch into the cache (decoding the dataset once, as a fresh start of this mode
        does, whatever the step) and continues at the saved epoch and count."""
        reader, readers = self._reader()
        first = state["first_epoch"] if state else epoch
        base = {"reader": reader, "readers": readers, "cache": True, "first_epoch": first}
        cache: tp.List[tp.Dict[str, tp.Any]] = []
        skip = state["n"] if state and state["epoch"] == first else None
        for sample in self._decoded(self._shuffled(self._epoch_samples(first), first)):
            sample.pop("__pos__", None)
            cache.append(sample)
            if state is None or (skip is not None and len(cache) > skip):
                yield self._tag(sample, {**base, "epoch": first, "n": len(cache)})
        epoch, start = first, 0
        if state is not None and state["epoch"] != first:
            epoch, start = state["epoch"] - 1, state["n"]
        while self.repeat:
            epoch += 1
            order = list(range(len(cache)))
            if self.shuffle:
                random.Random(f"cache:{self.cfg.seed}:{epoch}:{reader}:{readers}").shuffle(order)
            for n in range(start, len(order)):
                yield self._tag(cache[order[n]], {**base, "epoch": epoch, "n": n + 1})
            start = 0

    def _tag(self, sample: tp.Dict[str, tp.Any], pos: tp.Dict[str, tp.Any]) -> tp.Dict[str, tp.Any]:
        return {**sample, "__pos__": pos} if self.track_position else sample

    def __iter__(self) -> tp.Iterator[tp.Dict[str, tp.Any]]:
        reader, readers = self._reader()
        state = self.resume.get(reader)
        if state is not None and state.get("readers") != readers:
            raise DataError(f"resume: the saved stream position was made by {state.get('readers')} readers (ranks x "
                            f"data.num_workers), this run has {readers}: resume with the same layout")
        if self.cfg.cache_decoded and self.decode:
            yield from self._from_cache(self.epoch, state)
            return
        epoch = state["epoch"] if state else self.epoch
        while True:
            # The buffer holds compressed samples (~50 KB), decoding happens on the way out: a decoded paper clip
            # is 96 x 224² x 3 = 14 MB, so a 2000-clip buffer of decoded frames would need 29 GB per worker.
            start = tuple(state["input"]) if state else (0, 0, 0)
            raws = self._shuffled(self._epoch_samples(epoch, start), epoch, state)
            yield from (self._decoded(raws) if self.decode else (x for x, _ in raws))
            state = None
            if not self.repeat:
                return
            epoch += 1


def is_unpaired(i: int, fraction: float) -> bool:
    """Whether clip ``i`` (0-based, per reader) of a mixed stream is drawn from the music-only stream.

    Exact interleaving instead of coin flips: after ``n`` clips, ``floor(n·f)`` of them are music-only, so every
    window of a run holds the configured share (no batch is all music by chance) and the choice needs no RNG state
    to resume. f = 1/3 gives paired, paired, music, paired, paired, music, ..."""
    return math.floor((i + 1) * fraction + 1e-9) > math.floor(i * fraction + 1e-9)


class MixedStream(IterableDataset):
    """Paired and music-only samples interleaved at ``fraction`` (``data.unpaired_fraction``, issue 25).

    Each part is its own :class:`ShardStream` (its shards split over ranks and workers, shuffled, repeated), so a
    music-only corpus of any size mixes in at a fixed ratio. Position: both parts' positions and the count ``n`` of
    clips this reader has given, so :meth:`resume_from` continues both parts and the interleaving exactly.
    """

    def __init__(self, paired: ShardStream, unpaired: ShardStream, fraction: float):
        super().__init__()
        if not 0.0 < fraction < 1.0:
            raise DataError(f"data.unpaired_fraction must be in (0, 1) to mix music-only clips, got {fraction}")
        self.paired, self.unpaired, self.fraction = paired, unpaired, fraction
        self.track_position = paired.track_position
        self.resume: tp.Dict[int, tp.Dict[str, tp.Any]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.paired.set_epoch(epoch)
        self.unpaired.set_epoch(epoch)

    def resume_from(self, positions: tp.Mapping[int, tp.Mapping[str, tp.Any]], worker_offset: int = 0) -> None:
        self.resume = {int(k): dict(v) for k, v in positions.items()}
        parts = {name: {k: v[name] for k, v in self.resume.items() if v.get(name) is not None}
                 for name in ("paired", "unpaired")}
        self.paired.resume_from(parts["paired"], worker_offset)
        self.unpaired.resume_from(parts["unpaired"], worker_offset)

    def __iter__(self) -> tp.Iterator[tp.Dict[str, tp.Any]]:
        reader, readers = self.paired._reader()
        state = self.resume.get(reader, {})
        n = int(state.get("n", 0))
        last = {"paired": state.get("paired"), "unpaired": state.get("unpaired")}
        its = {"paired": iter(self.paired), "unpaired": iter(self.unpaired)}
        while True:
            part = "unpaired" if is_unpaired(n, self.fraction) else "paired"
            try:
                sample = next(its[part])
            except StopIteration:  # a part without repeat ran out: the mixed epoch ends with it
                return
            n += 1
            if self.track_position:
                last[part] = sample.pop("__pos__", None)
                sample["__pos__"] = {"reader": reader, "readers": readers, "n": n, **last}
            yield sample


def _rng_state(state: tp.Sequence[tp.Any]) -> tp.Tuple[tp.Any, ...]:
    """``random.Random.getstate()`` back from its saved (possibly list-ified) form."""
    version, internal, gauss = state
    return int(version), tuple(int(v) for v in internal), gauss


def num_clips(shards: tp.Union[str, tp.Sequence[str]]) -> tp.Optional[int]:
    """Clips in a shard list from the ``<split>.index.json`` files beside them (None when no index is found)."""
    names = {Path(s).name: s for s in expand_shards(shards)}
    counts: tp.Dict[str, int] = {}
    for folder in {Path(s).parent for s in names.values()}:
        for index in folder.glob("*.index.json"):
            for sh in json.loads(index.read_text())["shards"]:
                counts[sh["name"]] = sh["num_clips"]
    return sum(counts[n] for n in names) if all(n in counts for n in names) else None


def build_loader(data_cfg: "DataConfig", shards: tp.Union[str, tp.Sequence[str], None] = None, rank: int = 0,
                 world_size: int = 1, train: bool = True, repeat: bool = False, epoch: int = 0,
                 batch_size: tp.Optional[int] = None, num_workers: tp.Optional[int] = None,
                 track_position: bool = False, block: int = 0) -> DataLoader:
    """``DataLoader`` over :class:`ShardStream` yielding DEVELOPERS.md batch dicts.

    Args:
        data_cfg: ``vmas.config.DataConfig`` (batch_size, num_workers, shuffle_buffer, seed, sizes).
        shards: pattern or list; default ``data_cfg.train_shards`` (train) or ``data_cfg.val_shards``.
        rank / world_size: data-parallel position (global over nodes).
        train: shuffle and drop the last incomplete batch; False = fixed order, keep every clip.
        repeat: infinite stream over epochs (training by steps).
        epoch: starting epoch (reshuffles); also ``loader.dataset.set_epoch(e)`` between epochs.
        track_position: batches carry ``"__pos__"``, the stream position after them (O(1) resume through
            ``loader.dataset.resume_from``); ``block``: see :class:`ShardStream` (sharded validation).
    """
    shards = shards if shards is not None else (data_cfg.train_shards if train else data_cfg.val_shards)
    if not shards:
        raise DataError(f"no shards given: set data.{'train' if train else 'val'}_shards (e.g. data/shards/train-*.tar)")
    ds: IterableDataset = ShardStream(shards, data_cfg, rank=rank, world_size=world_size, shuffle=train,
                                      repeat=repeat, track_position=track_position, block=block)
    if train and data_cfg.unpaired_fraction > 0:  # issue 25: music-only clips mixed in; 0 = the line above alone
        if not data_cfg.unpaired_shards:
            raise DataError(f"data.unpaired_fraction={data_cfg.unpaired_fraction} but data.unpaired_shards is empty: "
                            "point it at music-only shards (tools/preprocess_music.py) or set the fraction to 0")
        music = ShardStream(data_cfg.unpaired_shards, data_cfg, rank=rank, world_size=world_size, shuffle=True,
                            repeat=repeat, track_position=track_position)
        ds = MixedStream(ds, music, data_cfg.unpaired_fraction)
    ds.set_epoch(epoch)
    workers = data_cfg.num_workers if num_workers is None else num_workers
    return DataLoader(ds, batch_size=batch_size or data_cfg.batch_size, num_workers=workers, collate_fn=collate,
                      drop_last=train, persistent_workers=False, pin_memory=torch.cuda.is_available())
