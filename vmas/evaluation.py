"""Evaluation API: score a folder of generated music against a test manifest or a V2M-bench folder (FAD, KL, FD,
MV-Align (one-to-one) with the AV-Align reference script's score beside it, retrieval R@k, CLAP score; ImageBind
is reported as skipped with its reason), and generate music for every clip first (resumable).

Why a module and not a script: a ``pip install`` user evaluates with ``from vmas.evaluation import evaluate`` and
no repository checkout; ``tools/evaluate.py`` and ``tools/benchmark.py`` are thin argparse wrappers over this.

    from vmas.evaluation import evaluate, write_report
    report = evaluate("runs/bench/generated", "data/test.jsonl", metrics=["fad", "kl", "mv_align"],
                      fad_backbone="mel", kl_classifier="mel")   # weight-free smoke setting
    write_report(report, "runs/bench/report.json")                # + report.md

Manifest: one JSON object per line, paths relative to the manifest's folder:
``{"id": "clip0", "video": "clips/clip0.mp4", "audio": "clips/clip0.wav", "tags": "piano, 96 BPM",
"start": 0.0, "duration": 10.0}`` (``key``/``clip_id`` accepted for ``id``; ``music``/``wav`` for ``audio``;
``tags`` may be a list; ``caption`` is used when there are no tags; the curation's manifest.jsonl works as is,
with ``split="test"``). Generated music for a clip is ``GENERATED/<id>.{wav,flac,mp3,mp4}`` (or ``<video stem>.*``,
what ``vmas`` writes); reference music is the manifest's ``audio`` (its ``[start, start + duration)`` span), else
``REFERENCE/<id>.*``, else the video's own audio stream (same span). One file per clip stem in a folder
(:func:`one_per_stem`: ``NAME.wav`` + ``NAME.mp4`` from ``vmas generate`` reads the .wav; other duplicates are an
error listing them).

A metric whose backbone weights are missing is omitted from the report and ``meta.skipped`` says why; numbers
are never made up.

Also here, for the benchmarks (``tools/*_benchmark.py`` over ``vmas.experiments``): :func:`generate_windows`; their
clips, judge and scores are in ``vmas.experiments.scoring``.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import time
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vmas.errors import CheckpointError, ConfigError, DataError, MediaError, VmasError

ALL_METRICS = ("fad", "kl", "mv_align", "retrieval", "clap", "fd", "imagebind", "beat")
LAYOUTS = ("manifest", "v2m-bench")
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".mov", ".avi")
IMAGEBIND_UNAVAILABLE = (
    "no maintained PyPI package provides a loadable ImageBind here (`imagebind` "
    "0.0.1.dev0 is an empty placeholder; `imagebind-unofficial` 0.1.1 needs pytorchvideo 0.1.5, whose "
    "`torchvision.transforms.functional_tensor` import fails on torchvision >= 0.17, and its weights "
    "imagebind_huge.pth download at run time); score it with the ImageBind repository's own environment")
AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".mp4", ".mkv", ".webm")


# ------------------------------------------------------------------------------------------------------ manifest
def read_manifest(path: tp.Union[str, Path]) -> tp.List[tp.Dict[str, tp.Any]]:
    """Clips of a JSONL manifest with ``id`` normalised and paths made absolute."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} not found; pass --manifest TEST.jsonl")
    root, clips = path.parent, []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{n}: not valid JSON ({err.msg}); one JSON object per line") from err
        clip_id = item.get("id", item.get("key", item.get("clip_id")))
        video = item.get("video", item.get("video_path"))
        if clip_id is None and video is None:
            raise DataError(f"{path}:{n}: clip has neither 'id' nor 'video'; add an 'id' field")
        clip = dict(item)
        clip["id"] = str(clip_id if clip_id is not None else Path(video).stem)
        for key, alts in (("video", ("video", "video_path")), ("audio", ("audio", "audio_path", "music", "wav"))):
            value = next((item[a] for a in alts if item.get(a)), None)
            clip[key] = str(root / value) if value is not None and not os.path.isabs(value) else value
        tags = item.get("tags", "")
        clip["text"] = ", ".join(tags) if isinstance(tags, (list, tuple)) else str(tags or item.get("caption", ""))
        clips.append(clip)
    if not clips:
        raise DataError(f"manifest {path} has no clips")
    return clips


def read_v2m_bench(root: tp.Union[str, Path]) -> tp.List[tp.Dict[str, tp.Any]]:
    """Clips of a folder laid out like V2M-bench (VidMuse's 300 test clips), paired by file name.

    VidMuse keeps a benchmark as ``ROOT/video/<id>.mp4`` + ``ROOT/audio/<id>.wav`` (ground-truth music) and lists
    it in a ``data.jsonl`` of ``{"path": <wav>, "video_path": <mp4>, "duration": s, "sample_rate": Hz}`` rows
    (``egs/V2M/build_data_jsonl.py`` of ZeyueT/VidMuse). Read in this order: ``ROOT/data.jsonl`` when present (paths
    relative to ROOT or absolute; id = the wav's stem), else every video in ``ROOT/video`` paired with
    ``ROOT/audio/<same stem>.*``. A video without music keeps ``audio=None`` (generation and MV-Align still run; the
    paired metrics skip it) and music without a video is ignored; ``meta.layout`` of the report counts both.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; --layout v2m-bench takes the benchmark folder (video/, audio/)")
    clips: tp.List[tp.Dict[str, tp.Any]] = []
    index = root / "data.jsonl"
    if index.is_file():
        for n, line in enumerate(index.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{index}:{n}: not valid JSON ({err.msg}); one JSON object per line") from err
            wav, video = row.get("path"), row.get("video_path")
            if not wav and not video:
                raise DataError(f"{index}:{n}: row has neither 'path' (music) nor 'video_path'")
            wav = str(root / wav) if wav and not os.path.isabs(wav) else wav
            video = str(root / video) if video and not os.path.isabs(video) else video
            clips.append({"id": Path(wav or video).stem, "video": video, "audio": wav,
                          "duration": row.get("duration")})
    else:
        vdir, adir = root / "video", root / "audio"
        if not vdir.is_dir():
            raise DataError(f"{root}: no data.jsonl and no video/ folder; a V2M-bench folder holds video/<id>.mp4 "
                            f"and audio/<id>.wav")
        videos = sorted(p for p in vdir.iterdir() if p.suffix.lower() in VIDEO_EXTS)
        if not videos:
            raise DataError(f"{vdir}: no videos ({', '.join(VIDEO_EXTS)})")
        for v in videos:
            wav = find_audio(adir if adir.is_dir() else None, v.stem)
            clips.append({"id": v.stem, "video": str(v), "audio": str(wav) if wav else None})
    for c in clips:
        c.setdefault("duration", None)
        c.update(start=0.0, text="", tags="", layout="v2m-bench")
    return clips


def load_clips(source: tp.Union[str, Path], layout: str = "manifest",
               split: tp.Optional[str] = None) -> tp.List[tp.Dict[str, tp.Any]]:
    """Clips of a JSONL manifest (``layout="manifest"``, rows of ``split`` only when given) or of a benchmark
    folder (``layout="v2m-bench"``, :func:`read_v2m_bench`)."""
    if layout == "v2m-bench":
        return read_v2m_bench(source)
    if layout != "manifest":
        raise VmasError(f"unknown layout '{layout}'; use one of {', '.join(LAYOUTS)}")
    clips = read_manifest(source)
    from collections import Counter

    twice = sorted(k for k, n in Counter(c["id"] for c in clips).items() if n > 1)
    if twice:  # two rows would read the same generated file: the clip would count twice
        shown = ", ".join(twice[:10]) + (f", ... {len(twice) - 10} more" if len(twice) > 10 else "")
        raise DataError(f"{source}: clip id(s) on more than one row: {shown}; give every row its own 'id'")
    if not split:
        return clips
    kept = [c for c in clips if c.get("split", split) == split]
    if not kept:
        present = sorted({str(c["split"]) for c in clips if "split" in c})
        raise DataError(f"{source}: no row has split '{split}' (splits present: {', '.join(present) or 'none'}); "
                        f"pass one of them to --split")
    return kept


def reference_source(clip: tp.Dict[str, tp.Any], ref_dir: tp.Optional[Path]):
    """(path, span) of a clip's reference music, in this order: the manifest's ``audio`` file, ``REF_DIR/<id>.*``
    (already clip-length), the audio stream of the manifest's video. ``span`` = (start, duration) s inside a
    long source file (curation manifests point at whole source files), None for a clip-length file.

    A clip whose ``audio`` names a file that is not there has no reference, (None, None): falling back to the
    video's own soundtrack would score against other audio (a curation's vocal-removed music, say, replaced by the
    song with its vocals) and nothing would say so. Nor does a V2M-bench clip without music (``layout`` set on
    the clip by :func:`read_v2m_bench`) fall back to its video's sound."""
    span = (float(clip.get("start") or 0.0), float(clip.get("duration") or 0.0))
    span = None if span == (0.0, 0.0) else span
    ref = clip.get("audio")
    if ref:
        return (Path(ref), span) if Path(ref).is_file() else (None, None)
    found = find_audio(ref_dir, clip["id"])
    if found is not None:
        return found, None
    if clip.get("video") and Path(clip["video"]).is_file() and clip.get("layout") != "v2m-bench":
        return Path(clip["video"]), span
    return None, None


RAW_AND_MIX = (".mp4", ".wav")
"""The extensions of the one pair of files a clip stem may have: ``vmas generate`` writes ``NAME.wav`` (the raw
music, what is scored) and ``NAME.mp4`` (the finished mix, which may hold the video's own sound)."""


def one_per_stem(files: tp.Iterable[Path], folder: Path) -> tp.Dict[str, Path]:
    """``{stem: file}`` with exactly one file per clip stem. The rule (tools/evaluate.py --help, README's
    Evaluation): a stem with one audio file is read from it; ``NAME.wav`` + ``NAME.mp4`` is read from the .wav; any
    other stem with several audio files (``NAME.wav`` + ``NAME.flac``, ``NAME.mp3`` + ``NAME.mp4``, three files) is
    a :class:`DataError` listing every such stem, because which of them is the clip's music cannot be known and
    reading all of them would count the clip several times."""
    by_stem: tp.Dict[str, tp.List[Path]] = {}
    for f in files:
        by_stem.setdefault(f.stem, []).append(f)
    chosen, clashes = {}, []
    for stem, group in sorted(by_stem.items()):
        group = sorted(group, key=lambda f: f.name)
        if len(group) == 1:
            chosen[stem] = group[0]
        elif tuple(sorted(f.suffix.lower() for f in group)) == RAW_AND_MIX:
            chosen[stem] = next(f for f in group if f.suffix.lower() == ".wav")
        else:
            clashes.append(f"{stem} ({', '.join(f.name for f in group)})")
    if clashes:
        shown = "; ".join(clashes[:10]) + (f"; ... {len(clashes) - 10} more" if len(clashes) > 10 else "")
        raise DataError(f"{folder}: several audio files for one clip: {shown}; keep one file per clip (NAME.wav "
                        f"+ NAME.mp4, what vmas generate writes, is fine: the .wav is read)")
    return chosen


def find_audio(folder: tp.Optional[Path], *stems: tp.Optional[str]) -> tp.Optional[Path]:
    """The clip's audio file ``folder/<stem>.*`` for the first of ``stems`` that has a non-empty one (one file per
    stem: :func:`one_per_stem`), else None."""
    if folder is None:
        return None
    for stem in stems:
        if not stem:
            continue
        found = [folder / f"{stem}{ext}" for ext in AUDIO_EXTS]
        found = [p for p in found if p.is_file() and p.stat().st_size > 0]
        if found:
            return one_per_stem(found, folder)[stem]
    return None


def list_audio(folder: Path) -> tp.List[Path]:
    """One audio file per clip stem of ``folder`` (:func:`one_per_stem`), sorted. Hidden files (``.name``: temp
    files, macOS ``._name``) are not clips. An empty or unreadable file is kept: it fails to decode and lowers the
    metric's coverage instead of vanishing from the count."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of audio files")
    files = [p for p in folder.iterdir() if p.suffix.lower() in AUDIO_EXTS and p.is_file()
             and not p.name.startswith(".")]
    if not files:
        raise DataError(f"{folder}: no audio files ({', '.join(AUDIO_EXTS)})")
    return sorted(one_per_stem(files, folder).values())


def _versions() -> tp.Dict[str, str]:
    import importlib

    out = {}
    for mod in ("vmas", "torch", "numpy", "scipy", "librosa", "cv2", "transformers"):
        try:
            out[mod] = str(getattr(importlib.import_module(mod), "__version__", "?"))
        except Exception:  # noqa: BLE001 - a missing optional package is reported, not fatal
            out[mod] = "not installed"
    return out


# ---------------------------------------------------------------------------------------------------- evaluation
Span = tp.Optional[tp.Tuple[float, float]]  # (start, duration) s inside a long source file; None: the whole file


@dataclass
class EvalContext:
    """What the metric runners (:data:`RUNNERS`) share in one :func:`evaluate` call: the paired clips, the cached
    audio loader, and the report, meta and coverage dicts every runner writes into.

    Why one object: it names everything a runner may read or write, so each runner is a function of the context
    alone and can be read, replaced or tested by itself."""
    meta: tp.Dict[str, tp.Any]  # the report's meta (backbones, clips, skipped, fallbacks, ...): runners add to it
    progress: bool = True  # tqdm bars
    # options (see evaluate): the backbones, retrieval's embeddings file or model
    fad_backbone: str = "vggish"
    fd_backbone: str = "passt"
    kl_classifier: str = "passt"
    clap_model: str = "laion/clap-htsat-unfused"
    mv_flow: str = "farneback"
    retrieval_embeddings: tp.Optional[str] = None
    model: tp.Any = None
    # the pairing (_pair_clips): manifest clips, each with gen_path, ref_path, ref_span ([] for two folders)
    clips: tp.List[tp.Dict[str, tp.Any]] = field(default_factory=list)
    gen_files: tp.List[tp.Tuple[Path, Span]] = field(default_factory=list)  # (path, span) of each generated file
    ref_files: tp.List[tp.Tuple[Path, Span]] = field(default_factory=list)  # (path, span) of each reference
    expected_gen: int = 0  # clips that should have generated music (every clip, or every file of the folder)
    expected_ref: int = 0  # clips that should have a reference (v2m-bench: those with music)
    # what the runners write: {metric: number}, {metric: _cover(...)}
    report: tp.Dict[str, tp.Any] = field(default_factory=dict)
    coverage: tp.Dict[str, tp.Dict[str, tp.Any]] = field(default_factory=dict)
    # clip id -> (the AV-Align script's Farneback curve [T], fps): read once, by MV-Align, reused by beat
    motions: tp.Dict[str, tp.Tuple[np.ndarray, float]] = field(default_factory=dict)
    _audio_cache: tp.Dict[tp.Tuple[str, int], np.ndarray] = field(default_factory=dict, repr=False)

    def skip(self, metric: str, why: str) -> None:
        """The metric is not in the report; ``meta.skipped[metric]`` says why."""
        self.meta["skipped"][metric] = why

    def clip_error(self, metric: str, err: Exception) -> None:
        """One unreadable file skips that clip for that metric (counted in meta and in its coverage), never the
        whole run."""
        self.meta.setdefault("clip_errors", {}).setdefault(metric, []).append(str(err))

    def audio(self, path: Path, sr: int, span: Span = None) -> np.ndarray:
        """Whole file (cached: a long source serves many clips), or the clip's [start, start + duration) span."""
        from vmas.metrics.embeddings import load_audio

        key = (str(path), sr)
        if key not in self._audio_cache:
            if len(self._audio_cache) >= 8:
                self._audio_cache.clear()
            self._audio_cache[key] = load_audio(path, sr)[0]
        wav = self._audio_cache[key]
        if span is None:
            return wav
        a = int(round(span[0] * sr))
        return wav[a: a + int(round(span[1] * sr))] if span[1] else wav[a:]

    def bar(self, items: tp.Iterable, desc: str) -> tp.Iterable:
        """``items`` with a tqdm progress bar when ``progress``."""
        from tqdm import tqdm

        return tqdm(items, desc=desc, disable=not self.progress)


def evaluate(generated: tp.Union[str, Path], manifest: tp.Optional[tp.Union[str, Path]] = None,
             reference: tp.Optional[tp.Union[str, Path]] = None, metrics: tp.Sequence[str] = ALL_METRICS,
             fad_backbone: str = "vggish", kl_classifier: str = "passt", clap_model: str = "laion/clap-htsat-unfused",
             mv_flow: str = "farneback", retrieval_embeddings: tp.Optional[str] = None, limit: int = 0,
             progress: bool = True, model: tp.Any = None, split: tp.Optional[str] = None,
             layout: str = "manifest", fd_backbone: str = "passt", min_coverage: float = 1.0) -> tp.Dict[str, tp.Any]:
    """Compute the requested metrics; returns ``{metric: number, ..., "coverage": {...}, "meta": {...}}``.

    ``coverage[metric]`` says how many clips each number covers out of how many it should (``{"clips": n, "of": N,
    "fraction": n / N}``; FAD and FD also per side, ``reference`` and ``generated``, the lower side's fraction
    being theirs). N is every clip of the manifest (after ``split`` and ``limit``; for the reference side and KL,
    in the v2m-bench layout, the clips that have music), or every audio file of a folder without a manifest. A
    clip that is missing or does not decode lowers it. A number whose fraction is below ``min_coverage`` (1.0:
    all clips) is not given: it is None and ``meta.withheld[metric]`` says why, so a partial run can never be
    read as the benchmark's number.

    ``layout="v2m-bench"``: ``manifest`` is a benchmark folder laid out like V2M-bench (:func:`read_v2m_bench`)
    and ``report.md`` also holds the table in the shape video-to-music papers print (:func:`paper_table`).
    ``fd`` is the Fréchet distance on a second backbone (``fd_backbone``, PaSST embeddings in those papers);
    ``mv_align`` also reports ``av_align_reference`` (the public AV-Align script's score, for papers).

    ``model`` (name, checkpoint path or loaded pipeline) is only used for retrieval when no
    ``retrieval_embeddings`` file is given: its contrastive heads embed the manifest's videos and reference music.
    ``split`` keeps only manifest rows with that ``split`` value (curation manifests hold train/val/test).

    Each metric is one runner of :data:`RUNNERS`, run in that table's order; a :class:`VmasError` out of a runner
    skips its metric only (``meta.skipped`` says why), the others still run.
    """
    generated = Path(generated)
    ref_dir = Path(reference) if reference else None
    metrics = [m.strip() for m in metrics if m.strip()]
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise VmasError(f"unknown metric(s) {sorted(unknown)}; choose from {','.join(ALL_METRICS)}")
    if not 0.0 <= min_coverage <= 1.0:
        raise VmasError(f"min coverage must be a fraction in [0, 1] (1 = all clips), got {min_coverage}")
    meta: tp.Dict[str, tp.Any] = {"backbones": {}, "clips": {}, "skipped": {}, "fallbacks": [],
                                  "generated": str(generated), "reference": str(ref_dir) if ref_dir else None,
                                  "manifest": str(manifest) if manifest else None, "versions": _versions(),
                                  "layout": {"name": layout}}
    ctx = EvalContext(meta=meta, progress=progress, fad_backbone=fad_backbone, fd_backbone=fd_backbone,
                      kl_classifier=kl_classifier, clap_model=clap_model, mv_flow=mv_flow,
                      retrieval_embeddings=retrieval_embeddings, model=model)
    metrics = _pair_clips(ctx, generated, manifest, ref_dir, metrics, split, limit, layout)
    for name, runner in RUNNERS.items():  # the table's order, not the caller's: beat reuses MV-Align's motion
        if name in metrics:
            try:
                runner(ctx)
            except ConfigError:  # a misspelt backbone / classifier / flow name is the user's error: say it loudly
                raise
            except VmasError as err:  # this metric cannot run (weights, inputs): the others still do
                ctx.skip(name, str(err))
    _withhold_below(ctx.report, ctx.coverage, ctx.meta, min_coverage)
    ctx.report["coverage"] = ctx.coverage
    ctx.report["meta"] = ctx.meta
    return ctx.report


def _pair_clips(ctx: EvalContext, generated: Path, manifest: tp.Optional[tp.Union[str, Path]],
                ref_dir: tp.Optional[Path], metrics: tp.List[str], split: tp.Optional[str], limit: int,
                layout: str) -> tp.List[str]:
    """Fill ``ctx``'s pairing (clips with ``gen_path``, ``ref_path``, ``ref_span``; gen/ref files; expected counts)
    and ``meta``'s clip counts, from a manifest or from two folders; returns the metrics that can run (two folders:
    only the distribution metrics FAD and FD, the others are skipped with the reason)."""
    meta = ctx.meta
    if manifest is None:
        if ref_dir is None:
            raise VmasError("pass --manifest, or --reference DIR to compare two folders of audio")
        if split or limit:  # they select manifest rows: without one they would silently do nothing
            raise VmasError("--split and --limit select manifest rows; two folders are compared whole (drop them, "
                            "or pass --manifest)")
        ctx.gen_files = [(p, None) for p in list_audio(generated)]
        ctx.ref_files = [(p, None) for p in list_audio(ref_dir)]
        unpaired = ("fad", "fd")  # distribution metrics need no clip ids
        for m in [m for m in metrics if m not in unpaired]:
            ctx.skip(m, "needs --manifest (clip ids, videos, tags)")
        ctx.expected_gen, ctx.expected_ref = len(ctx.gen_files), len(ctx.ref_files)  # every file of each folder
        return [m for m in metrics if m in unpaired]
    clips = ctx.clips = load_clips(manifest, layout, split)[: limit or None]
    if layout == "v2m-bench":
        meta["layout"].update(clips=len(clips), without_music=[c["id"] for c in clips if not c["audio"]])
    from collections import Counter

    # `<video stem>.wav` (what `vmas` writes) only identifies a clip whose video stem no other clip shares (as
    # its video stem or its id): two videos named clip.mp4 in two folders would both read GENERATED/clip.wav
    per_stem = Counter(Path(c["video"]).stem for c in clips if c.get("video"))
    ids = {c["id"] for c in clips}
    if generated.is_dir():  # every clip's ambiguous stem in one error, before any clip is read
        stems = {c["id"] for c in clips} | {Path(c["video"]).stem for c in clips if c.get("video")}
        one_per_stem([f for f in generated.iterdir() if f.stem in stems and f.suffix.lower() in AUDIO_EXTS
                      and f.is_file() and f.stat().st_size > 0], generated)
    for c in clips:
        stem = Path(c["video"]).stem if c.get("video") else None
        stem = stem if stem and per_stem[stem] == 1 and (stem == c["id"] or stem not in ids) else None
        c["gen_path"] = find_audio(generated, c["id"], stem)
        c["ref_path"], c["ref_span"] = reference_source(c, ref_dir)
    missing = [c["id"] for c in clips if c["gen_path"] is None]
    meta["clips"]["manifest"] = len(clips)
    meta["clips"]["missing_generated"] = len(missing)
    if missing:
        meta["missing_generated_ids"] = missing[:20]
    no_ref = [c["id"] for c in clips if c["ref_path"] is None and (c["audio"] or layout != "v2m-bench")]
    if no_ref:  # the named audio file is absent, or there is nothing to read at all
        meta["clips"]["missing_reference"] = len(no_ref)
        meta["missing_reference_ids"] = no_ref[:20]
    ctx.gen_files = [(c["gen_path"], None) for c in clips if c["gen_path"] is not None]
    ctx.ref_files = [(c["ref_path"], c["ref_span"]) for c in clips if c["ref_path"] is not None]
    # every clip should have generated music and a reference; a V2M-bench folder may lack music for a video
    ctx.expected_gen = len(clips)
    ctx.expected_ref = sum(1 for c in clips if c["audio"]) if layout == "v2m-bench" else len(clips)
    return metrics


# -------------------------------------------------------------------------------------------- metric runners
def _run_frechet(ctx: EvalContext, metric: str) -> None:
    """FAD (``metric="fad"``) and FD (``"fd"``): the same Fréchet distance between the embeddings of the reference and
    the generated music, on two backbones.

    Reads ``ctx.ref_files`` and ``ctx.gen_files`` (each file's ``span`` only), ``ctx.fad_backbone`` or
    ``ctx.fd_backbone``, ``ctx.expected_ref`` / ``expected_gen``. Writes ``report[metric]``,
    ``meta.backbones/clips[metric]`` (clips and embeddings per side), ``coverage[metric]`` (per side against
    ``expected_ref`` / ``expected_gen``, the lower side's fraction on top) and a ``meta.fallbacks`` line when the
    backbone is not the papers'. Missing weights, no reference or too few embeddings: skipped."""
    from vmas.metrics.embeddings import build_embedder
    from vmas.metrics.fad import FrechetAudioDistance

    spec, paper = {"fad": (ctx.fad_backbone, "VGGish"), "fd": (ctx.fd_backbone, "PaSST")}[metric]
    meta = ctx.meta
    try:
        emb = build_embedder(spec)
        if not ctx.ref_files:
            raise DataError("no reference audio (manifest 'audio' or --reference)")
        fad = FrechetAudioDistance(emb)
        for real, files in ((True, ctx.ref_files), (False, ctx.gen_files)):
            for path, span in ctx.bar(files, f"{metric.upper()} {'reference' if real else 'generated'}"):
                try:
                    wav = ctx.audio(path, emb.sample_rate, span)
                except MediaError as err:
                    ctx.clip_error(metric, err)
                    continue
                fad.update(emb.embed(wav, emb.sample_rate), real=real)
        ctx.report[metric] = fad.compute()
        meta["backbones"][metric] = emb.describe()
        meta["clips"][metric] = {"reference": fad.real.clips, "generated": fad.fake.clips,
                                 "embeddings_reference": fad.real.n, "embeddings_generated": fad.fake.n}
        sides = {"reference": _cover(fad.real.clips, ctx.expected_ref),
                 "generated": _cover(fad.fake.clips, ctx.expected_gen)}
        ctx.coverage[metric] = {**min(sides.values(), key=_fraction), **sides}
        if not emb.paper_setting:
            meta["fallbacks"].append(f"{metric}: {emb.name} (paper: {paper})")
    except ConfigError:  # a misspelt backbone: the caller's error, not a skipped metric
        raise
    except VmasError as err:  # weights missing, no reference, too few embeddings: skipped with the reason
        ctx.skip(metric, str(err))


def _run_kl(ctx: EvalContext) -> None:
    """KL divergence between a classifier's label distributions of each clip's reference span and of its generated
    music, over the clips that have both (paired by clip id).

    Reads ``ctx.clips`` (``gen_path``, ``ref_path``, ``ref_span``), ``ctx.kl_classifier``, ``ctx.expected_ref``.
    Writes ``report["kl"]``, ``meta["kl"]`` (every KL variant), ``meta.per_clip.kl``, ``meta.backbones/clips.kl``,
    ``coverage["kl"]`` (against ``expected_ref``) and a fallback line when the classifier is not PaSST. Missing
    weights or no pair: skipped; an unreadable clip: ``meta.clip_errors.kl``."""
    from vmas.metrics.kl import KLDivergence, build_classifier

    meta = ctx.meta
    try:
        clf = build_classifier(ctx.kl_classifier)
        kl = KLDivergence(clf)
        pairs = [c for c in ctx.clips if c["gen_path"] is not None and c["ref_path"] is not None]
        if not pairs:
            raise DataError("no (reference, generated) pairs with the same clip id")
        for c in ctx.bar(pairs, "KL"):
            sr = clf.sample_rate
            try:
                ref_wav, gen_wav = ctx.audio(c["ref_path"], sr, c["ref_span"]), ctx.audio(c["gen_path"], sr)
            except MediaError as err:
                ctx.clip_error("kl", err)
                continue
            kl.update_audio(c["id"], ref_wav, sr, gen_wav, sr)
        ctx.report["kl"] = kl.compute()
        meta["kl"] = kl.compute_all()
        meta.setdefault("per_clip", {})["kl"] = kl.per_clip()
        meta["backbones"]["kl"] = clf.describe()
        meta["clips"]["kl"] = len(kl.pq)
        ctx.coverage["kl"] = _cover(len(kl.pq), ctx.expected_ref)
        if not clf.paper_setting:
            meta["fallbacks"].append(f"kl: {clf.name} (paper: PaSST)")
    except (CheckpointError, DataError) as err:
        ctx.skip("kl", str(err))


def _run_mv_align(ctx: EvalContext) -> None:
    """MV-Align (one-to-one music-onset / video-peak matching, motion by ``ctx.mv_flow``) of each clip's generated music
    against its video span, and the public AV-Align script's two revisions on the same motion (always Farneback, as
    the script computes it); the reference music's MV-Align on the same videos beside them.

    Reads ``ctx.clips`` with generated music and a video, ``ctx.mv_flow``, ``ctx.expected_gen``; fills
    ``ctx.motions`` (the script's motion curve and fps per clip, which the beat runner reuses). Writes ``report``
    ``mv_align``, ``av_align_reference``, ``av_align_2023``, their ``meta.backbones/clips/per_clip`` and
    ``coverage`` (against ``expected_gen``), and ``meta.mv_align_reference``. An unreadable clip:
    ``meta.clip_errors.mv_align``; missing RAFT weights or no scored clip: skipped."""
    from vmas.metrics.av_align import AVAlign, motion_from_frames
    from vmas.metrics.mv_align import MVAlign, motion_curve, read_video_frames

    meta, mv_flow = ctx.meta, ctx.mv_flow
    mv, mv_ref = MVAlign(mv_flow), MVAlign(mv_flow)
    # the AV-Align script's two revisions: always Farneback, the music read by librosa.load (docs/metrics.md)
    av_ref, av_2023 = AVAlign("2025-02"), AVAlign("2023-10")
    todo = [c for c in ctx.clips if c["gen_path"] is not None and c.get("video")]
    errors: tp.Union[int, str] = 0
    for c in ctx.bar(todo, "MV-Align"):
        try:
            frames, fps = read_video_frames(c["video"], float(c.get("start") or 0.0), c.get("duration"))
            motion = motion_curve(frames, mv_flow)
            script_motion = motion if mv_flow == "farneback" else motion_from_frames(frames)
            ctx.motions[c["id"]] = (script_motion, fps)
            gen = ctx.audio(c["gen_path"], 22050)
            mv.update_media(gen, 22050, frames, fps, c["id"], motion=motion)
            for av in (av_ref, av_2023):
                av.update_motion(script_motion, fps, c["gen_path"], clip_id=c["id"])
            if c["ref_path"] is not None:
                mv_ref.update_media(ctx.audio(c["ref_path"], 22050, c["ref_span"]), 22050, frames, fps, c["id"],
                                    motion=motion)
        except (DataError, MediaError) as err:
            errors += 1
            ctx.clip_error("mv_align", err)
        except CheckpointError as err:  # RAFT weights missing: the metric cannot run at all
            mv.reset()
            errors = f"flow backbone unavailable: {err}"
            break
    if not mv.scores:
        ctx.skip("mv_align", errors if isinstance(errors, str) else
                 f"no clip with a readable video and generated music ({errors} errors)")
        return
    ctx.report["mv_align"] = mv.compute()
    ctx.report["av_align_reference"] = av_ref.compute()
    ctx.report["av_align_2023"] = av_2023.compute()
    meta["backbones"]["mv_align"] = mv.meta()
    meta["backbones"]["av_align_reference"] = av_ref.meta()
    meta["backbones"]["av_align_2023"] = av_2023.meta()
    for key, m in (("mv_align", mv), ("av_align_reference", av_ref), ("av_align_2023", av_2023)):
        meta["clips"][key] = len(m.scores)
        ctx.coverage[key] = _cover(len(m.scores), ctx.expected_gen)
        meta.setdefault("per_clip", {})[key] = dict(m.scores)  # the report's distribution plots
    if mv_ref.scores:
        meta["mv_align_reference"] = mv_ref.compute()  # ground-truth music on the same videos


def _run_beat(ctx: EvalContext) -> None:
    """Beat metrics (``vmas.metrics.beat``) of each clip's generated music: BCS/BHS/CSD/HSD and beat F1 against the
    reference's beats (LORIS), Beat Align Score against the video's motion peaks (Bailando), TBIoU against the
    video's cuts and BIoU against the reference's beats (VeM).

    Reads ``ctx.clips`` with generated music, ``ctx.expected_ref`` / ``expected_gen`` and ``ctx.motions`` (filled by
    MV-Align when it ran; the motion of a clip not there is computed here and added). Writes each metric's
    ``report`` number (mean over clips), ``meta.per_clip/clips`` and ``coverage`` (against ``expected_ref`` for the
    reference-paired ones, ``expected_gen`` for the video ones), ``meta.backbones`` ``bcs_bhs`` / ``beat_align``. An
    unreadable clip: ``meta.clip_errors.beat``; no clip scored at all: skipped."""
    from vmas.metrics import beat as bm
    from vmas.metrics.av_align import CURRENT, motion_from_frames, video_peak_times
    from vmas.metrics.mv_align import read_video_frames

    meta, report, coverage = ctx.meta, ctx.report, ctx.coverage
    cover, others = bm.BeatCoverageHit(), bm.BeatMetrics()
    for c in ctx.bar([c for c in ctx.clips if c["gen_path"] is not None], "beat"):
        try:
            gen_beats = bm.music_beats(bm.load_22k(c["gen_path"], legacy=False))
            ref_beats = None
            if c["ref_path"] is not None:
                cover.update_files(c["id"], c["ref_path"], c["gen_path"], c["ref_span"])
                ref_beats = bm.music_beats(bm.load_22k(c["ref_path"], False, *(c["ref_span"] or (0.0, None))))
            if c.get("video"):
                if c["id"] not in ctx.motions:
                    frames, fps = read_video_frames(c["video"], float(c.get("start") or 0.0), c.get("duration"))
                    ctx.motions[c["id"]] = (motion_from_frames(frames), fps)
                motion, fps = ctx.motions[c["id"]]
                cuts = bm.video_cuts(c["video"], len(motion) / fps)
                others.update(c["id"], gen_beats, video_peak_times(motion, fps, CURRENT.min_peak), cuts, ref_beats)
            elif ref_beats is not None:
                others.scores["biou"][c["id"]] = bm.biou(gen_beats, ref_beats)
        except (DataError, MediaError) as err:
            ctx.clip_error("beat", err)
    per_clip = meta.setdefault("per_clip", {})
    if cover.clips:
        res = cover.compute()
        for key in ("bcs", "bhs", "csd", "hsd"):
            report[key] = res[key]
        report["beat_f1"] = res["f1"]
        meta["backbones"]["bcs_bhs"] = cover.meta()
        per_clip["bcs"] = {k: v["bcs"] for k, v in cover.per_clip().items()}
        per_clip["bhs"] = {k: v["bhs"] for k, v in cover.per_clip().items()}
        for key in ("bcs", "bhs", "csd", "hsd", "beat_f1"):
            meta["clips"][key] = len(cover.clips)
            coverage[key] = _cover(len(cover.clips), ctx.expected_ref)
    for key, scores in others.scores.items():
        if scores:
            report[key] = float(np.mean(list(scores.values())))
            per_clip[key] = dict(scores)
            meta["clips"][key] = len(scores)
            coverage[key] = _cover(len(scores), ctx.expected_ref if key == "biou" else ctx.expected_gen)
    if others.scores["beat_align"]:
        meta["backbones"]["beat_align"] = others.meta()
    if not cover.clips and not any(others.scores.values()):
        ctx.skip("beat", "no clip with generated music and a reference or a video")


def _run_retrieval(ctx: EvalContext) -> None:
    """Video -> music retrieval R@k over the contrastive embeddings of the test pairs.

    Reads the embeddings from ``ctx.retrieval_embeddings`` (its rows' ids, when it has them, must be ``ctx.clips``
    in order), else computes them with ``ctx.model``'s contrastive heads from ``ctx.clips``' videos and reference
    music (``ctx.expected_ref`` pairs). Writes ``report["retrieval"]`` (the R@k dict),
    ``meta.backbones/clips.retrieval`` and ``coverage["retrieval"]`` (against the file's own rows, or
    ``expected_ref`` for a model). No file and no model, or missing weights: skipped."""
    from vmas.metrics.retrieval import VideoMusicRetrieval

    clips, model, path = ctx.clips, ctx.model, ctx.retrieval_embeddings
    try:
        if path or model is None:
            video, music, ids = load_retrieval_embeddings(path)
            source = str(path)
            if ids is not None and clips and [str(i) for i in ids] != [c["id"] for c in clips]:
                raise DataError(f"{path}: its rows' ids are not the manifest's clips in order "
                                f"({len(ids)} rows, {len(clips)} clips); make the file from this manifest")
            expected = len(video)  # the file's own pairs: which clips it was made from is its maker's record
        else:
            from vmas.hub import load_model
            from vmas.metrics.retrieval import model_retrieval_embeddings

            pipe = model if hasattr(model, "codec") else load_model(model)
            video, music, ids = model_retrieval_embeddings(pipe, clips, progress=ctx.progress)
            source = f"model {model if isinstance(model, (str, os.PathLike)) else type(model).__name__}"
            expected = ctx.expected_ref  # clips with a video and reference music
        r = VideoMusicRetrieval()
        r.update(video, music)
        ctx.report["retrieval"] = r.compute()
        ctx.meta["backbones"]["retrieval"] = {"embeddings": source,
                                              "source": "model contrastive heads (video -> music)"}
        ctx.meta["clips"]["retrieval"] = r.num_pairs
        ctx.coverage["retrieval"] = _cover(r.num_pairs, expected)
    except (CheckpointError, DataError) as err:
        ctx.skip("retrieval", str(err))


def _run_clap(ctx: EvalContext) -> None:
    """CLAP score: the cosine between each clip's generated music and its tags/caption, over the clips that have both.

    Reads ``ctx.clips`` (``gen_path``, ``text``), ``ctx.clap_model``, ``ctx.expected_gen``. Writes
    ``report["clap"]``, ``meta.backbones/clips.clap`` and ``coverage["clap"]`` (against ``expected_gen``). No clip
    with text, or the CLAP model not loadable: skipped; an unreadable clip: ``meta.clip_errors.clap``."""
    from vmas.metrics.clap_score import ClapScore

    try:
        todo = [c for c in ctx.clips if c["gen_path"] is not None and c["text"]]
        if not todo:
            raise DataError("no clip has tags/caption in the manifest")
        cs = ClapScore(ctx.clap_model)
        for c in ctx.bar(todo, "CLAP"):
            sr = cs.audio.sample_rate
            try:
                wav = ctx.audio(c["gen_path"], sr)
            except MediaError as err:
                ctx.clip_error("clap", err)
                continue
            cs.update([wav], sr, [c["text"]], ids=[c["id"]])
        ctx.report["clap"] = cs.compute()
        ctx.meta["backbones"]["clap"] = cs.meta()["backbone"]
        ctx.meta["clips"]["clap"] = len(cs.scores)
        ctx.coverage["clap"] = _cover(len(cs.scores), ctx.expected_gen)
    except VmasError as err:
        ctx.skip("clap", str(err))


def _run_imagebind(ctx: EvalContext) -> None:
    """ImageBind score (video <-> generated music), as V2M-bench papers report it: not computable here, so it only
    writes ``meta.skipped.imagebind`` with the reason (:data:`IMAGEBIND_UNAVAILABLE`); reads nothing."""
    ctx.skip("imagebind", IMAGEBIND_UNAVAILABLE)


RUNNERS: tp.Dict[str, tp.Callable[[EvalContext], None]] = {
    "fad": functools.partial(_run_frechet, metric="fad"),
    "fd": functools.partial(_run_frechet, metric="fd"),
    "kl": _run_kl,
    "mv_align": _run_mv_align,  # before beat: fills ctx.motions, which beat reuses
    "beat": _run_beat,
    "retrieval": _run_retrieval,
    "clap": _run_clap,
    "imagebind": _run_imagebind,
}
"""Metric name -> runner, in the order :func:`evaluate` runs them (the order matters: MV-Align fills the motion
cache that beat reuses). Its keys are exactly :data:`ALL_METRICS` (tests/test_evaluation_runners.py)."""
assert set(RUNNERS) == set(ALL_METRICS), "every metric of ALL_METRICS needs exactly one runner"


def _withhold_below(report: tp.Dict[str, tp.Any], coverage: tp.Dict[str, tp.Dict[str, tp.Any]],
                    meta: tp.Dict[str, tp.Any], min_coverage: float) -> None:
    """Every number says how many clips it covers; one whose fraction is below ``min_coverage`` becomes None and
    ``meta.withheld[metric]`` says why (and the ``--min-coverage`` that would print it)."""
    for m, cov in coverage.items():
        if _fraction(cov) < min_coverage and report.get(m) is not None:
            report[m] = None
            sides = "".join(f"; {side} {cov[side]['clips']}/{cov[side]['of']}" for side in ("reference", "generated")
                            if side in cov)
            meta.setdefault("withheld", {})[m] = (
                f"covers {cov['clips']} of {cov['of']} clips ({100 * _fraction(cov):.0f}%{sides}), below "
                f"--min-coverage {min_coverage:g}; see meta.missing_generated_ids, missing_reference_ids and "
                f"clip_errors, or pass "
                f"--min-coverage {_fraction(cov):.4g} to print it")


def _cover(n: int, of: int) -> tp.Dict[str, tp.Any]:
    """``{"clips": n, "of": N, "fraction": n / N}`` (rounded for reading; :func:`_fraction` is exact)."""
    return {"clips": int(n), "of": int(of), "fraction": round(n / of, 4) if of else 0.0}


def _fraction(cov: tp.Dict[str, tp.Any]) -> float:
    return cov["clips"] / cov["of"] if cov["of"] else 0.0


def load_retrieval_embeddings(path: tp.Optional[str]):
    """``.pt`` (dict) or ``.npz`` with ``video`` [N, D] and ``music`` [N, D] (row i = pair i), optional ``ids``."""
    if not path:
        raise DataError("retrieval needs --model (a checkpoint with contrastive heads) or --retrieval-embeddings "
                        "FILE (video/music embeddings, row i of each = test pair i)")
    p = Path(path)
    if not p.is_file():
        raise DataError(f"retrieval embeddings {p} not found")
    data = dict(np.load(p, allow_pickle=False)) if p.suffix == ".npz" else torch.load(p, map_location="cpu")
    if "video" not in data or "music" not in data:
        raise DataError(f"{p}: needs keys 'video' and 'music' ([N, D] each), found {sorted(data)}")
    return data["video"], data["music"], data.get("ids")


# ------------------------------------------------------------------------------------------------------ output
REPORTED = ("fad", "kl", "fd", "imagebind", "mv_align", "av_align_reference", "av_align_2023", "bcs", "bhs", "csd",
            "hsd", "beat_f1", "beat_align", "tbiou", "biou", "retrieval", "clap")
NAMES = {"fad": "FAD", "kl": "KL", "fd": "FD", "imagebind": "ImageBind score", "mv_align": "MV-Align (one-to-one)",
         "av_align_reference": "AV-Align (script 2025-02)", "av_align_2023": "AV-Align (script 2023-10)",
         "bcs": "BCS (LORIS)", "bhs": "BHS (LORIS)", "csd": "CSD", "hsd": "HSD", "beat_f1": "beat F1 (LORIS)",
         "beat_align": "Beat Align Score", "tbiou": "TBIoU", "biou": "BIoU",
         "retrieval": "retrieval", "clap": "CLAP score"}


def coverage_text(report: tp.Dict[str, tp.Any], metric: str) -> str:
    """How many clips ``metric``'s number covers, as the tables print it: ``3/4`` (of the clips it should cover),
    ``4/4 ref, 3/4 gen`` for FAD and FD; the bare counts for a report written before coverage was recorded."""
    cov = report.get("coverage", {}).get(metric)
    if cov is None:
        clips = report.get("meta", {}).get("clips", {}).get(metric, "")
        return f"{clips.get('reference')} ref / {clips.get('generated')} gen" if isinstance(clips, dict) else str(clips)
    if "reference" in cov:
        return ", ".join(f"{cov[side]['clips']}/{cov[side]['of']} {short}"
                         for side, short in (("reference", "ref"), ("generated", "gen")))
    return f"{cov['clips']}/{cov['of']}"


def markdown_table(report: tp.Dict[str, tp.Any]) -> str:
    meta = report.get("meta", {})
    rows = ["| metric | value | backbone | clips |", "|---|---|---|---|"]
    for m in REPORTED:
        if m not in report:
            continue
        value = report[m]
        values = [(f"{m} {k}", v) for k, v in value.items()] if isinstance(value, dict) else [(m, value)]
        backbone = meta.get("backbones", {}).get(m, "")
        if isinstance(backbone, dict):
            backbone = backbone.get("name", backbone.get("matching", backbone.get("embeddings", "")))
        clips = coverage_text(report, m)
        for name, v in values:
            rows.append(f"| {name} | {'—' if v is None else f'{v:.4f}'} | {backbone} | {clips} |")
    lines = ["\n".join(rows)]
    in_paper_table = set()
    if meta.get("layout", {}).get("name") == "v2m-bench":
        lines.append(paper_table(report))
        in_paper_table = {m for m, _ in PAPER_COLUMNS}  # its reasons are listed under that table
    for m, why in meta.get("skipped", {}).items():
        if m not in in_paper_table:
            lines.append(f"- **{m} not computed**: {why}")
    for m, why in meta.get("withheld", {}).items():
        if m not in in_paper_table:
            lines.append(f"- **{m} withheld**: {why}")
    for f in meta.get("fallbacks", []):
        lines.append(f"- **fallback backbone, not comparable with the paper**: {f}")
    return "\n\n".join(lines) + "\n"


PAPER_COLUMNS = (("fad", "FAD ↓"), ("kl", "KL ↓"), ("fd", "FD ↓"), ("imagebind", "IB ↑"),
                 ("av_align_reference", "AV-Align (ref.) ↑"), ("mv_align", "MV-Align (1:1) ↑"))


def paper_table(report: tp.Dict[str, tp.Any], method: str = "vmas") -> str:
    """One row in the column order V2M-bench papers print (FAD, KL, FD, ImageBind score), then ours: the AV-Align
    reference score (comparable with papers that ran the public script) and MV-Align (one-to-one). A metric that
    was not computed shows "—" and is listed under the table with its reason (never a made-up number)."""
    meta = report.get("meta", {})
    head = "| method | " + " | ".join(c for _, c in PAPER_COLUMNS) + " |"
    cells = [f"{report[m]:.3f}" if isinstance(report.get(m), (int, float)) else "—" for m, _ in PAPER_COLUMNS]
    clips = [coverage_text(report, m) if m in report.get("coverage", {}) else "—" for m, _ in PAPER_COLUMNS]
    lines = [head, "|---" * (len(PAPER_COLUMNS) + 1) + "|", f"| {method} | " + " | ".join(cells) + " |",
             "| clips | " + " | ".join(clips) + " |"]
    skipped, withheld = meta.get("skipped", {}), meta.get("withheld", {})
    missing = [m for m, _ in PAPER_COLUMNS if (m not in report and m != "av_align_reference") or m in withheld]
    notes = [f"- {NAMES[m]}: {withheld.get(m) or skipped.get(m, 'not requested (--metrics)')}" for m in missing]
    n = meta.get("layout", {}).get("clips")
    caption = f"V2M-bench layout, {n} clips" if n is not None else "V2M-bench layout"
    return "\n".join([f"**{caption}** (columns as video-to-music papers print them, then ours)", "", *lines]
                     + (["", "Not computed:", *notes] if notes else []))


def report_problems(report: tp.Dict[str, tp.Any], failed: int = 0, clips: int = 0) -> tp.List[str]:
    """One line per reason a run must not exit 0 (``tools/evaluate.py``, ``tools/benchmark.py``): ``failed`` of
    ``clips`` clips failed to generate, a number was withheld for coverage, or no number was computed at all."""
    problems = []
    if failed:
        problems.append(f"{failed} of {clips} clip(s) failed to generate (see failures.jsonl; a rerun retries them)")
    for m, why in report.get("meta", {}).get("withheld", {}).items():
        problems.append(f"{m} withheld: {why}")
    if not any(report.get(m) is not None for m in REPORTED):
        problems.append("no metric was computed (reasons in the report's meta.skipped)")
    return problems


def write_report(report: tp.Dict[str, tp.Any], out: tp.Union[str, Path]) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md = out.with_suffix(".md")
    md.write_text(markdown_table(report))
    return md


Generator = tp.Callable[[tp.Dict[str, tp.Any], Path], None]


# ------------------------------------------------------------------------------------------- generation
def vmas_generator(model: tp.Any = None, **controls: tp.Any) -> Generator:
    """Adapter over ``vmas.generate.generate_for_video``: loads the model once, writes ``out_wav`` for a clip."""
    from vmas.generate import generate_for_video
    from vmas.hub import load_model

    pipe = model if hasattr(model, "codec") else load_model(model)

    def generate(clip: tp.Dict[str, tp.Any], out_wav: Path) -> None:
        if not clip.get("video"):
            raise VmasError(f"clip {clip['id']}: manifest line has no 'video'; benchmark needs the clip video")
        kw = dict(controls)
        if clip.get("duration") and "duration" not in kw:
            kw["duration"] = float(clip["duration"])
        work = out_wav.parent / f"{out_wav.stem}.work"
        cut_dir = work / "input"  # the cut clip lives apart from generation's outputs: both are named <id>.mp4
        cut_dir.mkdir(parents=True, exist_ok=True)
        try:
            video = clip["video"]
            start = float(clip.get("start") or 0.0)
            if start > 0:  # curation manifests point into whole source videos: give the model just the clip
                video = cut_clip(video, start, float(clip.get("duration") or 0.0) or None,
                                 cut_dir / f"{clip['id']}.mp4")
            res = generate_for_video(video, model=pipe, out_dir=work, **kw)
            os.replace(res.wav, out_wav)
            if res.mp4 and Path(res.mp4).is_file():  # keep the muxed video next to the final wav
                os.replace(res.mp4, out_wav.parent.parent / f"{out_wav.stem}.mp4")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    return generate


def cut_clip(video: tp.Union[str, Path], start: float, duration: tp.Optional[float], out: Path) -> Path:
    """Write ``[start, start + duration)`` of ``video`` (native fps and size, no audio) to ``out`` (mp4v)."""
    import cv2

    from vmas.metrics.mv_align import read_video_frames

    frames, fps = read_video_frames(str(video), start, duration)  # uint8 RGB [T, H, W, 3]
    T, H, W, _ = frames.shape
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    if not writer.isOpened():
        raise VmasError(f"{out}: OpenCV cannot write mp4v; cut the clips beforehand and point the manifest at them")
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return out


def run_generation(manifest: tp.Union[str, Path], out_dir: tp.Union[str, Path], generator: Generator,
                   limit: int = 0, progress: bool = True, failures: tp.Optional[Path] = None,
                   split: tp.Optional[str] = None, layout: str = "manifest") -> tp.Dict[str, int]:
    """Generate ``out_dir/<id>.wav`` for every clip (of ``split``) that has none yet; returns counts.
    ``manifest`` is a benchmark folder with ``layout="v2m-bench"`` (see :func:`load_clips`)."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    partial = out_dir / ".partial"
    partial.mkdir(parents=True, exist_ok=True)
    clips = load_clips(manifest, layout, split)[: limit or None]
    stats = {"generated": 0, "skipped": 0, "failed": 0}
    bar = tqdm(clips, desc="generate", unit="clip", disable=not progress)
    for clip in bar:
        final = out_dir / f"{clip['id']}.wav"
        if final.is_file() and final.stat().st_size > 0:
            stats["skipped"] += 1
            continue
        tmp = partial / f"{clip['id']}.wav"
        try:
            generator(clip, tmp)
            if not tmp.is_file():
                raise VmasError(f"clip {clip['id']}: generator wrote no file at {tmp}")
            os.replace(tmp, final)
            stats["generated"] += 1
        except VmasError as err:
            stats["failed"] += 1
            tmp.unlink(missing_ok=True)
            if failures is not None:
                with open(failures, "a") as f:
                    f.write(json.dumps({"id": clip["id"], "error": str(err), "time": time.time()}) + "\n")
        bar.set_postfix(stats)
    shutil.rmtree(partial, ignore_errors=True)
    return stats


# ------------------------------------------------------------------------------------------ benchmark windows
def generate_windows(pipe, clips: tp.Sequence[dict], seed: int, cfg_scale: tp.Optional[float] = None,
                     top_k: tp.Optional[int] = None, batch: int = 12,
                     tags: tp.Optional[tp.Sequence[tp.Sequence[str]]] = None,
                     negative: tp.Optional[tp.Sequence[tp.Sequence[str]]] = None, guide: tp.Optional[str] = None,
                     tag_cfg: tp.Optional[float] = None, beat_from_video: tp.Optional[bool] = None,
                     onsets: tp.Optional[torch.Tensor] = None, video: bool = True) -> tp.List[np.ndarray]:
    """Music for each clip's first window (``window_seconds``) -> one float wav ``[N]`` per clip, generated by the
    one window engine exactly as ``vmas generate`` generates it (:class:`vmas.engine.WindowEngine`): the request
    is resolved against the model's own generation config (None = the model's value), every clip has its own
    generator seeded with ``seed`` (its music equals ``vmas generate --seed SEED --duration WINDOW`` on it), and
    the music is decoded through :func:`vmas.engine.decode_music`.

    ``video=False``: tags-only generation (the video slots hold the learned null condition, as for music-only
    training clips; issue 25), which needs ``tags``. ``tags`` / ``negative`` are per-clip tag lists (None = video
    only: the tag slots hold the learned null token); ``onsets`` [N, frames]: the onset oracle's input.
    """
    from vmas.engine import GenerationRequest, WindowEngine

    if not video and tags is None:
        raise VmasError("generate_windows(video=False) is tags-only generation: pass tags")
    engine = WindowEngine(pipe, GenerationRequest(cfg=cfg_scale, top_k=top_k, guide=guide, tag_cfg=tag_cfg,
                                                  beat_from_video=beat_from_video, seed=seed))
    seconds = pipe.spec.window_seconds
    jobs = [engine.job(x["video"] if video else None, seconds, tags=tags[i] if tags is not None else (),
                       negative=negative[i] if negative is not None else [],
                       onsets=None if onsets is None else onsets[i]) for i, x in enumerate(clips)]
    wavs = []
    for i in range(0, len(jobs), batch):
        chunk = jobs[i: i + batch]
        engine.run(chunk)
        wavs += [engine.music(job) for job in chunk]
    return wavs
