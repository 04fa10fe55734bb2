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

A music-only clip (manifest ``"video": null`` with an ``audio`` path, issue 25: :mod:`vmas.data.music_only`) has no
frames member and no ``motion.npy``; its ``json`` says ``"has_video": false`` (:func:`make_music_sample`).

Resumable and crash-safe: shard ``i`` of a split always holds the same manifest clips (manifest order, chunks of
``clips_per_shard``); it is written to ``<name>.tar.tmp.<host>.<pid>``, renamed, then a done-marker
``<name>.tar.done`` (JSON: planned keys digest, clip count, bytes, rejects) is written the same way. A re-run skips
every shard whose marker matches its plan, so a crash loses at most the shards in progress. ``<split>.index.json``
lists the finished shards and their clip counts (the loader uses it for epoch sizes).

Across processes and nodes (issue 20): shard ``i`` of the plan belongs to rank ``i mod world_size``
(:mod:`vmas.data.ranks` reads torchrun / SLURM / explicit ranks); a rank writes and cleans only its own shards, and
the rank that finds every marker present rebuilds the index (:func:`merge` does it by hand, partial runs included).
Within a rank, DataLoader workers run the CPU stage (:func:`load_clip`: decode, frame compression) ahead of the
device stage (:func:`process_clips`: one EnCodec call per ``data.preprocess.clip_batch`` clips, RAFT over all
their frame pairs at once). Shards do not depend on batch size, worker count or world size.

The codec and the alignment precompute are injected as *factories* (called once per writer process), so tests can
pass cheap fakes and workers never share a model across a fork. An ``AlignFn`` may offer ``batch(wavs, frames)``
(:class:`Aligner` does); plain callables are called clip by clip.
"""
from __future__ import annotations

import contextlib
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
    from vmas.data.ranks import RankInfo

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
            # One x264 thread: with its default frame threads the bytes differ from run to run on a busy machine
            # (same frames, same settings); shards must be reproducible, and writers parallelise over clips anyway.
            stream.options = {"crf": str(quality), "preset": "fast", "threads": "1"}
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
def _autocast(device: str, enabled: bool) -> tp.ContextManager:
    """bf16 autocast on CUDA when enabled; a no-op elsewhere (CPU bf16 is slower than fp32 and changes results)."""
    if enabled and str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def codec_encoder(make_codec: tp.Callable[[], torch.nn.Module], device: str = "cpu", amp: bool = False) -> EncodeFn:
    """EncodeFn over the codec that ``make_codec()`` builds (picklable, e.g. ``partial(vmas.builders.build_codec,
    cfg.model.codec)``: shards receive the codec's builder, they never read the model config themselves).

    It takes whole batches ``[B, 1, N]``: the encoder is convolutional/recurrent per item, so a batch gives the
    codes of each clip encoded alone (checked in tests) in far fewer device calls."""
    torch.manual_seed(0)  # a random codec (tests, smoke runs): same weights in every worker and every re-run
    codec = make_codec().to(device)

    def encode(wav: torch.Tensor) -> torch.Tensor:
        with _autocast(device, amp):
            return codec.encode(wav.to(device)).cpu()  # [B, K, T]

    return encode


class Aligner:
    """AlignFn over :func:`vmas.alignment.precompute_alignment` (music onsets, motion curve, beat weights), with a
    :meth:`batch` that runs RAFT over the frame pairs of several clips at once.

    ``align(wav [N], frames uint8 [T, H, W, 3] | None)`` -> dict (``None`` = music-only clip, see
    :func:`music_only_alignment`)."""

    def __init__(self, loss_cfg: "LossConfig", sample_rate: int, fps: float, frame_rate: float, num_music_frames: int,
                 device: str = "cpu", amp: bool = False):
        self.loss_cfg, self.sample_rate, self.fps, self.frame_rate = loss_cfg, sample_rate, fps, frame_rate
        self.num_music_frames, self.device, self.amp = num_music_frames, device, amp

    def __call__(self, wav: torch.Tensor, frames: tp.Optional[torch.Tensor]) -> tp.Mapping[str, torch.Tensor]:
        from vmas.alignment import precompute_alignment

        if frames is None:  # music-only clip (issue 25): see music_only_alignment
            return music_only_alignment(wav, self.sample_rate, self.num_music_frames, self.loss_cfg, self.frame_rate)
        with _autocast(self.device, self.amp):
            return precompute_alignment(wav, self.sample_rate, frames, self.fps, self.num_music_frames,
                                        self.loss_cfg, frame_rate=self.frame_rate, device=self.device)

    def batch(self, wavs: tp.Sequence[torch.Tensor], frames: tp.Sequence[tp.Optional[torch.Tensor]]
              ) -> tp.List[tp.Mapping[str, torch.Tensor]]:
        """Same results as ``[self(w, f) for ...]``; with RAFT, the frames of all clips go through one
        :func:`vmas.alignment.video_motion` call, chunked by ``loss.motion_batch`` pairs, so the device sees full
        batches even for short clips. Concatenating clips adds one pair across each boundary; it is computed and
        dropped (1 of ``T`` pairs: ~1 % at 96 frames)."""
        from vmas.alignment import beat_weights, load_raft, music_beats, video_beats, video_motion

        flow = self.loss_cfg.motion_flow
        video = [i for i, f in enumerate(frames) if f is not None]
        if flow == "farneback" or len(video) < 2:  # OpenCV on the CPU: nothing to batch
            return [self(w, f) for w, f in zip(wavs, frames)]
        clips = [torch.as_tensor(frames[i]) for i in video]  # uint8 [T_i, H, W, 3]
        model = load_raft(flow, self.loss_cfg.motion_weights or "DEFAULT", str(self.device))
        with _autocast(self.device, self.amp):
            curve = video_motion(torch.cat(clips), flow=flow, device=self.device, batch_size=self.loss_cfg.motion_batch,
                                 model=model)  # [sum T_i - 1]
        out: tp.List[tp.Optional[tp.Mapping[str, torch.Tensor]]] = [None] * len(frames)
        pos, c = 0, self.loss_cfg
        for i, clip in zip(video, clips):
            motion = curve[pos: pos + len(clip) - 1].float()  # [T_i - 1]; skips the boundary pair after it
            pos += len(clip)
            bm = music_beats(wavs[i], self.sample_rate, frame_rate=int(round(self.frame_rate)),
                             num_frames=self.num_music_frames)
            bv = video_beats(motion, num_frames=self.num_music_frames, window=c.beat_window, fps=self.fps,
                             frame_rate=self.frame_rate)
            out[i] = {"music_beats": bm, "motion": motion, "video_beats": bv,
                      "beat_weights": beat_weights(bm, bv, delta=c.beat_delta, lam=c.beat_lambda)}
        return [o if o is not None else self(wavs[i], None) for i, o in enumerate(out)]


def alignment_fn(loss_cfg: "LossConfig", sample_rate: int, fps: float, frame_rate: float, num_music_frames: int,
                 device: str = "cpu", amp: bool = False) -> AlignFn:
    """AlignFn over :func:`vmas.alignment.precompute_alignment` (see :class:`Aligner`)."""
    return Aligner(loss_cfg, sample_rate, fps, frame_rate, num_music_frames, device, amp)


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
    alignment signals from ``loss_cfg`` on ``data_cfg``'s clip grid; mixed precision from ``data.preprocess``."""
    d = data_cfg
    ta = round(d.clip_seconds * d.frame_rate)
    return (functools.partial(codec_encoder, make_codec, device, d.preprocess.codec_amp),
            functools.partial(alignment_fn, loss_cfg, d.sample_rate, d.fps, float(d.frame_rate), ta, device,
                              d.preprocess.flow_amp))


# ------------------------------------------------------------------------------------------------ one clip
@dataclasses.dataclass
class LoadedClip:
    """A manifest clip after the CPU stage (decode + frame compression), before the device stage.

    ``frames`` uint8 [T, S, S, 3] and ``frames_member`` (the compressed bytes) are None for a music-only clip;
    ``error`` is set instead of everything else when the clip could not be read."""

    row: dict
    wav: tp.Optional[torch.Tensor] = None  # float [N]
    frames: tp.Optional[torch.Tensor] = None  # uint8 [T, S, S, 3]
    frame_times: tp.Optional[tp.List[float]] = None  # clip-relative source times of the frames, s
    frames_member: tp.Optional[bytes] = None
    error: tp.Optional[str] = None


def load_clip(row: tp.Mapping[str, tp.Any], data_cfg: "DataConfig", compress: bool = True) -> LoadedClip:
    """CPU stage of one clip: frames (resized, cropped), mono audio at ``data.sample_rate`` and, with ``compress``,
    the frames member's bytes. Raises :class:`DataError` / media errors on bad clips (see :func:`try_load_clip`)."""
    from vmas.data import media

    d = data_cfg
    T, N = d.num_frames, round(d.clip_seconds * d.sample_rate)
    start = float(row["start"])
    if row.get("video") is None:  # music-only clip (issue 25): no frames member
        if not row.get("audio"):
            raise DataError(f"music-only clip {row.get('key')}: no 'audio' path in its manifest row")
        wav = torch.as_tensor(media.read_audio(row["audio"], sr=d.sample_rate, start=start,
                                               duration=d.clip_seconds), dtype=torch.float32)[:N]  # [N]
        if wav.shape[-1] < N:
            raise DataError(f"music-only clip {row.get('key')}: {wav.shape[-1] / d.sample_rate:.2f} s of audio from "
                            f"{start:g} s, shorter than the {d.clip_seconds:g} s clip")
        return LoadedClip(dict(row), wav)
    frames, times, _ = media.read_video_frames(row["video"], fps=d.fps, size=d.image_size, start=start,
                                               duration=d.clip_seconds)  # [T, S, S, 3]
    if frames.shape[0] != T:
        raise DataError(f"data.num_frames={T} but clip_seconds*fps gives {frames.shape[0]} frames: "
                        f"set data.num_frames to round(clip_seconds * fps)")
    wav = media.read_audio(row.get("audio") or row["video"], sr=d.sample_rate, start=start, duration=d.clip_seconds)
    wav = torch.as_tensor(wav, dtype=torch.float32)[:N]  # [N]
    frames = torch.as_tensor(np.ascontiguousarray(frames))
    member = encode_frames(frames.numpy(), d.frame_format, d.frame_quality, d.fps) if compress else None
    return LoadedClip(dict(row), wav, frames, [round(float(t) - start, 6) for t in np.asarray(times)], member)


def try_load_clip(row: tp.Mapping[str, tp.Any], data_cfg: "DataConfig") -> LoadedClip:
    """:func:`load_clip` that never raises: a bad clip comes back with ``error`` set (it becomes a reject)."""
    try:
        return load_clip(row, data_cfg)
    except Exception as err:  # one bad clip never stops a shard
        text = str(err).strip().splitlines()
        return LoadedClip(dict(row), error=f"{type(err).__name__}: {text[0] if text else ''}")


def _pack(clip: LoadedClip, codes: torch.Tensor, al: tp.Mapping[str, torch.Tensor], data_cfg: "DataConfig"
          ) -> tp.Dict[str, bytes]:
    """Device results of one clip -> tar members ``{ext: bytes}`` (plus ``__key__``). codes long [K, T'>=Ta]."""
    d, row = data_cfg, clip.row
    T, Ta = d.num_frames, round(d.clip_seconds * d.frame_rate)
    if codes.shape[-1] < Ta:
        raise DataError(f"codec gave {codes.shape[-1]} frames for {d.clip_seconds} s, expected >= {Ta}: "
                        f"data.frame_rate must equal the codec's frame rate")
    codes = codes[:, :Ta]  # [K, Ta]
    assert int(codes.max()) < 2**15, "codes stored as int16"
    beats = torch.as_tensor(al["music_beats"]).bool()[:Ta]  # [Ta]
    weights = torch.as_tensor(al["beat_weights"]).float()[:Ta]  # [Ta]
    start = float(row["start"])
    common = {"codes.npy": _npy(codes.numpy().astype(np.int16)), "music_beats.npy": _npy(beats.numpy())}
    tail = {"beat_weights.npy": _npy(weights.numpy().astype(np.float32)),
            "tags.txt": str(row.get("tags") or "").encode()}
    if clip.frames is None:  # music-only: no frames, no motion; json says has_video false
        assert beats.shape == (Ta,) and weights.shape == (Ta,), f"alignment shapes {tuple(beats.shape)}, want [{Ta}]"
        meta = {"key": row["key"], "source_id": row.get("source_id", ""), "video": None, "has_video": False,
                "audio": row["audio"], "start": start, "duration": d.clip_seconds, "split": row.get("split", ""),
                "frame_rate": d.frame_rate, "sample_rate": d.sample_rate, "n_q": int(codes.shape[0])}
        return {"__key__": row["key"], **common, **tail, "json": json.dumps(meta).encode()}
    motion = torch.as_tensor(al["motion"]).float()  # [T-1]
    assert beats.shape == (Ta,) and weights.shape == (Ta,) and motion.shape == (T - 1,), \
        f"alignment shapes {tuple(beats.shape)}, {tuple(motion.shape)}, {tuple(weights.shape)}; want [{Ta}], [{T - 1}]"
    meta = {"key": row["key"], "source_id": row.get("source_id", ""), "video": row["video"], "start": start,
            "duration": d.clip_seconds, "split": row.get("split", ""), "fps": d.fps, "frame_rate": d.frame_rate,
            "sample_rate": d.sample_rate, "num_frames": T, "image_size": d.image_size, "frame_format": d.frame_format,
            "n_q": int(codes.shape[0]), "frame_times": clip.frame_times}
    frames = clip.frames_member
    if frames is None:
        frames = encode_frames(clip.frames.numpy(), d.frame_format, d.frame_quality, d.fps)
    return {"__key__": row["key"], FRAME_EXT[d.frame_format]: frames, **common,
            "motion.npy": _npy(motion.numpy().astype(np.float32)), **tail, "json": json.dumps(meta).encode()}


def process_clips(clips: tp.Sequence[LoadedClip], data_cfg: "DataConfig", encode: EncodeFn, align: AlignFn
                  ) -> tp.List[tp.Union[tp.Dict[str, bytes], str]]:
    """Device stage of a batch: one codec call per group of equal-length clips, one batched alignment call; returns
    each clip's tar members, or its one-line error. A failing batch is retried clip by clip, so one bad clip never
    takes its neighbours with it."""
    out: tp.List[tp.Union[tp.Dict[str, bytes], str]] = [c.error or "" for c in clips]
    good = [i for i, c in enumerate(clips) if c.error is None]
    codes: tp.Dict[int, torch.Tensor] = {}
    by_len: tp.Dict[int, tp.List[int]] = {}
    for i in good:  # equal lengths batch exactly (read_audio pads windows, so this is every clip in practice)
        by_len.setdefault(clips[i].wav.shape[-1], []).append(i)
    for group in by_len.values():
        try:
            batch = encode(torch.stack([clips[i].wav for i in group])[:, None])  # [B, 1, N] -> [B, K, T']
            codes.update({i: batch[j] for j, i in enumerate(group)})
        except Exception:
            for i in group:
                try:
                    codes[i] = encode(clips[i].wav[None, None])[0]
                except Exception as err:
                    out[i] = _one_line(err)
    good = [i for i in good if i in codes]
    wavs, frames = [clips[i].wav for i in good], [clips[i].frames for i in good]
    try:
        aligned = align.batch(wavs, frames) if hasattr(align, "batch") else [align(w, f) for w, f in zip(wavs, frames)]
    except Exception:
        aligned = []
        for w, f in zip(wavs, frames):
            try:
                aligned.append(align(w, f))
            except Exception as err:
                aligned.append(err)
    for i, al in zip(good, aligned):
        if isinstance(al, Exception):
            out[i] = _one_line(al)
            continue
        try:
            out[i] = _pack(clips[i], codes[i], al, data_cfg)
        except Exception as err:
            out[i] = _one_line(err)
    return out


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def make_sample(row: tp.Mapping[str, tp.Any], data_cfg: "DataConfig", encode: EncodeFn, align: AlignFn
                ) -> tp.Dict[str, bytes]:
    """Read, tokenize and precompute one manifest clip -> tar members ``{ext: bytes}`` (plus ``__key__``).
    Raises :class:`DataError` with the clip's problem (the shard writer turns it into a reject instead)."""
    (res,) = process_clips([load_clip(row, data_cfg)], data_cfg, encode, align)
    if isinstance(res, str):
        raise DataError(f"clip {row.get('key')}: {res}")
    return res


make_music_sample = make_sample  # rows with "video": null take the music-only path inside make_sample


# ------------------------------------------------------------------------------------------------ shard plans
@dataclasses.dataclass
class ShardPlan:
    """The clips of one shard: fixed by manifest order, so a re-run rebuilds exactly the same shard."""

    name: str  # "train-000003.tar"
    rows: tp.List[dict]

    @property
    def digest(self) -> str:
        return hashlib.sha1("\n".join(r["key"] for r in self.rows).encode()).hexdigest()


def read_curation_manifest(path: tp.Union[str, Path]) -> tp.List[dict]:
    """The rows of a curation manifest (``python -m vmas.disco_mv`` writes it), as written; the evaluation
    manifest reader (``vmas.evaluation.read_manifest``) normalises ids and paths instead."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist: write it with python -m datasets.disco_mv first")
    rows = []
    for n, line in enumerate(path.read_text().splitlines()):
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
    """tmp file named by host and pid (unique across the nodes sharing a folder) + rename: readers never see half."""
    from vmas.data.ranks import writer_tag

    tmp = path.with_name(f"{path.name}.tmp.{writer_tag()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _drop_stale_temps(out: Path, plans: tp.Sequence[ShardPlan]) -> None:
    """Temp files of *these* shards are leftovers of a crashed run of their owner: never valid, safe to drop. Other
    ranks' temp files are left alone (they may be writing them right now)."""
    for plan in plans:
        for stale in [*out.glob(f"{plan.name}.tmp.*"), *out.glob(f"{plan.name}.done.tmp.*")]:
            stale.unlink(missing_ok=True)


class _ShardWriter:
    """One shard being written: tmp tar named by host and pid, renamed when complete, then its done-marker."""

    def __init__(self, plan: ShardPlan, out_dir: Path):
        from vmas.data.ranks import writer_tag

        self.plan, self.out, self.t0 = plan, out_dir, time.perf_counter()
        self.final = out_dir / plan.name
        self.tmp = self.final.with_name(f"{self.final.name}.tmp.{writer_tag()}")
        self.tar = tarfile.open(self.tmp, "w", format=tarfile.USTAR_FORMAT)
        self.rejects: tp.List[dict] = []
        self.written = 0

    def add(self, row: dict, result: tp.Union[tp.Dict[str, bytes], str]) -> None:
        if isinstance(result, str):
            self.rejects.append({"key": row.get("key"), "video": row.get("video"), "start": row.get("start"),
                                 "reason": "preprocess_failed", "detail": result})
            log.warning("skip %s: %s", row.get("key"), result)
            return
        sample = dict(result)
        key = sample.pop("__key__")
        for ext, data in sample.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed mtime: identical bytes on re-run
            self.tar.addfile(info, io.BytesIO(data))
        self.written += 1

    def close(self) -> dict:
        self.tar.close()
        os.replace(self.tmp, self.final)
        result = {"shard": self.plan.name, "digest": self.plan.digest, "num_clips": self.written,
                  "bytes": self.final.stat().st_size, "rejects": self.rejects,
                  "seconds": round(time.perf_counter() - self.t0, 3)}
        _atomic_write_bytes(_marker(self.out, self.plan), json.dumps(result).encode())
        return result


def write_shard(plan: ShardPlan, out_dir: Path, data_cfg: "DataConfig", encode: EncodeFn, align: AlignFn) -> dict:
    """Write one shard in this process (tmp file + rename, then its done-marker); bad clips become rejects."""
    return next(iter(_stream_shards([plan], Path(out_dir), data_cfg, encode, align, decode_workers=0)))


# ------------------------------------------------------------------------------------------------ driver
def _identity(x: tp.Any) -> tp.Any:
    return x


class _Clips(torch.utils.data.Dataset):
    """Manifest rows -> :class:`LoadedClip` (the CPU stage), for DataLoader workers."""

    def __init__(self, rows: tp.Sequence[dict], data_cfg: "DataConfig"):
        self.rows, self.cfg = list(rows), data_cfg

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> LoadedClip:
        return try_load_clip(self.rows[i], self.cfg)


def _decode_worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decode workers share the cores with the device loop


def _stream_shards(plans: tp.Sequence[ShardPlan], out: Path, data_cfg: "DataConfig", encode: EncodeFn,
                   align: AlignFn, decode_workers: int) -> tp.Iterator[dict]:
    """Write ``plans`` in order; yields each shard's result as soon as its marker is written.

    CPU decoding (DataLoader workers, ``decode_workers`` processes, in manifest order) runs ahead of the device
    loop here, which takes ``data.preprocess.clip_batch`` clips of a shard at a time (:func:`process_clips`)."""
    p = data_cfg.preprocess
    rows = [row for plan in plans for row in plan.rows]
    if not rows:
        return
    kwargs = dict(multiprocessing_context="spawn", prefetch_factor=max(1, p.prefetch),
                  worker_init_fn=_decode_worker_init) if decode_workers > 0 else {}
    clips = iter(torch.utils.data.DataLoader(_Clips(rows, data_cfg), batch_size=None, shuffle=False,
                                             num_workers=decode_workers, collate_fn=_identity, **kwargs))
    step = max(1, p.clip_batch)
    for plan in plans:
        writer = _ShardWriter(plan, out)
        try:
            for lo in range(0, len(plan.rows), step):
                batch = [next(clips) for _ in plan.rows[lo: lo + step]]
                for clip, res in zip(batch, process_clips(batch, data_cfg, encode, align)):
                    writer.add(clip.row, res)
            result = writer.close()
        except BaseException:
            writer.tar.close()
            writer.tmp.unlink(missing_ok=True)
            raise
        yield result


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
                 on_shard_done: tp.Optional[tp.Callable[[dict], None]] = None,
                 rank: tp.Optional["RankInfo"] = None, decode_workers: tp.Optional[int] = None) -> dict:
    """Write this rank's unfinished shards of ``splits``; returns a summary (counts, clips/s, bytes/clip).

    Args:
        manifest: path of ``manifest.jsonl`` or its rows.
        out_dir: shard folder (``<split>-NNNNNN.tar`` + ``.done`` markers + ``<split>.index.json``).
        encoder_factory / align_factory: called once per writer process to build the codec / alignment callables.
        workers: 0 = this process writes (device batches of ``data.preprocess.clip_batch`` clips, decoding in
            ``decode_workers`` DataLoader workers); N = N spawned processes, one whole shard at a time each (CPU
            hosts without a launcher).
        on_shard_done: called with each finished shard's result (progress bars, tests that inject a crash).
        rank: this process's :class:`vmas.data.ranks.RankInfo` (default: rank 0 of 1). Shard ``i`` of the plan
            (splits in order) belongs to rank ``i mod world_size``; a rank writes and cleans up only its own.
        decode_workers: default ``data.preprocess.decode_workers``.

    The split indexes (``<split>.index.json``), ``preprocess_rejects.jsonl`` and ``preprocess_summary.json`` are
    rebuilt from the done-markers by the rank that finds every shard done (so the last rank to finish writes
    them); :func:`merge` does it by hand and shows a partial run.
    """
    from vmas.data.ranks import RankInfo

    info = rank or RankInfo()
    rows = read_curation_manifest(manifest) if isinstance(manifest, (str, Path)) else list(manifest)
    plans = [p for s in splits for p in plan_shards(rows, s, data_cfg.clips_per_shard)]
    if not plans:
        where = manifest if isinstance(manifest, (str, Path)) else "the manifest rows"
        raise DataError(f"{where} has no clips of split(s) {', '.join(splits)}: curation kept nothing (see its "
                        f"rejects.jsonl and summary.json) or --splits names splits the manifest does not have")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mine = info.mine(plans)
    _drop_stale_temps(out, mine)
    todo = [p for p in mine if not is_done(out, p)]
    log.info("%s: %d shards planned, %d mine, %d of them already done, %d to write", info, len(plans), len(mine),
             len(mine) - len(todo), len(todo))
    dw = data_cfg.preprocess.decode_workers if decode_workers is None else decode_workers
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
        for res in _stream_shards(todo, out, data_cfg, encode, align, dw):
            fresh.append(res)
            if on_shard_done:
                on_shard_done(res)
    elapsed = time.perf_counter() - t0
    new_clips = sum(r["num_clips"] + len(r["rejects"]) for r in fresh)
    mine_summary = {"rank": info.rank, "world_size": info.world_size, "shards_owned": len(mine),
                    "shards_written": len(fresh), "shards_skipped": len(mine) - len(todo),
                    "clips_written": sum(r["num_clips"] for r in fresh), "seconds": round(elapsed, 3),
                    "clips_per_s": round(new_clips / elapsed, 3) if fresh and elapsed > 0 else 0.0}
    state = merge(rows, out, data_cfg, splits, only_if_complete=True)
    summary = {**state, **mine_summary}
    if state["complete"]:
        _atomic_write_bytes(out / "preprocess_summary.json", json.dumps(summary, indent=1).encode())
    return summary


def merge(manifest: tp.Union[str, Path, tp.Sequence[dict]], out_dir: tp.Union[str, Path], data_cfg: "DataConfig",
          splits: tp.Sequence[str] = ("train", "val", "test"), only_if_complete: bool = False) -> dict:
    """Rebuild ``<split>.index.json`` and ``preprocess_rejects.jsonl`` from the done-markers; returns the state.

    The index lists finished shards only and says ``"complete": false`` plus the missing shards' names while
    some are not done, so a partial run is visible (and trainable) without waiting. With ``only_if_complete``
    (what every rank does when it stops) nothing is written unless every shard is done: two ranks finishing at
    once then write the same bytes, and a rank that stops early never overwrites the last rank's complete index
    with an older partial one.
    """
    rows = read_curation_manifest(manifest) if isinstance(manifest, (str, Path)) else list(manifest)
    out = Path(out_dir)
    plans = [p for s in splits for p in plan_shards(rows, s, data_cfg.clips_per_shard)]
    done = {p.name: json.loads(_marker(out, p).read_text()) for p in plans if is_done(out, p)}
    missing = [p.name for p in plans if p.name not in done]
    state = {"shards": len(plans), "shards_done": len(done), "complete": not missing,
             "missing": missing[:20] + ([f"... {len(missing) - 20} more"] if len(missing) > 20 else []),
             "clips": sum(r["num_clips"] for r in done.values()),
             "rejected": sum(len(r["rejects"]) for r in done.values()),
             "bytes": sum(r["bytes"] for r in done.values())}
    state["bytes_per_clip"] = round(state["bytes"] / state["clips"]) if state["clips"] else 0
    if missing and only_if_complete:
        return state
    for split in splits:
        names = [p.name for p in plans if p.name.startswith(f"{split}-")]
        if names:
            mine = [done[n] for n in names if n in done]
            index = {"split": split, "num_clips": sum(r["num_clips"] for r in mine),
                     "complete": all(n in done for n in names), "missing": [n for n in names if n not in done],
                     "shards": [{"name": r["shard"], "num_clips": r["num_clips"], "bytes": r["bytes"]} for r in mine]}
            _atomic_write_bytes(out / f"{split}.index.json", json.dumps(index, indent=1).encode())
    rejects = [rj for p in plans if p.name in done for rj in done[p.name]["rejects"]]
    _atomic_write_bytes(out / "preprocess_rejects.jsonl", "".join(json.dumps(r) + "\n" for r in rejects).encode())
    return state


# ------------------------------------------------------------------------------------------------ comparison
def _tar_members(path: Path) -> tp.List[tp.Tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def compare_shards(folder: tp.Union[str, Path], reference: tp.Union[str, Path], motion_rtol: float = 1e-5,
                   motion_atol: float = 1e-6, pixel_mean: float = 1.0, pixel_max: int = 24) -> dict:
    """Compare the ``*.tar`` shards of ``folder`` with those of ``reference``, member by member.

    Same shard names, same members in the same order; codes, beats, beat weights, tags and json byte-identical.
    Two members are compared by value: ``motion.npy`` to ``motion_rtol`` / ``motion_atol`` (as
    ``np.testing.assert_allclose``), because OpenCV's Farneback differs in the last float32 bit between two
    processes on the same frames (even two runs of one 1-process command; its SIMD paths depend on buffer
    alignment), and ``frames.mp4`` by its decoded pixels (same shape, mean absolute difference < ``pixel_mean``,
    largest <= ``pixel_max``): runs with two ranks encoded up to 10 of 48 SynthMV clips to other x264 bytes than
    one process did, decoding within 17/255 of them; a wrong or shifted frame would be far off.

    Returns ``{"shards", "members", "identical", "value_equal", "motion_max_abs_diff", "mismatches"}``:
    ``value_equal`` lists the members equal in value only (with their largest difference), ``mismatches`` one line
    per difference beyond the tolerances (empty when the folders hold the same shards; a folder without shards is
    a mismatch).
    """
    folder, reference = Path(folder), Path(reference)
    names = sorted(p.name for p in reference.glob("*.tar"))
    got_names = sorted(p.name for p in folder.glob("*.tar"))
    report: tp.Dict[str, tp.Any] = {"shards": 0, "members": 0, "identical": 0, "value_equal": [],
                                    "motion_max_abs_diff": 0.0, "mismatches": []}
    bad = report["mismatches"]
    if not names:
        bad.append(f"{reference}: no shards")
    if got_names != names:
        bad.append(f"shard names differ: only in {folder}: {sorted(set(got_names) - set(names))}, only in "
                   f"{reference}: {sorted(set(names) - set(got_names))}")
    for name in sorted(set(names) & set(got_names)):
        report["shards"] += 1
        got, want = _tar_members(folder / name), _tar_members(reference / name)
        if [n for n, _ in got] != [n for n, _ in want]:
            bad.append(f"{name}: members differ ({len(got)} vs {len(want)} members or another order)")
            continue
        for (member, a), (_, b) in zip(got, want):
            report["members"] += 1
            if a == b:
                report["identical"] += 1
            elif member.endswith(".motion.npy"):
                x, y = load_npy(a), load_npy(b)
                if x.shape != y.shape or not np.allclose(x, y, rtol=motion_rtol, atol=motion_atol, equal_nan=True):
                    bad.append(f"{name}/{member}: motion differs beyond rtol {motion_rtol:g} / atol {motion_atol:g}")
                    continue
                diff = float(np.nanmax(np.abs(x.astype(np.float64) - y))) if x.size else 0.0
                report["motion_max_abs_diff"] = max(report["motion_max_abs_diff"], diff)
                report["value_equal"].append(f"{member}: max abs diff {diff:.3g}")
            elif member.endswith(".frames.mp4"):
                x, y = decode_frames(a).astype(int), decode_frames(b).astype(int)
                if x.shape != y.shape:
                    bad.append(f"{name}/{member}: decoded frames {x.shape} vs {y.shape}")
                    continue
                d = np.abs(x - y)
                if not (d.mean() < pixel_mean and d.max() <= pixel_max):
                    bad.append(f"{name}/{member}: decoded pixels differ by {d.mean():.2f} on average, up to "
                               f"{d.max()}/255")
                    continue
                report["value_equal"].append(f"{member}: max pixel diff {d.max()}/255 after decoding")
            else:
                bad.append(f"{name}/{member}: bytes differ")  # same clips, same codes, same beats expected
    return report
