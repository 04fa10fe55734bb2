"""End-to-end benchmark: generate music for every clip of a test manifest, then evaluate (tools/evaluate.py).

Resumable per clip: ``OUT/generated/<clip id>.wav`` is written atomically (into ``OUT/generated/.partial`` first,
then renamed), and a clip whose output exists is skipped, so an interrupted run continues where it stopped.
A clip that fails is logged to ``OUT/failures.jsonl`` and retried on the next run; the others still finish.

    python tools/benchmark.py --manifest data/disco_mv/test.jsonl --model runs/paper/ckpt.pt --out runs/bench \\
        --metrics fad,kl,mv_align,clap --fad-backbone vggish --kl-classifier passt

The manifest format is tools/evaluate.py's (the curation's manifest.jsonl with ``--split test`` works: a clip with
a ``start`` inside a long source video is cut to its own file first; ``duration`` caps the generated length).
Generation goes through ``vmas.generate.generate_for_video`` via :func:`vmas_generator` (the adapter keeps this
script independent of the generation internals); any ``generator(clip, out_wav)`` callable can replace it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import typing as tp
from pathlib import Path

if __package__ in (None, ""):  # `python tools/benchmark.py` from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.evaluate import ALL_METRICS, evaluate, read_manifest, write_report  # noqa: E402
from vmas.errors import VmasError  # noqa: E402

Generator = tp.Callable[[tp.Dict[str, tp.Any], Path], None]


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
        work.mkdir(parents=True, exist_ok=True)
        try:
            video = clip["video"]
            start = float(clip.get("start") or 0.0)
            if start > 0:  # curation manifests point into whole source videos: give the model just the clip
                video = cut_clip(video, start, float(clip.get("duration") or 0.0) or None,
                                 work / f"{clip['id']}.mp4")
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
                   split: tp.Optional[str] = None) -> tp.Dict[str, int]:
    """Generate ``out_dir/<id>.wav`` for every manifest clip (of ``split``) that has none yet; returns counts."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    partial = out_dir / ".partial"
    partial.mkdir(parents=True, exist_ok=True)
    clips = read_manifest(manifest)
    if split:
        clips = [c for c in clips if c.get("split", split) == split]
    clips = clips[: limit or None]
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


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--manifest", required=True, help="test manifest (JSONL, see tools/evaluate.py)")
    p.add_argument("--model", default=None, help="registered model name or checkpoint path (default: package default)")
    p.add_argument("--out", default="runs/bench", help="output folder: generated/, report.json, report.md")
    p.add_argument("--reference", help="folder of reference music when the manifest has no 'audio'")
    p.add_argument("--metrics", default=",".join(ALL_METRICS))
    p.add_argument("--fad-backbone", default="vggish")
    p.add_argument("--kl-classifier", default="passt")
    p.add_argument("--clap-model", default="laion/clap-htsat-unfused")
    p.add_argument("--mv-flow", default="farneback")
    p.add_argument("--retrieval-embeddings", help="see tools/evaluate.py")
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--top-k", type=int, default=250)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--auto-tags", action="store_true", help="tag branch: tags from the auto-tagger")
    p.add_argument("--split", help="keep manifest rows whose 'split' is this (e.g. test)")
    p.add_argument("--limit", type=int, default=0, help="first N clips only (0 = all)")
    p.add_argument("--skip-generation", action="store_true", help="only evaluate what is already generated")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    gen_dir = out / "generated"
    try:
        if not args.skip_generation:
            generator = vmas_generator(args.model, cfg=args.cfg, top_k=args.top_k, temperature=args.temperature,
                                       seed=args.seed, auto_tags=args.auto_tags)
            stats = run_generation(args.manifest, gen_dir, generator, args.limit, not args.no_progress,
                                   failures=out / "failures.jsonl", split=args.split)
            print(f"generation: {stats}")
        report = evaluate(gen_dir, args.manifest, args.reference, args.metrics.split(","), args.fad_backbone,
                          args.kl_classifier, args.clap_model, args.mv_flow, args.retrieval_embeddings, args.limit,
                          progress=not args.no_progress, model=args.model, split=args.split)
    except VmasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    md = write_report(report, out / "report.json")
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
