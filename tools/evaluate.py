"""Benchmark evaluation: FAD, KL, MV-Align, retrieval R@k and CLAP score -> report.json + report.md.

Paper setting (needs the backbones' weights, see docs/metrics.md)::

    python tools/evaluate.py --manifest data/test.jsonl --generated runs/bench/generated \\
        --metrics fad,kl,mv_align,retrieval,clap --fad-backbone vggish --kl-classifier passt \\
        --retrieval-embeddings runs/bench/retrieval.pt --out runs/bench/report.json

FAD between two folders of audio (no manifest)::

    python tools/evaluate.py --reference data/musiccaps_wavs --generated runs/bench/generated --out fad.json

A folder laid out like V2M-bench (video/<id>.mp4 + audio/<id>.wav, or VidMuse's data.jsonl), with the table in the
shape video-to-music papers print (FAD, KL, FD, ImageBind score, then AV-Align reference and MV-Align one-to-one)::

    python tools/evaluate.py --layout v2m-bench --manifest V2M-bench/ --generated runs/v2m/generated \\
        --metrics fad,kl,fd,imagebind,mv_align --out runs/v2m/report.json

Several systems in one table (the same clips, backbones and settings; each system's missing clips listed), with
``report.html`` beside the JSON (distributions, per-clip onsets over motion, mel spectrograms, audio links)::

    python tools/evaluate.py --manifest test.jsonl --generated ours=runs/ours vidmuse=runs/vidmuse \\
        --metrics fad,kl,mv_align,beat --out runs/compare/report.json

Weight-free smoke run (numbers NOT comparable with the paper; the report says so)::

    python tools/evaluate.py --manifest m.jsonl --generated g/ --fad-backbone mel --kl-classifier mel --out r.json

Thin wrapper over :func:`vmas.evaluation.evaluate` (the manifest format and report are documented there).

Manifest: one JSON object per line, paths relative to the manifest's folder:
``{"id": "clip0", "video": "clips/clip0.mp4", "audio": "clips/clip0.wav", "tags": "piano, 96 BPM",
"start": 0.0, "duration": 10.0}`` (``key``/``clip_id`` accepted for ``id``; ``music``/``wav`` for ``audio``;
``tags`` may be a list; ``caption`` is used when there are no tags; the curation's manifest.jsonl works as is,
with ``--split test``). Generated music for a clip is ``GENERATED/<id>.{wav,flac,mp3,mp4}`` (or ``<video stem>.*``,
what ``vmas`` writes); reference music is the manifest's ``audio`` (its ``[start, start + duration)`` span), else
``REFERENCE/<id>.*``, else the video's own audio stream (same span).

One file per clip in a folder (``--generated``, ``--reference``): a clip stem with one audio file is read from it;
``NAME.wav`` + ``NAME.mp4``, what ``vmas generate`` writes (the raw music and the finished mix, which may hold the
video's own sound), is read from the .wav only; any other stem with several audio files (``NAME.wav`` +
``NAME.flac``, ``NAME.mp3`` + ``NAME.mp4``, ...) is an error listing them. Hidden files (``.name``) are not clips.

A metric whose backbone weights are missing is omitted from the report and ``meta.skipped`` says why; numbers
are never made up. Every number states how many clips it covers (``coverage`` in the JSON, the ``clips`` column of
the .md); one covering fewer than ``--min-coverage`` of the clips (default 1: all) is null, the reason in
``meta.withheld``. Exit status: 0 = every computed number covers enough clips; 1 = a number was withheld or none
could be computed (the report is still written); 2 = a usage or setup error (one ``error:`` line).
"""
from __future__ import annotations

import argparse
import sys
import typing as tp
from pathlib import Path

from vmas.errors import VmasError
from vmas.evaluation import ALL_METRICS, LAYOUTS, evaluate, report_problems, write_report
from vmas.experiments.report import evaluate_systems, parse_systems, single_as_multi, write_html, write_systems_report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--manifest", help="test manifest (JSONL); optional with --reference for FAD only; the benchmark "
                                      "folder with --layout v2m-bench")
    p.add_argument("--layout", default="manifest", choices=LAYOUTS,
                   help="v2m-bench: a folder laid out like VidMuse's V2M-bench (video/<id>.mp4, audio/<id>.wav)")
    p.add_argument("--generated", required=True, nargs="+", metavar="[NAME=]FOLDER",
                   help="NAME=FOLDER for each system to compare in one table (one FOLDER alone: a single system); "
                        "folder of generated music, one file per clip (<clip id>.wav); NAME.wav + NAME.mp4 (what "
                        "vmas generate writes) reads the .wav only; any other clip with several audio files is an "
                        "error listing them")
    p.add_argument("--reference", help="folder of reference music (<clip id>.wav, one file per clip, the same rule); "
                                       "overrides nothing in the manifest")
    p.add_argument("--metrics", default=",".join(ALL_METRICS), help="comma-separated subset of " + ",".join(ALL_METRICS))
    p.add_argument("--out", default="report.json", help="report path (a .md table is written next to it)")
    p.add_argument("--fad-backbone", default="vggish", help="vggish[:path] | clap:<name|folder> | encodec:<src> | mel")
    p.add_argument("--kl-classifier", default="passt", help="passt | ast:<name|folder> | mel")
    p.add_argument("--fd-backbone", default="passt", help="FD's embedding: passt (papers) or any --fad-backbone spec")
    p.add_argument("--clap-model", default="laion/clap-htsat-unfused", help="CLAP hub name or folder")
    p.add_argument("--mv-flow", default="farneback", help="farneback (reference) | raft_small | raft_large")
    p.add_argument("--retrieval-embeddings", help=".pt/.npz with 'video' and 'music' [N, D] contrastive embeddings")
    p.add_argument("--model", help="VMAS checkpoint/name: retrieval embeddings from its contrastive heads")
    p.add_argument("--split", help="keep manifest rows whose 'split' is this (e.g. test); rows without one are kept")
    p.add_argument("--limit", type=int, default=0, help="first N manifest clips only (0 = all)")
    p.add_argument("--min-coverage", type=float, default=1.0, metavar="FRACTION",
                   help="a number covering fewer than this fraction of the clips (missing or unreadable files) is "
                        "withheld: null, with the reason; 1 = all clips")
    p.add_argument("--no-html", action="store_true", help="skip report.html (figures: matplotlib)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    metrics = args.metrics.split(",")
    if not args.manifest and args.metrics == ",".join(ALL_METRICS):
        metrics = ["fad"]  # --reference alone: FAD between two folders
    kwargs = dict(reference=args.reference, metrics=metrics, fad_backbone=args.fad_backbone,
                  kl_classifier=args.kl_classifier, clap_model=args.clap_model, mv_flow=args.mv_flow,
                  retrieval_embeddings=args.retrieval_embeddings, limit=args.limit, progress=not args.no_progress,
                  model=args.model, split=args.split, layout=args.layout, fd_backbone=args.fd_backbone,
                  min_coverage=args.min_coverage)
    try:
        systems = parse_systems(args.generated)
        single = len(args.generated) == 1 and "=" not in args.generated[0]
        if single:  # report.json keeps its one-system shape
            report = evaluate(args.generated[0], args.manifest, **kwargs)
            multi = single_as_multi(report, next(iter(systems)))
        else:
            multi = evaluate_systems(systems, args.manifest, **kwargs)
    except VmasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    md = write_report(report, args.out) if single else write_systems_report(multi, args.out)
    print(md.read_text())
    html = None if args.no_html else write_html(multi, Path(args.out).with_suffix(".html"))
    print(f"wrote {args.out} and {md}" + (f" and {html}" if html else ""))
    # a withheld number or nothing computed: fail loudly for scripts
    problems = report_problems(report) if single else [f"{name}: {line}" for name, r in multi["systems"].items()
                                                       for line in report_problems(r)]
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
