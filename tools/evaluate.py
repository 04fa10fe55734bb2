"""Benchmark evaluation: FAD, KL, MV-Align, retrieval R@k and CLAP score -> report.json + report.md.

Paper setting (needs the backbones' weights, see docs/metrics.md)::

    python tools/evaluate.py --manifest data/test.jsonl --generated runs/bench/generated \\
        --metrics fad,kl,mv_align,retrieval,clap --fad-backbone vggish --kl-classifier passt \\
        --retrieval-embeddings runs/bench/retrieval.pt --out runs/bench/report.json

FAD between two folders of audio (no manifest)::

    python tools/evaluate.py --reference data/musiccaps_wavs --generated runs/bench/generated --out fad.json

Weight-free smoke run (numbers NOT comparable with the paper; the report says so)::

    python tools/evaluate.py --manifest m.jsonl --generated g/ --fad-backbone mel --kl-classifier mel --out r.json

Manifest: one JSON object per line, paths relative to the manifest's folder:
``{"id": "clip0", "video": "clips/clip0.mp4", "audio": "clips/clip0.wav", "tags": "piano, 96 BPM",
"start": 0.0, "duration": 10.0}`` (``key``/``clip_id`` accepted for ``id``; ``music``/``wav`` for ``audio``;
``tags`` may be a list; ``caption`` is used when there are no tags; the curation's manifest.jsonl works as is,
with ``--split test``). Generated music for a clip is ``GENERATED/<id>.{wav,flac,mp3,mp4}`` (or ``<video stem>.*``,
what ``vmas`` writes); reference music is the manifest's ``audio`` (its ``[start, start + duration)`` span), else
``REFERENCE/<id>.*``, else the video's own audio stream (same span).

A metric whose backbone weights are missing is omitted from the report and ``meta.skipped`` says why; numbers
are never made up.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import typing as tp
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # `python tools/evaluate.py` from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmas.errors import CheckpointError, DataError, MediaError, VmasError  # noqa: E402

ALL_METRICS = ("fad", "kl", "mv_align", "retrieval", "clap")
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


def reference_source(clip: tp.Dict[str, tp.Any], ref_dir: tp.Optional[Path]):
    """(path, span) of a clip's reference music, in this order: the manifest's ``audio`` file, ``REF_DIR/<id>.*``
    (already clip-length), the audio stream of the manifest's video. ``span`` = (start, duration) s inside a
    long source file (curation manifests point at whole source files), None for a clip-length file."""
    span = (float(clip.get("start") or 0.0), float(clip.get("duration") or 0.0))
    span = None if span == (0.0, 0.0) else span
    ref = clip.get("audio")
    if ref and Path(ref).is_file():
        return Path(ref), span
    found = find_audio(ref_dir, clip["id"])
    if found is not None:
        return found, None
    if clip.get("video") and Path(clip["video"]).is_file():
        return Path(clip["video"]), span
    return None, None


def find_audio(folder: tp.Optional[Path], *stems: tp.Optional[str]) -> tp.Optional[Path]:
    if folder is None:
        return None
    for stem in stems:
        if not stem:
            continue
        for ext in AUDIO_EXTS:
            p = folder / f"{stem}{ext}"
            if p.is_file() and p.stat().st_size > 0:
                return p
    return None


def list_audio(folder: Path) -> tp.List[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of audio files")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_EXTS and p.stat().st_size > 0)
    if not files:
        raise DataError(f"{folder}: no audio files ({', '.join(AUDIO_EXTS)})")
    return files


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
def evaluate(generated: tp.Union[str, Path], manifest: tp.Optional[tp.Union[str, Path]] = None,
             reference: tp.Optional[tp.Union[str, Path]] = None, metrics: tp.Sequence[str] = ALL_METRICS,
             fad_backbone: str = "vggish", kl_classifier: str = "passt", clap_model: str = "laion/clap-htsat-unfused",
             mv_flow: str = "farneback", retrieval_embeddings: tp.Optional[str] = None, limit: int = 0,
             progress: bool = True, model: tp.Any = None, split: tp.Optional[str] = None) -> tp.Dict[str, tp.Any]:
    """Compute the requested metrics; returns ``{metric: number, ..., "meta": {...}}``.

    ``model`` (name, checkpoint path or loaded pipeline) is only used for retrieval when no
    ``retrieval_embeddings`` file is given: its contrastive heads embed the manifest's videos and reference music.
    ``split`` keeps only manifest rows with that ``split`` value (curation manifests hold train/val/test).
    """
    from tqdm import tqdm

    from vmas.metrics.embeddings import load_audio

    generated = Path(generated)
    ref_dir = Path(reference) if reference else None
    metrics = [m.strip() for m in metrics if m.strip()]
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise VmasError(f"unknown metric(s) {sorted(unknown)}; choose from {','.join(ALL_METRICS)}")
    report: tp.Dict[str, tp.Any] = {}
    meta: tp.Dict[str, tp.Any] = {"backbones": {}, "clips": {}, "skipped": {}, "fallbacks": [],
                                  "generated": str(generated), "reference": str(ref_dir) if ref_dir else None,
                                  "manifest": str(manifest) if manifest else None, "versions": _versions()}

    def skip(metric: str, why: str) -> None:
        meta["skipped"][metric] = why

    def clip_error(metric: str, err: Exception) -> None:
        """One unreadable file skips that clip for that metric (counted in meta), never the whole run."""
        meta.setdefault("clip_errors", {}).setdefault(metric, []).append(str(err))

    # ---- pairs: (id, generated path, reference path, clip)
    if manifest is None:
        if ref_dir is None:
            raise VmasError("pass --manifest, or --reference DIR to compare two folders of audio")
        gen_files = [(p, None) for p in list_audio(generated)]
        ref_files = [(p, None) for p in list_audio(ref_dir)]
        clips: tp.List[tp.Dict[str, tp.Any]] = []
        for m in [m for m in metrics if m != "fad"]:
            skip(m, "needs --manifest (clip ids, videos, tags)")
        metrics = [m for m in metrics if m == "fad"]
    else:
        clips = read_manifest(manifest)
        if split:
            clips = [c for c in clips if c.get("split", split) == split]
        clips = clips[: limit or None]
        from collections import Counter

        per_video = Counter(c.get("video") for c in clips)
        for c in clips:
            # `<video stem>.wav` (what `vmas` writes) only identifies the clip when no other clip shares the video
            stem = Path(c["video"]).stem if c.get("video") and per_video[c["video"]] == 1 else None
            c["gen_path"] = find_audio(generated, c["id"], stem)
            c["ref_path"], c["ref_span"] = reference_source(c, ref_dir)
        missing = [c["id"] for c in clips if c["gen_path"] is None]
        meta["clips"]["manifest"] = len(clips)
        meta["clips"]["missing_generated"] = len(missing)
        if missing:
            meta["missing_generated_ids"] = missing[:20]
        gen_files = [(c["gen_path"], None) for c in clips if c["gen_path"] is not None]
        ref_files = [(c["ref_path"], c["ref_span"]) for c in clips if c["ref_path"] is not None]

    cache: tp.Dict[tp.Tuple[str, int], np.ndarray] = {}

    def audio(path: Path, sr: int, span: tp.Optional[tp.Tuple[float, float]] = None) -> np.ndarray:
        """Whole file (cached: a long source serves many clips), or the clip's [start, start + duration) span."""
        key = (str(path), sr)
        if key not in cache:
            if len(cache) >= 8:
                cache.clear()
            cache[key] = load_audio(path, sr)[0]
        wav = cache[key]
        if span is None:
            return wav
        a = int(round(span[0] * sr))
        return wav[a: a + int(round(span[1] * sr))] if span[1] else wav[a:]

    # ---- FAD
    if "fad" in metrics:
        from vmas.metrics.embeddings import build_embedder
        from vmas.metrics.fad import FrechetAudioDistance

        try:
            emb = build_embedder(fad_backbone)
            if not ref_files:
                raise DataError("no reference audio (manifest 'audio' or --reference)")
            fad = FrechetAudioDistance(emb)
            for real, files in ((True, ref_files), (False, gen_files)):
                for path, span in tqdm(files, desc=f"FAD {'reference' if real else 'generated'}",
                                       disable=not progress):
                    try:
                        wav = audio(path, emb.sample_rate, span)
                    except MediaError as err:
                        clip_error("fad", err)
                        continue
                    fad.update(emb.embed(wav, emb.sample_rate), real=real)
            report["fad"] = fad.compute()
            meta["backbones"]["fad"] = emb.describe()
            meta["clips"]["fad"] = {"reference": fad.real.clips, "generated": fad.fake.clips,
                                    "embeddings_reference": fad.real.n, "embeddings_generated": fad.fake.n}
            if not emb.paper_setting:
                meta["fallbacks"].append(f"fad: {emb.name} (paper: VGGish)")
        except (CheckpointError, DataError) as err:
            skip("fad", str(err))

    # ---- KL
    if "kl" in metrics:
        from vmas.metrics.kl import KLDivergence, build_classifier

        try:
            clf = build_classifier(kl_classifier)
            kl = KLDivergence(clf)
            pairs = [c for c in clips if c["gen_path"] is not None and c["ref_path"] is not None]
            if not pairs:
                raise DataError("no (reference, generated) pairs with the same clip id")
            for c in tqdm(pairs, desc="KL", disable=not progress):
                sr = clf.sample_rate
                try:
                    ref_wav, gen_wav = audio(c["ref_path"], sr, c["ref_span"]), audio(c["gen_path"], sr)
                except MediaError as err:
                    clip_error("kl", err)
                    continue
                kl.update_audio(c["id"], ref_wav, sr, gen_wav, sr)
            report["kl"] = kl.compute()
            meta["backbones"]["kl"] = clf.describe()
            meta["clips"]["kl"] = len(kl.ref)
            if not clf.paper_setting:
                meta["fallbacks"].append(f"kl: {clf.name} (paper: PaSST)")
        except (CheckpointError, DataError) as err:
            skip("kl", str(err))

    # ---- MV-Align
    if "mv_align" in metrics:
        from vmas.metrics.mv_align import MVAlign, read_video_frames

        mv, mv_ref = MVAlign(mv_flow), MVAlign(mv_flow)
        todo = [c for c in clips if c["gen_path"] is not None and c.get("video")]
        errors = 0
        for c in tqdm(todo, desc="MV-Align", disable=not progress):
            try:
                frames, fps = read_video_frames(c["video"], float(c.get("start") or 0.0), c.get("duration"))
                mv.update_media(audio(c["gen_path"], 22050), 22050, frames, fps, c["id"])
                if c["ref_path"] is not None:
                    mv_ref.update_media(audio(c["ref_path"], 22050, c["ref_span"]), 22050, frames, fps, c["id"])
            except (DataError, MediaError) as err:
                errors += 1
                clip_error("mv_align", err)
            except CheckpointError as err:  # RAFT weights missing: the metric cannot run at all
                mv.reset()
                errors = f"flow backbone unavailable: {err}"
                break
        if mv.scores:
            report["mv_align"] = mv.compute()
            meta["backbones"]["mv_align"] = mv.meta()
            meta["clips"]["mv_align"] = len(mv.scores)
            if mv_ref.scores:
                meta["mv_align_reference"] = mv_ref.compute()  # ground-truth music on the same videos
        else:
            skip("mv_align", errors if isinstance(errors, str) else
                 f"no clip with a readable video and generated music ({errors} errors)")

    # ---- retrieval
    if "retrieval" in metrics:
        from vmas.metrics.retrieval import VideoMusicRetrieval

        try:
            if retrieval_embeddings or model is None:
                video, music, ids = load_retrieval_embeddings(retrieval_embeddings)
                source = str(retrieval_embeddings)
            else:
                from vmas.hub import load_model
                from vmas.metrics.retrieval import model_retrieval_embeddings

                pipe = model if hasattr(model, "codec") else load_model(model)
                video, music, ids = model_retrieval_embeddings(pipe, clips, progress=progress)
                source = f"model {model if isinstance(model, (str, os.PathLike)) else type(model).__name__}"
            r = VideoMusicRetrieval()
            r.update(video, music)
            res = r.compute()
            report["retrieval"] = res
            meta["backbones"]["retrieval"] = {"embeddings": source,
                                              "source": "model contrastive heads (video -> music)"}
            meta["clips"]["retrieval"] = r.num_pairs
        except (CheckpointError, DataError) as err:
            skip("retrieval", str(err))

    # ---- CLAP score
    if "clap" in metrics:
        from vmas.metrics.clap_score import ClapScore

        try:
            todo = [c for c in clips if c["gen_path"] is not None and c["text"]]
            if not todo:
                raise DataError("no clip has tags/caption in the manifest")
            cs = ClapScore(clap_model)
            for c in tqdm(todo, desc="CLAP", disable=not progress):
                sr = cs.audio.sample_rate
                try:
                    wav = audio(c["gen_path"], sr)
                except MediaError as err:
                    clip_error("clap", err)
                    continue
                cs.update([wav], sr, [c["text"]], ids=[c["id"]])
            report["clap"] = cs.compute()
            meta["backbones"]["clap"] = cs.meta()["backbone"]
            meta["clips"]["clap"] = len(cs.scores)
        except (CheckpointError, DataError, VmasError) as err:
            skip("clap", str(err))

    report["meta"] = meta
    return report


def load_retrieval_embeddings(path: tp.Optional[str]):
    """``.pt`` (dict) or ``.npz`` with ``video`` [N, D] and ``music`` [N, D] (row i = pair i), optional ``ids``."""
    import torch

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
def markdown_table(report: tp.Dict[str, tp.Any]) -> str:
    meta = report.get("meta", {})
    rows = ["| metric | value | backbone | clips |", "|---|---|---|---|"]
    for m in ALL_METRICS:
        if m not in report:
            continue
        value = report[m]
        values = [(f"{m} {k}", v) for k, v in value.items()] if isinstance(value, dict) else [(m, value)]
        backbone = meta.get("backbones", {}).get(m, "")
        if isinstance(backbone, dict):
            backbone = backbone.get("name", backbone.get("flow", backbone.get("embeddings", "")))
        clips = meta.get("clips", {}).get(m, "")
        if isinstance(clips, dict):
            clips = f"{clips.get('reference')} ref / {clips.get('generated')} gen"
        for name, v in values:
            rows.append(f"| {name} | {v:.4f} | {backbone} | {clips} |")
    lines = ["\n".join(rows)]
    for m, why in meta.get("skipped", {}).items():
        lines.append(f"- **{m} not computed**: {why}")
    for f in meta.get("fallbacks", []):
        lines.append(f"- **fallback backbone, not comparable with the paper**: {f}")
    return "\n\n".join(lines) + "\n"


def write_report(report: tp.Dict[str, tp.Any], out: tp.Union[str, Path]) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md = out.with_suffix(".md")
    md.write_text(markdown_table(report))
    return md


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--manifest", help="test manifest (JSONL); optional with --reference for FAD only")
    p.add_argument("--generated", required=True, help="folder of generated music (<clip id>.wav)")
    p.add_argument("--reference", help="folder of reference music (<clip id>.wav); overrides nothing in the manifest")
    p.add_argument("--metrics", default=",".join(ALL_METRICS), help="comma-separated subset of " + ",".join(ALL_METRICS))
    p.add_argument("--out", default="report.json", help="report path (a .md table is written next to it)")
    p.add_argument("--fad-backbone", default="vggish", help="vggish[:path] | clap:<name|folder> | encodec:<src> | mel")
    p.add_argument("--kl-classifier", default="passt", help="passt | ast:<name|folder> | mel")
    p.add_argument("--clap-model", default="laion/clap-htsat-unfused", help="CLAP hub name or folder")
    p.add_argument("--mv-flow", default="farneback", help="farneback (reference) | raft_small | raft_large")
    p.add_argument("--retrieval-embeddings", help=".pt/.npz with 'video' and 'music' [N, D] contrastive embeddings")
    p.add_argument("--model", help="VMAS checkpoint/name: retrieval embeddings from its contrastive heads")
    p.add_argument("--split", help="keep manifest rows whose 'split' is this (e.g. test); rows without one are kept")
    p.add_argument("--limit", type=int, default=0, help="first N manifest clips only (0 = all)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    metrics = args.metrics.split(",")
    if not args.manifest and args.metrics == ",".join(ALL_METRICS):
        metrics = ["fad"]  # --reference alone: FAD between two folders
    try:
        report = evaluate(args.generated, args.manifest, args.reference, metrics, args.fad_backbone,
                          args.kl_classifier, args.clap_model, args.mv_flow, args.retrieval_embeddings, args.limit,
                          progress=not args.no_progress, model=args.model, split=args.split)
    except VmasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    md = write_report(report, args.out)
    print(md.read_text())
    print(f"wrote {args.out} and {md}")
    return 0 if set(report) - {"meta"} else 1  # nothing computed (all skipped): fail loudly for scripts


if __name__ == "__main__":
    sys.exit(main())
