"""Music without video (issue 25, SONIQUE's unpaired data): audio files + tags -> clips -> shards without frames.

Tagged music is plentiful, music paired with fitting video is not. This path turns a folder of audio files (any
format PyAV/ffmpeg reads) into training clips for the tag branch:

- tags per file, in this order of preference: a sidecar tag file (``<stem>.tags.txt`` or ``<stem>.json`` with a
  ``tags`` field, as for videos), a sidecar caption (``<stem>.caption.txt``, turned into tags by the caption->tags
  function given, e.g. :func:`vmas.tags.autotag.caption_to_tags` with an LLM, else by the tag cleaner alone), the
  file's embedded metadata (Vorbis comments / ID3: genre, then the title's words); tags given on the command line
  are added to every file's;
- 10 s clips (the data config's ``clip_seconds``) from the start, silent ones rejected; Demucs vocal removal when
  configured (``data.curation.vocal_removal``), exactly as for videos;
- manifest rows with ``"video": null`` and the audio path: :func:`vmas.data.shards.write_shards` writes them as
  samples without a frames member (``json`` says ``"has_video": false``), resumable shard by shard like the paired
  path; the loader gives them zero frames and ``has_video`` False, and training uses the null video condition.

``manifest.jsonl``, ``rejects.jsonl`` (one reason per file or clip) and ``summary.json`` as in
:mod:`vmas.data.curation`. CLI: ``tools/preprocess_music.py``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import typing as tp
from pathlib import Path

import numpy as np

from vmas.data.curation import (
    SPLITS,
    CurationResult,
    _sidecar_tags,
    build_vocal_remover,
    cut_clips,
    reject_row,
)
from vmas.errors import DataError
from vmas.tags.cleaner import clean_tags

if tp.TYPE_CHECKING:
    from vmas.config import CurationConfig

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".wma")
# caption text -> tags
CaptionToTags = tp.Callable[[str], tp.Sequence[str]]
# (mono wav float [N], sample rate) -> accompaniment float [N]
VocalRemover = tp.Callable[[np.ndarray, int], np.ndarray]


@dataclasses.dataclass
class MusicItem:
    """One source audio file. ``tags`` is a comma-separated string (may be empty)."""

    path: str
    source_id: str
    tags: str = ""


def as_music_only(row: tp.Mapping[str, tp.Any]) -> tp.Dict[str, tp.Any]:
    """A paired manifest row -> the same clip as music only (its audio, or the video's own track, and its tags).

    Used to hold the video of some clips out of training (``tools/unpaired_benchmark.py``)."""
    return {**row, "audio": row.get("audio") or row["video"], "video": None}


# ------------------------------------------------------------------------------------------------------ tags
def embedded_tags(path: tp.Union[str, Path]) -> tp.List[str]:
    """Tags from a file's own metadata (Vorbis comments, ID3, MP4 atoms as PyAV reports them): the genre(s), then
    the words of the title; [] when there is none or the file cannot be opened."""
    import av

    try:
        with av.open(str(path)) as c:
            meta = {k.lower(): v for k, v in c.metadata.items()}
            for s in c.streams.audio:
                meta.update({k.lower(): v for k, v in s.metadata.items() if k.lower() not in meta})
    except (av.error.FFmpegError, OSError, ValueError):
        return []
    genres = re.split(r"[,;/|]", meta.get("genre", ""))
    words = [w for w in re.split(r"[^A-Za-z]+", meta.get("title", "")) if len(w) > 2]
    return clean_tags([*genres, *words])


def file_tags(path: tp.Union[str, Path], caption_to_tags: tp.Optional[CaptionToTags] = None,
              extra: tp.Sequence[str] = (), max_tags: int = 16) -> str:
    """The tags of one audio file (order of preference in the module docstring) + ``extra``, cleaned, as a
    comma-separated string."""
    p = Path(path)
    tags: tp.List[str] = clean_tags(_sidecar_tags(p), max_tags) if _sidecar_tags(p) else []
    caption = p.with_name(p.stem + ".caption.txt")
    if not tags and caption.is_file():
        text = caption.read_text().strip()
        tags = list(caption_to_tags(text)) if caption_to_tags is not None else clean_tags(text, max_tags)
    if not tags:
        tags = embedded_tags(p)
    return ", ".join(clean_tags([*tags, *extra], max_tags))


def discover_music(inputs: tp.Sequence[tp.Union[str, Path]], caption_to_tags: tp.Optional[CaptionToTags] = None,
                   extra_tags: tp.Sequence[str] = ()) -> tp.List[MusicItem]:
    """Folders (searched recursively for audio files), ``.txt`` lists (one path a line, relative to the list) or
    single files -> items with their tags. Ids are the file stems; duplicates get the parent folder prepended."""
    paths: tp.List[Path] = []
    for raw in inputs:
        src = Path(raw)
        if src.is_dir():
            paths += sorted(q for q in src.rglob("*") if q.suffix.lower() in AUDIO_EXTS)
        elif src.is_file() and src.suffix == ".txt":
            paths += [(src.parent / line.strip()).resolve() for line in src.read_text().splitlines()
                      if line.strip() and not line.startswith("#")]
        else:  # an audio file, or a missing one: it becomes a reject, never a stop
            paths.append(src)
    items, seen = [], set()
    for p in paths:
        sid = p.stem if p.stem not in seen else f"{p.parent.name}-{p.stem}"
        seen.add(sid)
        items.append(MusicItem(str(p), sid, file_tags(p, caption_to_tags, extra_tags) if p.is_file() else ""))
    return items


# ------------------------------------------------------------------------------------------------ one file
def _reject(item: MusicItem, reason: str, detail: str = "", start: tp.Optional[float] = None) -> dict:
    return reject_row(item, reason, detail, start, kind="audio")


def curate_music(item: MusicItem, cfg: "CurationConfig", clip_seconds: float, sample_rate: int,
                 vocal_remover: tp.Optional[VocalRemover] = None, audio_dir: tp.Optional[Path] = None,
                 split_overrides: tp.Optional[tp.Mapping[str, str]] = None) -> CurationResult:
    """Cut one audio file into music-only clips. Never raises on bad data: problems become rejects with a reason:
    ``unreadable`` (missing, corrupt, no audio stream), ``too_short``, ``vocal_removal_failed``, ``silent_audio``
    (per clip). With a vocal remover the accompaniment is written to ``audio_dir/<id>.wav`` and the clips point at
    it. Splits are by file, as videos are split by video."""
    from vmas.data import media

    try:
        wav = media.read_audio(item.path, sr=sample_rate)
        wav = np.asarray(wav.numpy() if hasattr(wav, "numpy") else wav, dtype=np.float32)
        wav = wav.mean(0) if wav.ndim == 2 else wav  # [N] mono
    except Exception as err:  # MediaError for known problems; anything else from a broken file too
        text = str(err).strip().splitlines()
        return CurationResult([], [_reject(item, "unreadable", f"{type(err).__name__}: {text[0] if text else ''}")])
    duration = len(wav) / sample_rate
    if duration + 1e-3 < clip_seconds:
        return CurationResult([], [_reject(item, "too_short", f"{duration:.2f} s < clip {clip_seconds:g} s")])
    clips, rejects = cut_clips(item, wav, sample_rate, duration, clip_seconds, cfg, vocal_remover, audio_dir,
                               split_overrides, video=None, kind="audio", audio_path=item.path)
    return CurationResult(clips, rejects)


def curate_music_folder(items: tp.Sequence[MusicItem], out_dir: tp.Union[str, Path], data_cfg: tp.Any,
                        vocal_remover: tp.Optional[VocalRemover] = None,
                        split_overrides: tp.Optional[tp.Mapping[str, str]] = None, device: str = "cpu") -> dict:
    """``items`` -> ``out_dir/manifest.jsonl``, ``rejects.jsonl``, ``summary.json`` (written to tmp files and
    renamed, so a killed run leaves the previous manifest intact); returns the summary.

    ``vocal_remover`` default: built from ``data_cfg.curation`` (Demucs when ``vocal_removal`` is on)."""
    cfg = data_cfg.curation
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vr = vocal_remover if vocal_remover is not None else build_vocal_remover(cfg, device)
    t0 = time.perf_counter()
    splits = {s: 0 for s in SPLITS}
    reasons: tp.Dict[str, int] = {}
    clips = rejects = kept = 0
    man_tmp, rej_tmp = out / "manifest.jsonl.tmp", out / "rejects.jsonl.tmp"
    with open(man_tmp, "w") as man, open(rej_tmp, "w") as rej:
        for item in items:
            res = curate_music(item, cfg, data_cfg.clip_seconds, data_cfg.sample_rate, vr, out / "audio",
                               split_overrides)
            for row in res.clips:
                man.write(json.dumps(row) + "\n")
                splits[row["split"]] += 1
            for row in res.rejects:
                rej.write(json.dumps(row) + "\n")
                reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
            clips, rejects, kept = clips + len(res.clips), rejects + len(res.rejects), kept + bool(res.clips)
    os.replace(man_tmp, out / "manifest.jsonl")
    os.replace(rej_tmp, out / "rejects.jsonl")
    summary = {"files": len(items), "files_kept": kept, "clips": clips, "clips_per_split": splits,
               "rejects": rejects, "reject_reasons": reasons, "seconds": round(time.perf_counter() - t0, 3)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if not clips:
        raise DataError(f"no music-only clips from {len(items)} file(s): see {out / 'rejects.jsonl'}")
    return summary
