"""DISCO-MV-style curation (SPEC §6): which source videos and which 10 s clips go into the training manifest.

The pieces are small and pluggable so a cluster run and a laptop run share the code:

- frame embedders for the visual-variety filter (``pixels`` / ``histogram`` need no weights; ``timm:<name>`` and
  ``torchvision:<name>`` load a pretrained image model by hub name or from a local weights file);
- :func:`mean_pairwise_cosine`, the variety score (keep a video when it is below ``variety_threshold``, paper 0.7);
- :class:`DemucsVocalRemover` (two stems, keep the accompaniment) when ``demucs`` and its weights are present;
- clip planning, silence check and the train/val/test split *by video* (a hash of the source id, so every worker
  and every re-run agrees, and clips of one video never straddle splits);
- :func:`curate_video`, which never raises on bad data: it returns clips and rejects (each with a reason).

The CLI that walks a folder / list and writes ``manifest.jsonl`` + ``rejects.jsonl`` is ``datasets/disco_mv.py``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import time
import typing as tp
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vmas.errors import ConfigError, DataError, VmasError

if tp.TYPE_CHECKING:
    from vmas.config import CurationConfig
    from vmas.data.ranks import RankInfo

log = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")
SPLITS = ("train", "val", "test")

# frames uint8 [N, H, W, 3] -> embeddings float [N, D]
Embedder = tp.Callable[[np.ndarray], torch.Tensor]
# (mono wav float [N], sample rate) -> accompaniment float [N] at the same rate
VocalRemover = tp.Callable[[np.ndarray, int], np.ndarray]


# ------------------------------------------------------------------------------------------- frame embedders
def _to_float(frames: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [0, 1]."""
    x = torch.as_tensor(frames) if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    assert x.dim() == 4 and x.shape[-1] == 3, f"expected frames [N, H, W, 3], got {tuple(x.shape)}"
    return x.permute(0, 3, 1, 2).float() / 255.0


def pixel_embedding(frames: np.ndarray, grid: int = 8) -> torch.Tensor:
    """8x8 RGB thumbnails centred on mid-grey: [N, 3*grid*grid].

    Centring on 0.5 (not on the video's mean) keeps colour information: two flat frames of different colours get a
    low cosine, the same scene re-shot gets ~1. No weights needed, so it is the default.
    """
    thumbs = F.adaptive_avg_pool2d(_to_float(frames), grid)  # [N, 3, g, g]
    return (thumbs - 0.5).flatten(1)


def histogram_embedding(frames: np.ndarray, bins: int = 4) -> torch.Tensor:
    """Square root of the joint RGB histogram (``bins``³ cells): [N, bins**3].

    The cosine of square-rooted histograms is the Bhattacharyya coefficient: 1 for identical colour distributions,
    0 for disjoint ones. Ignores layout, so it complements :func:`pixel_embedding`.
    """
    q = (_to_float(frames).permute(0, 2, 3, 1) * 255).round().long() * bins // 256  # [N, H, W, 3] in [0, bins)
    cell = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]  # [N, H, W]
    hist = torch.stack([torch.bincount(c.flatten(), minlength=bins**3) for c in cell]).float()  # [N, bins³]
    return (hist / hist.sum(-1, keepdim=True)).sqrt()


class PretrainedEmbedder:
    """Global-pooled features of a pretrained image model (timm or torchvision), by hub name or local weights.

    Args:
        spec: ``timm:<model name>`` (e.g. ``timm:vit_base_patch16_clip_224.openai``) or ``torchvision:<name>``
            (e.g. ``torchvision:resnet50``).
        weights: optional local weights file (``.safetensors``/``.pth``/``.bin``); empty = the library's hub cache.
        device: where the model runs.
    """

    def __init__(self, spec: str, weights: str = "", device: str = "cpu", batch_size: int = 32):
        lib, _, name = spec.partition(":")
        if lib not in ("timm", "torchvision") or not name:
            raise ConfigError(f"data.curation.embedder '{spec}': use pixels, histogram, timm:<name> or torchvision:<name>")
        if weights and not Path(weights).is_file():
            raise ConfigError(f"data.curation.embedder_weights '{weights}' is not a file: point it at a local "
                              f"{lib} weights file or leave it empty to use the hub cache")
        self.spec, self.device, self.batch_size = spec, torch.device(device), batch_size
        try:
            model, self.size, self.mean, self.std = (_load_timm if lib == "timm" else _load_torchvision)(name, weights)
        except VmasError:
            raise
        except Exception as err:  # hub miss offline, bad file, unknown name: one line with the fix
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(f"data.curation.embedder '{spec}' could not be loaded ({msg}): set "
                              f"data.curation.embedder_weights to a local weights file, or use embedder=pixels") from None
        self.model = model.eval().to(self.device).requires_grad_(False)

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        x = _to_float(frames)  # [N, 3, H, W]
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - torch.tensor(self.mean).view(1, 3, 1, 1)) / torch.tensor(self.std).view(1, 3, 1, 1)
        feats = [self.model(chunk.to(self.device)).flatten(1).float().cpu() for chunk in x.split(self.batch_size)]
        return torch.cat(feats)  # [N, D]


def _load_timm(name: str, weights: str) -> tp.Tuple[torch.nn.Module, int, tp.Sequence[float], tp.Sequence[float]]:
    import timm

    from vmas.loading import offline_if_unreachable

    if not weights:  # timm asks the hub, which retries an unreachable hub for tens of seconds: find out once
        offline_if_unreachable()
    # pretrained_cfg_overlay(file=...) makes timm read a local file through its own key filtering.
    kwargs = dict(pretrained_cfg_overlay=dict(file=weights)) if weights else {}
    model = timm.create_model(name, pretrained=True, num_classes=0, **kwargs)  # num_classes=0: pooled features
    cfg = timm.data.resolve_data_config({}, model=model)
    return model, int(cfg["input_size"][-1]), cfg["mean"], cfg["std"]


def _load_torchvision(name: str, weights: str) -> tp.Tuple[torch.nn.Module, int, tp.Sequence[float], tp.Sequence[float]]:
    import torchvision

    if weights:
        model = torchvision.models.get_model(name, weights=None)
        from vmas.loading import load_state_dict_strict, torch_load

        state = torch_load(weights, f"torchvision {name} checkpoint")
        load_state_dict_strict(model, state.get("state_dict", state) if isinstance(state, dict) else state,
                               f"{weights}: not a torchvision {name} state dict")
    else:
        model = torchvision.models.get_model(name, weights="DEFAULT")
    # Drop the classifier so the output is the pooled feature (resnet: fc; vit/convnext/efficientnet: heads/classifier).
    for head in ("fc", "heads", "head", "classifier"):
        if hasattr(model, head):
            module = getattr(model, head)
            if isinstance(module, torch.nn.Sequential) and head == "classifier" and len(module) > 1:
                module[-1] = torch.nn.Identity()  # keep norm/flatten layers of convnext/efficientnet heads
            else:
                setattr(model, head, torch.nn.Identity())
            break
    return model, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


AUTO_EMBEDDER = "timm:vit_base_patch16_clip_224.openai"
"""What ``embedder: auto`` uses when its weights are on this machine: a CLIP image tower, the kind of pretrained
embedding the paper's 0.7 threshold was set on."""
AUTO_EMBEDDER_HUB = ("timm/vit_base_patch16_clip_224.openai", "model.safetensors")

PRETRAINED_THRESHOLD = 0.7
"""Paper (SPEC §6): mean pairwise cosine of pretrained image embeddings."""
WEIGHT_FREE_THRESHOLDS = {"pixels": 0.75, "histogram": 0.95}
"""The weight-free embedders' own thresholds (``variety_threshold: 0``), measured, not derived from 0.7: their
cosines live on another scale (a still photo and the same photo under a slow zoom score 1.0 / 0.89 with pixels,
real photographs under pans and cuts 0.09-0.28, flat colour scenes changing every 0.5 s 0.65; histogram 1.0 / 0.99
against 0.59-0.89). Each threshold sits in the gap between "one still image" (what the filter exists to drop:
album covers, lyric cards) and "footage that moves or cuts". Table and footage in docs/data.md. No pretrained image weights are available offline here, so they
were not fitted to a pretrained model's decisions (a randomly initialised model would be no calibration at all);
with weights at hand, ``embedder: auto`` uses the pretrained model and the paper's 0.7 instead."""


def resolve_embedder_spec(spec: str, weights: str = "") -> str:
    """``auto`` -> :data:`AUTO_EMBEDDER` when ``weights`` is given or its file is in the local Hugging Face cache
    (checked without network: an offline cluster must not hang on a hub request), else ``pixels``."""
    if spec != "auto":
        return spec
    if weights:
        return AUTO_EMBEDDER
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(*AUTO_EMBEDDER_HUB)
    except Exception:  # no huggingface_hub, unreadable cache: same as not cached
        cached = None
    return AUTO_EMBEDDER if isinstance(cached, str) else "pixels"


def build_frame_embedder(spec: str = "auto", weights: str = "", device: str = "cpu", threshold: float = 0.0) -> Embedder:
    """Frame embedder from ``data.curation.embedder`` / ``embedder_weights`` (``auto``: see
    :func:`resolve_embedder_spec`). The choice is logged with the threshold the run applies: ``threshold`` is
    ``data.curation.variety_threshold`` (0 = the embedder's default, as :func:`variety_threshold` decides), so the
    log never shows a default that an override replaced."""
    resolved = resolve_embedder_spec(spec, weights)
    source = "data.curation.variety_threshold" if threshold > 0 else f"the {resolved} default"
    log.info("curation embedder: %s (variety threshold %g from %s)%s", resolved,
             threshold if threshold > 0 else default_threshold(resolved), source,
             "" if not (spec == "auto" and resolved == "pixels")
             else f": no local weights for {AUTO_EMBEDDER}, weight-free fallback")
    if resolved == "pixels":
        return pixel_embedding
    if resolved == "histogram":
        return histogram_embedding
    return PretrainedEmbedder(resolved, weights, device)


def default_threshold(spec: str) -> float:
    """The variety threshold on ``spec``'s own scale (see :data:`WEIGHT_FREE_THRESHOLDS`)."""
    return WEIGHT_FREE_THRESHOLDS.get(spec, PRETRAINED_THRESHOLD)


def variety_threshold(cfg: "CurationConfig", embedder: tp.Optional[Embedder] = None) -> float:
    """``data.curation.variety_threshold`` when set (> 0), else the default of the embedder in use."""
    if cfg.variety_threshold > 0:
        return float(cfg.variety_threshold)
    if embedder is None:
        return default_threshold(resolve_embedder_spec(cfg.embedder, cfg.embedder_weights))
    kind = {pixel_embedding: "pixels", histogram_embedding: "histogram"}.get(embedder, "pretrained")
    return default_threshold(kind)


def mean_pairwise_cosine(emb: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs i != j of the rows of ``emb`` [N, D] (N >= 2).

    Zero rows (e.g. a mid-grey frame under :func:`pixel_embedding`) have no direction and count as similarity 0.
    """
    N = emb.shape[0]
    if N < 2:
        raise DataError(f"visual variety needs at least 2 frames, got {N}")
    e = F.normalize(emb.double(), dim=-1)  # [N, D]
    sim = e @ e.T  # [N, N]
    return float((sim.sum() - sim.diagonal().sum()) / (N * (N - 1)))


# -------------------------------------------------------------------------------------------- vocal removal
class DemucsVocalRemover:
    """Demucs separation into vocals / accompaniment; returns the accompaniment (sum of the non-vocal stems).

    Args:
        model: Demucs model name (``htdemucs``), or ``name@/local/repo`` for a folder holding the model files
            (what ``demucs.pretrained.get_model(name, repo=...)`` reads on machines without internet).
        device: where separation runs.
    """

    def __init__(self, model: str = "htdemucs", device: str = "cpu"):
        if importlib.util.find_spec("demucs") is None:
            raise DataError("vocal removal needs the 'demucs' package (pip install demucs) and its weights; "
                            "install it or pass --no-vocal-removal (data.curation.vocal_removal=false)")
        from demucs.pretrained import get_model

        name, _, repo = model.partition("@")
        try:
            self.model = get_model(name, repo=Path(repo) if repo else None).eval().to(device)
        except Exception as err:
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(f"demucs model '{model}' could not be loaded ({msg}): put its weights in the torch hub "
                            f"cache, use name@/local/repo, or pass --no-vocal-removal") from None
        if "vocals" not in self.model.sources:
            raise DataError(f"demucs model '{model}' has no 'vocals' stem (sources {self.model.sources})")
        self.device = device

    @torch.no_grad()
    def __call__(self, wav: np.ndarray, sr: int) -> np.ndarray:
        import torchaudio.functional as AF
        from demucs.apply import apply_model

        x = torch.as_tensor(wav, dtype=torch.float32)[None]  # [1, N]
        msr = int(self.model.samplerate)
        x = AF.resample(x, sr, msr) if sr != msr else x
        mix = x.expand(self.model.audio_channels, -1)[None]  # [1, C, N']
        stems = apply_model(self.model, mix, device=self.device, progress=False)[0]  # [S, C, N']
        keep = [i for i, s in enumerate(self.model.sources) if s != "vocals"]
        acc = stems[keep].sum(0).mean(0, keepdim=True).cpu()  # [1, N'] mono accompaniment
        acc = AF.resample(acc, msr, sr) if sr != msr else acc
        out = acc[0, : len(wav)].numpy()
        return np.pad(out, (0, len(wav) - len(out)))


def build_vocal_remover(cfg: "CurationConfig", device: str = "cpu") -> tp.Optional[VocalRemover]:
    return DemucsVocalRemover(cfg.demucs_model, device) if cfg.vocal_removal else None


# -------------------------------------------------------------------------------------- clips, audio, splits
def clip_starts(duration: float, clip_seconds: float, max_clips: int = 0) -> tp.List[float]:
    """Start times of the non-overlapping clips of a video, from 0 s; the tail shorter than a clip is dropped."""
    n = int(math.floor(duration / clip_seconds + 1e-6))
    if max_clips > 0:
        n = min(n, max_clips)
    return [round(i * clip_seconds, 6) for i in range(n)]


def rms_db(wav: np.ndarray) -> float:
    """RMS level in dBFS (full scale = 1.0); -inf-safe (floored at -200 dB)."""
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if len(wav) else 0.0
    return 20.0 * math.log10(max(rms, 1e-10))


def assign_split(source_id: str, val_fraction: float, test_fraction: float, seed: int = 0,
                 overrides: tp.Optional[tp.Mapping[str, str]] = None) -> str:
    """train / val / test for a whole video: hand-picked ``overrides`` first, else a stable hash of the id."""
    if overrides and source_id in overrides:
        return overrides[source_id]
    h = hashlib.sha1(f"{seed}:{source_id}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64  # uniform in [0, 1)
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def load_split_file(path: tp.Union[str, Path]) -> tp.Dict[str, str]:
    """Hand-picked splits: JSON ``{"val": [ids], "test": [ids]}`` -> ``{id: split}``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"split file {path}: cannot read JSON ({err}); expected {{\"val\": [ids], \"test\": [ids]}}") from None
    out = {}
    for split, ids in data.items():
        if split not in SPLITS or not isinstance(ids, list):
            raise DataError(f"split file {path}: key '{split}' must be one of {SPLITS} with a list of source ids")
        out.update({str(i): split for i in ids})
    return out


def safe_id(text: str) -> str:
    """Source ids become shard keys: webdataset splits a key at its first dot, so keep [A-Za-z0-9_-] only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "video"


def clip_key(source_id: str, start: float) -> str:
    return f"{safe_id(source_id)}_{int(round(start * 1000)):09d}"


# ------------------------------------------------------------------------------------------------ inputs
@dataclasses.dataclass
class VideoItem:
    """One source video. ``tags`` is a comma-separated string (may be empty)."""

    path: str
    source_id: str
    tags: str = ""


def _sidecar_tags(path: Path) -> str:
    """Tags beside a video: ``<stem>.tags.txt`` (one line) or a ``<stem>.json`` with a ``tags`` field."""
    txt = path.with_name(path.stem + ".tags.txt")
    if txt.is_file():
        return txt.read_text().strip()
    meta = path.with_suffix(".json")
    if meta.is_file():
        try:
            tags = json.loads(meta.read_text()).get("tags", "")
        except (ValueError, AttributeError):
            return ""
        return ", ".join(tags) if isinstance(tags, list) else str(tags)
    return ""


def discover_inputs(inputs: tp.Sequence[tp.Union[str, Path]]) -> tp.List[VideoItem]:
    """Folders (searched recursively for video files), ``.txt`` lists (one path a line) or ``.jsonl`` lists
    (``{"video": path, "id": ..., "tags": ...}``). Paths in lists are relative to the list's folder.
    Ids default to the file stem; duplicates get the parent folder prepended."""
    items: tp.List[VideoItem] = []
    for raw in inputs:
        src = Path(raw)
        if src.is_dir():
            for p in sorted(q for q in src.rglob("*") if q.suffix.lower() in VIDEO_EXTS):
                items.append(VideoItem(str(p), p.stem, _sidecar_tags(p)))
        elif src.suffix == ".jsonl":
            for n, line in enumerate(src.read_text().splitlines()):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    p = (src.parent / row.get("video", row.get("path"))).resolve()
                except (ValueError, TypeError, AttributeError):
                    raise DataError(f"{src}:{n + 1}: not a JSON object with a 'video' field") from None
                tags = row.get("tags", "")
                tags = ", ".join(tags) if isinstance(tags, list) else str(tags or _sidecar_tags(p))
                items.append(VideoItem(str(p), str(row.get("id", p.stem)), tags))
        elif src.is_file() and src.suffix.lower() not in VIDEO_EXTS:
            for line in src.read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    p = (src.parent / line.strip()).resolve()
                    items.append(VideoItem(str(p), p.stem, _sidecar_tags(p)))
        else:  # a single video file (or a missing one: it will land in rejects, not stop the run)
            items.append(VideoItem(str(src), src.stem, _sidecar_tags(src)))
    seen: tp.Dict[str, int] = {}
    for it in items:
        if it.source_id in seen:
            it.source_id = f"{Path(it.path).parent.name}-{it.source_id}"
        seen[it.source_id] = seen.get(it.source_id, 0) + 1
    return items


# ---------------------------------------------------------------------------------------- one video
@dataclasses.dataclass
class CurationResult:
    clips: tp.List[dict]
    rejects: tp.List[dict]
    variety: tp.Optional[float] = None


def reject_row(item: tp.Any, reason: str, detail: str = "", start: tp.Optional[float] = None,
               kind: str = "video") -> dict:
    """One reject-log row: ``{kind: item.path, source_id, reason, detail[, start]}`` (``kind`` "audio" for the
    music-only path)."""
    row = {kind: item.path, "source_id": item.source_id, "reason": reason, "detail": detail}
    if start is not None:
        row["start"] = start
    return row


def curate_video(item: VideoItem, cfg: "CurationConfig", clip_seconds: float, sample_rate: int,
                 embedder: Embedder, vocal_remover: tp.Optional[VocalRemover] = None,
                 audio_dir: tp.Optional[Path] = None, split_overrides: tp.Optional[tp.Mapping[str, str]] = None
                 ) -> CurationResult:
    """Filter one video and cut it into clips. Never raises on bad data: problems become rejects with a reason.

    Reasons: ``unreadable`` (missing/corrupt/no video stream), ``no_audio``, ``too_short`` (shorter than one clip),
    ``low_visual_variety`` (score >= threshold), ``vocal_removal_failed``, ``silent_audio`` (per clip).
    With a vocal remover the accompaniment of the whole video is written to ``audio_dir/<id>.wav`` and the clips
    point at it (``audio``); without one ``audio`` is null and the video's own track is used.
    """
    from vmas.data import media

    try:
        info = media.probe_video(item.path)
    except Exception as err:  # MediaError for known problems; anything else from a broken container too
        return CurationResult([], [reject_row(item, "unreadable", _one_line(err))])
    duration = float(info.duration or 0.0)
    if not info.num_frames or duration <= 0:
        return CurationResult([], [reject_row(item, "unreadable", "no decodable video frames")])
    if not getattr(info, "has_audio", True):
        return CurationResult([], [reject_row(item, "no_audio", "no audio stream")])
    if duration + 1e-3 < clip_seconds:
        return CurationResult([], [reject_row(item, "too_short", f"{duration:.2f} s < clip {clip_seconds:g} s")])

    # Visual variety over frames sampled across the whole video (one decode at a low frame rate).
    try:
        n = max(2, cfg.variety_frames)
        frames = media.read_video_frames(item.path, fps=n / duration, size=cfg.embed_size, start=0.0,
                                         duration=duration)[0]  # [n', S, S, 3]
        variety = mean_pairwise_cosine(embedder(frames[:n]))
    except Exception as err:
        return CurationResult([], [reject_row(item, "unreadable", f"frames: {_one_line(err)}")])
    threshold = variety_threshold(cfg, embedder)
    if variety >= threshold:
        return CurationResult([], [reject_row(item, "low_visual_variety", f"{variety:.3f} >= {threshold:g}")], variety)

    try:
        wav = _audio_of(media.read_audio(item.path, sr=sample_rate))  # [N]
    except Exception as err:
        return CurationResult([], [reject_row(item, "no_audio", _one_line(err))], variety)
    clips, rejects = cut_clips(item, wav, sample_rate, duration, clip_seconds, cfg, vocal_remover, audio_dir,
                               split_overrides, video=item.path, variety=round(variety, 4))
    return CurationResult(clips, rejects, variety)


def cut_clips(item: tp.Any, wav: np.ndarray, sample_rate: int, duration: float, clip_seconds: float,
              cfg: "CurationConfig", vocal_remover: tp.Optional[VocalRemover], audio_dir: tp.Optional[Path],
              split_overrides: tp.Optional[tp.Mapping[str, str]], video: tp.Optional[str], kind: str = "video",
              audio_path: tp.Optional[str] = None, **extra: tp.Any) -> tp.Tuple[tp.List[dict], tp.List[dict]]:
    """The shared tail of the paired and music-only paths: vocal removal (the accompaniment is written to
    ``audio_dir/<id>.wav`` and the clips point at it; otherwise at ``audio_path``), then ``wav [N]`` cut into clips
    of ``clip_seconds`` with the file's split, silent clips rejected. Returns ``(clips, rejects)``; ``extra`` keys go
    into every clip row."""
    from vmas.data import media

    if vocal_remover is not None:
        try:
            wav = np.asarray(vocal_remover(wav, sample_rate), dtype=np.float32)
            assert audio_dir is not None, "audio_dir is needed with vocal removal"
            audio_dir.mkdir(parents=True, exist_ok=True)
            audio_path = str(audio_dir / f"{safe_id(item.source_id)}.wav")
            media.write_wav(audio_path, torch.as_tensor(wav)[None], sample_rate)
        except Exception as err:
            return [], [reject_row(item, "vocal_removal_failed", _one_line(err), kind=kind)]
    split = assign_split(item.source_id, cfg.val_fraction, cfg.test_fraction, cfg.split_seed, split_overrides)
    clips, rejects = [], []
    for start in clip_starts(duration, clip_seconds, cfg.max_clips_per_video):
        seg = wav[int(round(start * sample_rate)): int(round((start + clip_seconds) * sample_rate))]
        level = rms_db(seg)
        if level < cfg.silence_db:
            rejects.append(reject_row(item, "silent_audio", f"{level:.1f} dBFS < {cfg.silence_db:g}", start, kind))
            continue
        clips.append({"key": clip_key(item.source_id, start), "video": video, "audio": audio_path, "start": start,
                      "duration": clip_seconds, "split": split, "tags": item.tags, "source_id": item.source_id,
                      **extra})
    return clips, rejects


def _audio_of(out: tp.Any) -> np.ndarray:
    """``read_audio`` returns ``wav`` or ``(wav, sr)``; wav may be [N] or [C, N] (mixed down to mono)."""
    wav = out[0] if isinstance(out, tuple) else out
    wav = wav.numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav)
    return (wav.mean(0) if wav.ndim == 2 else wav).astype(np.float32)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


# ------------------------------------------------------------------------------------------------ driver
_WORKER: tp.Dict[str, tp.Any] = {}


def _init_worker(cfg: "CurationConfig", device: str, kwargs: dict) -> None:
    torch.set_num_threads(1)  # parallelism comes from processes
    embedder = build_frame_embedder(cfg.embedder, cfg.embedder_weights, device, cfg.variety_threshold)
    _WORKER.update(kwargs, cfg=cfg, embedder=embedder,
                   vocal_remover=build_vocal_remover(cfg, device))


def _work(item: VideoItem) -> CurationResult:
    w = _WORKER
    return curate_video(item, w["cfg"], w["clip_seconds"], w["sample_rate"], w["embedder"], w["vocal_remover"],
                        w["audio_dir"], w["split_overrides"])


@dataclasses.dataclass
class CurationPart:
    """``videos_per_part`` consecutive input videos: the unit a rank owns and a re-run skips when done."""

    name: str  # "part-000003"
    items: tp.List[VideoItem]
    settings: str  # JSON of everything that changes the outcome (curation config, clip grid, split overrides)

    @property
    def digest(self) -> str:
        text = self.settings + "\n" + "\n".join(f"{it.path}\t{it.source_id}\t{it.tags}" for it in self.items)
        return hashlib.sha1(text.encode()).hexdigest()


def plan_parts(items: tp.Sequence[VideoItem], data_cfg: tp.Any,
               split_overrides: tp.Optional[tp.Mapping[str, str]] = None) -> tp.List[CurationPart]:
    """The input in order, cut into parts of ``data.curation.videos_per_part`` videos (the last may be short)."""
    cfg = data_cfg.curation
    n = max(1, int(cfg.videos_per_part))
    settings = json.dumps({"curation": dataclasses.asdict(cfg), "clip_seconds": data_cfg.clip_seconds,
                           "sample_rate": data_cfg.sample_rate, "splits": sorted((split_overrides or {}).items())},
                          sort_keys=True)
    return [CurationPart(f"part-{i // n:06d}", list(items[i: i + n]), settings) for i in range(0, len(items), n)]


def _video_outcome(res: CurationResult) -> str:
    """``kept`` or the reason the whole video was dropped (its first reject: a video filter, or silent clips)."""
    return "kept" if res.clips else (res.rejects[0]["reason"] if res.rejects else "no_clips")


def _part_files(parts_dir: Path, part: CurationPart) -> tp.Tuple[Path, Path, Path]:
    return (parts_dir / f"{part.name}.manifest.jsonl", parts_dir / f"{part.name}.rejects.jsonl",
            parts_dir / f"{part.name}.done")


def _part_done(parts_dir: Path, part: CurationPart) -> tp.Optional[dict]:
    """The part's marker when the part is finished with these settings (a stale marker is redone, not trusted)."""
    man, rej, marker = _part_files(parts_dir, part)
    if not (marker.is_file() and man.is_file() and rej.is_file()):
        return None
    try:
        done = json.loads(marker.read_text())
    except ValueError:
        return None
    return done if done.get("digest") == part.digest else None


def _write_atomic(path: Path, text: str) -> None:
    from vmas.data.ranks import writer_tag

    tmp = path.with_name(f"{path.name}.tmp.{writer_tag()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def curate(items: tp.Sequence[VideoItem], out_dir: tp.Union[str, Path], data_cfg: tp.Any,
           embedder: tp.Optional[Embedder] = None, vocal_remover: tp.Optional[VocalRemover] = None,
           split_overrides: tp.Optional[tp.Mapping[str, str]] = None, workers: int = 0, device: str = "cpu",
           progress: tp.Optional[tp.Callable[[int, int], None]] = None,
           rank: tp.Optional["RankInfo"] = None) -> dict:
    """Curate this rank's parts of ``items``; when every part is done, write ``out_dir/manifest.jsonl``,
    ``rejects.jsonl`` and ``summary.json``. Returns the summary (see :func:`merge_parts`).

    The input is cut into parts of ``data.curation.videos_per_part`` videos; part ``i`` belongs to rank
    ``i mod world_size`` (:mod:`vmas.data.ranks`) and is written to ``out_dir/parts/`` with a done-marker, so a
    killed run redoes only unfinished parts and a finished run is a no-op. The manifest follows ``items``' order
    whatever the world size or worker count, so the shard plan built from it is reproducible. With
    ``workers == 0`` the given ``embedder`` / ``vocal_remover`` are used in this process (default: built from
    ``data_cfg.curation``); with ``workers > 0`` each spawned process builds its own from the config.
    """
    from vmas.data.ranks import RankInfo

    info = rank or RankInfo()
    cfg = data_cfg.curation
    out = Path(out_dir)
    parts_dir = out / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    parts = plan_parts(items, data_cfg, split_overrides)
    mine = info.mine(parts)
    for part in mine:  # temp files of my parts are leftovers of my crashed run; other ranks' are left alone
        for stale in parts_dir.glob(f"{part.name}.*.tmp.*"):
            stale.unlink(missing_ok=True)
    todo = [p for p in mine if _part_done(parts_dir, p) is None]
    kwargs = dict(clip_seconds=data_cfg.clip_seconds, sample_rate=data_cfg.sample_rate, audio_dir=out / "audio",
                  split_overrides=dict(split_overrides or {}))
    t0 = time.perf_counter()
    todo_items = [it for p in todo for it in p.items]
    pool = None
    if todo_items and workers > 0:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(workers, _init_worker, (cfg, device, kwargs))
        results: tp.Iterator[CurationResult] = pool.imap(_work, todo_items)
    elif todo_items:
        emb = embedder if embedder is not None else build_frame_embedder(cfg.embedder, cfg.embedder_weights, device,
                                                                   cfg.variety_threshold)
        vr = vocal_remover if vocal_remover is not None else build_vocal_remover(cfg, device)
        results = (curate_video(it, cfg, embedder=emb, vocal_remover=vr, **kwargs) for it in todo_items)
    n = 0
    try:
        for part in todo:
            clips, rejects, outcomes = [], [], []
            for _ in part.items:
                res = next(results)
                clips += res.clips
                rejects += res.rejects
                outcomes.append(_video_outcome(res))
                n += 1
                if progress:
                    progress(n, len(todo_items))
            man, rej, marker = _part_files(parts_dir, part)
            _write_atomic(man, "".join(json.dumps(r) + "\n" for r in clips))
            _write_atomic(rej, "".join(json.dumps(r) + "\n" for r in rejects))
            _write_atomic(marker, json.dumps({"digest": part.digest, "videos": len(part.items),
                                              "outcomes": outcomes}))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    elapsed = time.perf_counter() - t0
    summary = merge_parts(items, out, data_cfg, split_overrides, only_if_complete=True)
    summary.update(rank=info.rank, world_size=info.world_size, parts_owned=len(mine), parts_written=len(todo),
                   parts_skipped=len(mine) - len(todo), seconds=round(elapsed, 3),
                   videos_per_s=round(len(todo_items) / elapsed, 3) if todo_items and elapsed > 0 else 0.0)
    if summary["complete"]:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def merge_parts(items: tp.Sequence[VideoItem], out_dir: tp.Union[str, Path], data_cfg: tp.Any,
                split_overrides: tp.Optional[tp.Mapping[str, str]] = None, only_if_complete: bool = False) -> dict:
    """Join the finished parts into ``manifest.jsonl`` / ``rejects.jsonl`` (input order); returns the counts.

    Written only when every part is done unless ``only_if_complete`` is False (``--merge``: a partial manifest of
    the finished parts, flagged ``"complete": false`` in the returned state). ``problem`` is set when the run kept
    no video, or when one reason dropped more than ``data.curation.max_reject_share`` of the videos: see
    :func:`curation_problem`."""
    out = Path(out_dir)
    parts_dir = out / "parts"
    parts = plan_parts(items, data_cfg, split_overrides)
    done = {p.name: _part_done(parts_dir, p) for p in parts}
    missing = [p.name for p in parts if done[p.name] is None]
    state: tp.Dict[str, tp.Any] = {"parts": len(parts), "parts_done": len(parts) - len(missing),
                                   "complete": not missing, "missing": missing[:20]}
    if missing and only_if_complete:
        return state
    outcomes: tp.Dict[str, int] = {}
    clips, rejects = [], []
    for p in parts:
        if done[p.name] is None:
            continue
        man, rej, _ = _part_files(parts_dir, p)
        clips += man.read_text().splitlines(keepends=True)
        rejects += rej.read_text().splitlines(keepends=True)
        for o in done[p.name]["outcomes"]:
            outcomes[o] = outcomes.get(o, 0) + 1
    _write_atomic(out / "manifest.jsonl", "".join(clips))
    _write_atomic(out / "rejects.jsonl", "".join(rejects))
    splits = {s: 0 for s in SPLITS}
    for line in clips:
        splits[json.loads(line)["split"]] += 1
    reasons: tp.Dict[str, int] = {}
    for line in rejects:
        r = json.loads(line)["reason"]
        reasons[r] = reasons.get(r, 0) + 1
    videos = sum(outcomes.values())
    dropped = {k: v for k, v in sorted(outcomes.items()) if k != "kept"}
    state.update(videos=videos, videos_kept=outcomes.get("kept", 0), videos_dropped_by=dropped, clips=len(clips),
                 clips_per_split=splits, rejects=len(rejects), reject_reasons=reasons)
    state["problem"] = curation_problem(state, data_cfg.curation) if state["complete"] else None
    return state


def curation_problem(state: tp.Mapping[str, tp.Any], cfg: "CurationConfig") -> tp.Optional[str]:
    """One line when a finished run looks wrong: nothing kept, or one reason dropping most videos. A threshold on
    the wrong scale (issue 18: a weight-free embedder with a pretrained model's threshold) shows up here, not when
    training finds an empty dataset."""
    videos, kept, dropped = state["videos"], state["videos_kept"], state["videos_dropped_by"]
    if not videos:
        return "no input videos: point the command at folders, lists or video files"
    top = max(dropped.items(), key=lambda kv: kv[1]) if dropped else ("", 0)
    fixes = {"low_visual_variety": f"the variety filter (embedder '{cfg.embedder}', threshold "
                                   f"{variety_threshold(cfg):g}) is set for other footage: check a few rejected "
                                   f"videos' scores in rejects.jsonl and set data.curation.variety_threshold",
             "no_audio": "these videos have no audio stream ffmpeg can decode",
             "unreadable": "ffmpeg cannot decode these files (see rejects.jsonl)",
             "too_short": "videos are shorter than one clip: lower data.clip_seconds",
             "silent_audio": "the (accompaniment) audio is below data.curation.silence_db: check vocal removal "
                             "and the threshold",
             "vocal_removal_failed": "Demucs failed: see rejects.jsonl, or pass --no-vocal-removal"}
    fix = fixes.get(top[0], "see rejects.jsonl")
    if kept == 0:
        return f"kept 0 of {videos} videos ({', '.join(f'{v} {k}' for k, v in dropped.items())}): {fix}"
    if top[1] > cfg.max_reject_share * videos:
        return (f"{top[1]} of {videos} videos dropped as {top[0]} (more than data.curation.max_reject_share="
                f"{cfg.max_reject_share:g}): {fix}")
    return None
