"""Manifest -> WebDataset-style tar shards that a cluster can stream (SPEC §6.5).

One sample per 10 s clip, stored as consecutive tar members ``<key>.<ext>`` (readable by ``webdataset`` and by
:mod:`vmas.data.loader`):

=================  =================================================================================
``frames.mp4``     H.264 (x264 CRF ``frame_quality``) of the clip's ``num_frames`` frames at 9.6 fps, 224²
``frames.jpgs``    alternative (``frame_format: jpg``): ``b"JPGS"``, uint32 count, uint32 sizes, JPEG bytes
``codes.npy``      int16 ``[K, Ta]`` EnCodec codes (Ta = round(clip_seconds * 50))
``music_beats.npy`` bool ``[Ta]``; ``motion.npy`` float32 ``[T-1]``; ``beat_weights.npy`` float32 ``[Ta]``
``tags.txt``       comma-separated tags (may be empty)
``json``           meta: key, source_id, video, start, duration, split, sizes, rates, frame_times (s, clip-relative)
=================  =================================================================================

Resumable and crash-safe: shard ``i`` of a split always holds the same manifest clips (manifest order, chunks of
``clips_per_shard``); it is written to ``<name>.tar.tmp.<pid>``, renamed, then a done-marker ``<name>.tar.done``
(JSON: planned keys digest, clip count, bytes, rejects) is written the same way. A re-run skips every shard whose
marker matches its plan, so a crash loses at most the shards in progress. ``<split>.index.json`` lists the finished
shards and their clip counts (the loader uses it for epoch sizes).

The codec and the alignment precompute are injected as *factories* (called once per worker process), so tests can
pass cheap fakes and workers never share a model across a fork.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import struct
import tarfile
import time
import typing as tp
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from vmas.errors import DataError

if tp.TYPE_CHECKING:
    from vmas.config import DataConfig, LossConfig

log = logging.getLogger(__name__)

# wav float [B, 1, N] -> codes long [B, K, T>=Ta]
EncodeFn = tp.Callable[[torch.Tensor], torch.Tensor]
# (wav float [N], frames uint8 [T, H, W, 3]) -> {music_beats bool [Ta], motion float [T-1], beat_weights float [Ta]}
AlignFn = tp.Callable[[torch.Tensor, torch.Tensor], tp.Mapping[str, torch.Tensor]]
EncoderFactory = tp.Callable[[], EncodeFn]
AlignFactory = tp.Callable[[], AlignFn]


# ------------------------------------------------------------------------------------------------ frames codec
def encode_frames(frames: np.ndarray, fmt: str = "mp4", quality: int = 23, fps: float = 9.6) -> bytes:
    """uint8 [T, H, W, 3] -> compressed bytes (``mp4``: H.264 yuv420p, ``jpg``: packed JPEGs)."""
    frames = np.ascontiguousarray(frames)
    T, H, W, C = frames.shape
    assert C == 3, f"expected frames [T, H, W, 3], got {frames.shape}"
    if fmt == "mp4":
        import av

        if H % 2 or W % 2:
            raise DataError(f"mp4 frames need even height/width, got {H}x{W}: use an even data.image_size")
        buf = io.BytesIO()
        with av.open(buf, "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
            stream.options = {"crf": str(quality), "preset": "fast"}
            for frame in frames:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            out.mux(stream.encode())  # flush
        return buf.getvalue()
    if fmt == "jpg":
        from PIL import Image

        blobs = []
        for frame in frames:
            b = io.BytesIO()
            Image.fromarray(frame).save(b, format="JPEG", quality=int(quality))
            blobs.append(b.getvalue())
        return b"JPGS" + struct.pack(f"<I{T}I", T, *(len(b) for b in blobs)) + b"".join(blobs)
    raise DataError(f"data.frame_format '{fmt}' is not supported: use mp4 or jpg")


def decode_frames(data: bytes, fmt: str = "mp4") -> np.ndarray:
    """Inverse of :func:`encode_frames` -> uint8 [T, H, W, 3]."""
    if fmt == "mp4":
        import av

        with av.open(io.BytesIO(data), "r") as src:
            return np.stack([f.to_ndarray(format="rgb24") for f in src.decode(video=0)])
    if fmt == "jpg":
        from PIL import Image

        if data[:4] != b"JPGS":
            raise DataError("frames.jpgs: bad header (not written by vmas.data.shards)")
        (T,) = struct.unpack_from("<I", data, 4)
        sizes = struct.unpack_from(f"<{T}I", data, 8)
        pos, out = 8 + 4 * T, []
        for n in sizes:
            out.append(np.asarray(Image.open(io.BytesIO(data[pos: pos + n])).convert("RGB")))
            pos += n
        return np.stack(out)
    raise DataError(f"unknown frame format '{fmt}' (mp4 or jpg)")


FRAME_EXT = {"mp4": "frames.mp4", "jpg": "frames.jpgs"}


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


# --------------------------------------------------------------------------------------------- default factories
def codec_encoder(make_codec: tp.Callable[[], torch.nn.Module], device: str = "cpu") -> EncodeFn:
    """EncodeFn over the codec that ``make_codec()`` builds (picklable, e.g. ``partial(vmas.builders.build_codec,
    cfg.model.codec)``: shards receive the codec's builder, they never read the model config themselves)."""
    torch.manual_seed(0)  # a random codec (tests, smoke runs): same weights in every worker and every re-run
    codec = make_codec().to(device)

    def encode(wav: torch.Tensor) -> torch.Tensor:
        return codec.encode(wav.to(device)).cpu()  # [B, K, T]

    return encode


def alignment_fn(loss_cfg: "LossConfig", sample_rate: int, fps: float, frame_rate: float, num_music_frames: int,
                 device: str = "cpu") -> AlignFn:
    """AlignFn over :func:`vmas.alignment.precompute_alignment` (music onsets, motion curve, beat weights)."""
    from vmas.alignment import precompute_alignment

    def align(wav: torch.Tensor, frames: tp.Optional[torch.Tensor]) -> tp.Mapping[str, torch.Tensor]:
        if frames is None:  # music-only clip (issue 25): see music_only_alignment
            return music_only_alignment(wav, sample_rate, num_music_frames, loss_cfg, frame_rate)
        return precompute_alignment(wav, sample_rate, frames, fps, num_music_frames, loss_cfg, frame_rate=frame_rate,
                                    device=device)

    return align


def music_only_alignment(wav: torch.Tensor, sample_rate: int, num_music_frames: int, loss_cfg: "LossConfig",
                         frame_rate: float = 50.0) -> tp.Dict[str, torch.Tensor]:
    """Alignment signals of a clip without video (issue 25): the music's own onsets and beat weights from them only.

    With no picture there is no video beat to overlap with, so every onset counts as aligned: ``W[t] = 1`` at the
    music's onset frames and ``λ`` elsewhere (:func:`vmas.alignment.beat_weights` with video beats everywhere).
    λ keeps its meaning of "weight of a frame that is not a beat the model should place", relative to the beats;
    λ = 1 is still the plain objective. No motion curve (the loader fills zeros and marks the clip ``has_video``
    False).
    """
    from vmas.alignment import beat_weights, music_beats

    bm = music_beats(wav, sample_rate, frame_rate=int(round(frame_rate)), num_frames=num_music_frames)  # [Ta]
    w = beat_weights(bm, torch.ones_like(bm, dtype=torch.bool), delta=loss_cfg.beat_delta, lam=loss_cfg.beat_lambda)
    return {"music_beats": bm, "beat_weights": w}


def default_factories(data_cfg: "DataConfig", loss_cfg: "LossConfig", make_codec: tp.Callable[[], torch.nn.Module],
                      device: str = "cpu") -> tp.Tuple[EncoderFactory, AlignFactory]:
    """Picklable (encoder, align) factories: the codec from ``make_codec`` (see :func:`codec_encoder`), the
    alignment signals from ``loss_cfg`` on ``data_cfg``'s clip grid."""
    d = data_cfg
    ta = round(d.clip_seconds * d.frame_rate)
    return (functools.partial(codec_encoder, make_codec, device),
            functools.partial(alignment_fn, loss_cfg, d.sample_rate, d.fps, float(d.frame_rate), ta, device))


# ------------------------------------------------------------------------------------------------ one clip
def make_sample(row: tp.Mapping[str, tp.Any], data_cfg: "DataConfig", encode: EncodeFn, align: AlignFn
                ) -> tp.Dict[str, bytes]:
    """Read, tokenize and precompute one manifest clip -> tar members ``{ext: bytes}`` (plus ``__key__``)."""
    from vmas.data import media

    if row.get("video") is None:  # music-only clip (issue 25): no frames member
        return make_music_sample(row, data_cfg, encode, align)
    d = data_cfg
    T, Ta, N = d.num_frames, round(d.clip_seconds * d.frame_rate), round(d.clip_seconds * d.sample_rate)
    start = float(row["start"])
    frames, times, _ = media.read_video_frames(row["video"], fps=d.fps, size=d.image_size, start=start,
                                               duration=d.clip_seconds)  # [T, S, S, 3]
    if frames.shape[0] != T:
        raise DataError(f"data.num_frames={T} but clip_seconds*fps gives {frames.shape[0]} frames: "
                        f"set data.num_frames to round(clip_seconds * fps)")
    wav = media.read_audio(row.get("audio") or row["video"], sr=d.sample_rate, start=start, duration=d.clip_seconds)
    wav = torch.as_tensor(wav, dtype=torch.float32)[:N]  # [N]
    codes = encode(wav[None, None])  # [1, K, T']
    if codes.shape[-1] < Ta:
        raise DataError(f"codec gave {codes.shape[-1]} frames for {d.clip_seconds} s, expected >= {Ta}: "
                        f"data.frame_rate must equal the codec's frame rate")
    codes = codes[0, :, :Ta]  # [K, Ta]
    al = align(wav, torch.as_tensor(frames))
    beats = torch.as_tensor(al["music_beats"]).bool()[:Ta]  # [Ta]
    motion = torch.as_tensor(al["motion"]).float()  # [T-1]
    weights = torch.as_tensor(al["beat_weights"]).float()[:Ta]  # [Ta]
    assert beats.shape == (Ta,) and weights.shape == (Ta,) and motion.shape == (T - 1,), \
        f"alignment shapes {tuple(beats.shape)}, {tuple(motion.shape)}, {tuple(weights.shape)}; want [{Ta}], [{T - 1}]"
    assert int(codes.max()) < 2**15, "codes stored as int16"
    meta = {"key": row["key"], "source_id": row.get("source_id", ""), "video": row["video"], "start": start,
            "duration": d.clip_seconds, "split": row.get("split", ""), "fps": d.fps, "frame_rate": d.frame_rate,
            "sample_rate": d.sample_rate, "num_frames": T, "image_size": d.image_size, "frame_format": d.frame_format,
            "n_q": int(codes.shape[0]), "frame_times": [round(float(t) - start, 6) for t in np.asarray(times)]}
    return {
        "__key__": row["key"],
        FRAME_EXT[d.frame_format]: encode_frames(np.asarray(frames), d.frame_format, d.frame_quality, d.fps),
        "codes.npy": _npy(codes.numpy().astype(np.int16)),
        "music_beats.npy": _npy(beats.numpy()),
        "motion.npy": _npy(motion.numpy().astype(np.float32)),
        "beat_weights.npy": _npy(weights.numpy().astype(np.float32)),
        "tags.txt": str(row.get("tags") or "").encode(),
        "json": json.dumps(meta).encode(),
    }


def make_music_sample(row: tp.Mapping[str, tp.Any], data_cfg: "DataConfig", encode: EncodeFn, align: AlignFn
                      ) -> tp.Dict[str, bytes]:
    """A manifest clip without video (``"video": null``, audio in ``row["audio"]``) -> tar members without frames.

    ``align(wav, None)`` gives the music-only signals (:func:`music_only_alignment`); ``json`` says
    ``"has_video": false`` and the loader fills zero frames / motion for the batch layout (issue 25)."""
    from vmas.data import media

    d = data_cfg
    Ta, N = round(d.clip_seconds * d.frame_rate), round(d.clip_seconds * d.sample_rate)
    start = float(row["start"])
    if not row.get("audio"):
        raise DataError(f"music-only clip {row.get('key')}: no 'audio' path in its manifest row")
    wav = media.read_audio(row["audio"], sr=d.sample_rate, start=start, duration=d.clip_seconds)
    wav = torch.as_tensor(wav, dtype=torch.float32)[:N]  # [N]
    if wav.shape[-1] < N:
        raise DataError(f"music-only clip {row.get('key')}: {wav.shape[-1] / d.sample_rate:.2f} s of audio from "
                        f"{start:g} s, shorter than the {d.clip_seconds:g} s clip")
    codes = encode(wav[None, None])  # [1, K, T']
    if codes.shape[-1] < Ta:
        raise DataError(f"codec gave {codes.shape[-1]} frames for {d.clip_seconds} s, expected >= {Ta}: "
                        f"data.frame_rate must equal the codec's frame rate")
    codes = codes[0, :, :Ta]  # [K, Ta]
    al = align(wav, None)
    beats = torch.as_tensor(al["music_beats"]).bool()[:Ta]  # [Ta]
    weights = torch.as_tensor(al["beat_weights"]).float()[:Ta]  # [Ta]
    assert beats.shape == (Ta,) and weights.shape == (Ta,), f"alignment shapes {tuple(beats.shape)}, want [{Ta}]"
    assert int(codes.max()) < 2**15, "codes stored as int16"
    meta = {"key": row["key"], "source_id": row.get("source_id", ""), "video": None, "has_video": False,
            "audio": row["audio"], "start": start, "duration": d.clip_seconds, "split": row.get("split", ""),
            "frame_rate": d.frame_rate, "sample_rate": d.sample_rate, "n_q": int(codes.shape[0])}
    return {
        "__key__": row["key"],
        "codes.npy": _npy(codes.numpy().astype(np.int16)),
        "music_beats.npy": _npy(beats.numpy()),
        "beat_weights.npy": _npy(weights.numpy().astype(np.float32)),
        "tags.txt": str(row.get("tags") or "").encode(),
        "json": json.dumps(meta).encode(),
    }


# ------------------------------------------------------------------------------------------------ shard plans
@dataclasses.dataclass
class ShardPlan:
    """The clips of one shard: fixed by manifest order, so a re-run rebuilds exactly the same shard."""

    name: str  # "train-000003.tar"
    rows: tp.List[dict]

    @property
    def digest(self) -> str:
        return hashlib.sha1("\n".join(r["key"] for r in self.rows).encode()).hexdigest()


def read_manifest(path: tp.Union[str, Path]) -> tp.List[dict]:
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise DataError(f"{path}:{n + 1}: not JSON (manifest lines come from datasets.disco_mv)") from None
    return rows


def plan_shards(rows: tp.Sequence[dict], split: str, clips_per_shard: int) -> tp.List[ShardPlan]:
    """Chunks of ``clips_per_shard`` manifest rows of ``split`` (the last shard may be partial)."""
    mine = [r for r in rows if r.get("split", "train") == split]
    return [ShardPlan(f"{split}-{i // clips_per_shard:06d}.tar", list(mine[i: i + clips_per_shard]))
            for i in range(0, len(mine), clips_per_shard)]


def _marker(out_dir: Path, plan: ShardPlan) -> Path:
    return out_dir / f"{plan.name}.done"


def is_done(out_dir: Path, plan: ShardPlan) -> bool:
    """A shard is finished iff its tar and its done-marker exist and the marker matches the plan."""
    marker = _marker(out_dir, plan)
    if not (marker.is_file() and (out_dir / plan.name).is_file()):
        return False
    try:
        done = json.loads(marker.read_text())
    except ValueError:
        return False
    if done.get("digest") != plan.digest:
        raise DataError(f"{out_dir / plan.name} was written from a different manifest: write to a fresh --out "
                        f"folder (or delete its shards) when the manifest changes")
    return True


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_shard(plan: ShardPlan, out_dir: Path, data_cfg: "DataConfig", encode: EncodeFn, align: AlignFn) -> dict:
    """Write one shard (tmp file + rename, then its done-marker). Bad clips become rejects, never exceptions."""
    t0 = time.perf_counter()
    final = out_dir / plan.name
    tmp = final.with_name(f"{final.name}.tmp.{os.getpid()}")
    rejects, written = [], 0
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for row in plan.rows:
            try:
                sample = make_sample(row, data_cfg, encode, align)
            except Exception as err:  # one bad clip never stops the shard
                text = str(err).strip().splitlines()
                rejects.append({"key": row.get("key"), "video": row.get("video"), "start": row.get("start"),
                                "reason": "preprocess_failed",
                                "detail": f"{type(err).__name__}: {text[0] if text else ''}"})
                log.warning("skip %s: %s", row.get("key"), rejects[-1]["detail"])
                continue
            key = sample.pop("__key__")
            for ext, data in sample.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed mtime: identical bytes on re-run
                tar.addfile(info, io.BytesIO(data))
            written += 1
    os.replace(tmp, final)
    result = {"shard": plan.name, "digest": plan.digest, "num_clips": written, "bytes": final.stat().st_size,
              "rejects": rejects, "seconds": round(time.perf_counter() - t0, 3)}
    _atomic_write_bytes(_marker(out_dir, plan), json.dumps(result).encode())
    return result


# ------------------------------------------------------------------------------------------------ driver
_WORKER: tp.Dict[str, tp.Any] = {}


def _init_worker(encoder_factory: EncoderFactory, align_factory: AlignFactory, data_cfg: "DataConfig",
                 out_dir: str) -> None:
    torch.set_num_threads(1)  # parallelism comes from processes
    _WORKER.update(encode=encoder_factory(), align=align_factory(), cfg=data_cfg, out=Path(out_dir))


def _work(plan: ShardPlan) -> dict:
    return write_shard(plan, _WORKER["out"], _WORKER["cfg"], _WORKER["encode"], _WORKER["align"])


def write_shards(manifest: tp.Union[str, Path, tp.Sequence[dict]], out_dir: tp.Union[str, Path],
                 data_cfg: "DataConfig", encoder_factory: EncoderFactory, align_factory: AlignFactory,
                 splits: tp.Sequence[str] = ("train", "val", "test"), workers: int = 0,
                 on_shard_done: tp.Optional[tp.Callable[[dict], None]] = None) -> dict:
    """Write every unfinished shard of ``splits``; returns a summary (counts, clips/s, bytes/clip).

    Args:
        manifest: path of ``manifest.jsonl`` or its rows.
        out_dir: shard folder (``<split>-NNNNNN.tar`` + ``.done`` markers + ``<split>.index.json``).
        encoder_factory / align_factory: called once per worker process to build the codec / alignment callables.
        workers: 0 = in this process; N = N spawned processes, one shard at a time each.
        on_shard_done: called with each finished shard's result (progress bars, tests that inject a crash).
    """
    rows = read_manifest(manifest) if isinstance(manifest, (str, Path)) else list(manifest)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.tmp.*"):  # leftovers of a crashed run: never valid, always safe to drop
        stale.unlink()
    plans = [p for s in splits for p in plan_shards(rows, s, data_cfg.clips_per_shard)]
    todo = [p for p in plans if not is_done(out, p)]
    log.info("%d shards planned, %d already done, %d to write", len(plans), len(plans) - len(todo), len(todo))
    t0 = time.perf_counter()
    fresh: tp.List[dict] = []
    if todo and workers > 0:
        ctx = mp.get_context("spawn")  # fork after torch threads start can deadlock
        with ctx.Pool(workers, _init_worker, (encoder_factory, align_factory, data_cfg, str(out))) as pool:
            for res in pool.imap_unordered(_work, todo):
                fresh.append(res)
                if on_shard_done:
                    on_shard_done(res)
    elif todo:
        encode, align = encoder_factory(), align_factory()
        for plan in todo:
            fresh.append(write_shard(plan, out, data_cfg, encode, align))
            if on_shard_done:
                on_shard_done(fresh[-1])
    elapsed = time.perf_counter() - t0
    return _finish(out, plans, splits, fresh, elapsed)


def _finish(out: Path, plans: tp.Sequence[ShardPlan], splits: tp.Sequence[str], fresh: tp.Sequence[dict],
            elapsed: float) -> dict:
    """Per-split index files and an aggregated rejects file, rebuilt from the done-markers (so re-runs agree)."""
    results = {p.name: json.loads(_marker(out, p).read_text()) for p in plans}
    for split in splits:
        mine = [results[p.name] for p in plans if p.name.startswith(f"{split}-")]
        if mine:
            index = {"split": split, "num_clips": sum(r["num_clips"] for r in mine),
                     "shards": [{"name": r["shard"], "num_clips": r["num_clips"], "bytes": r["bytes"]} for r in mine]}
            _atomic_write_bytes(out / f"{split}.index.json", json.dumps(index, indent=1).encode())
    rejects = [rj for r in results.values() for rj in r["rejects"]]
    _atomic_write_bytes(out / "preprocess_rejects.jsonl", "".join(json.dumps(r) + "\n" for r in rejects).encode())
    clips = sum(r["num_clips"] for r in results.values())
    total_bytes = sum(r["bytes"] for r in results.values())
    new_clips = sum(r["num_clips"] + len(r["rejects"]) for r in fresh)
    summary = {"shards": len(plans), "shards_written": len(fresh), "shards_skipped": len(plans) - len(fresh),
               "clips": clips, "rejected": len(rejects), "bytes": total_bytes,
               "bytes_per_clip": round(total_bytes / clips) if clips else 0, "seconds": round(elapsed, 3),
               "clips_per_s": round(new_clips / elapsed, 3) if fresh and elapsed > 0 else 0.0}
    _atomic_write_bytes(out / "preprocess_summary.json", json.dumps(summary, indent=1).encode())
    return summary
