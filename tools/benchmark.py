"""End-to-end benchmark: generate music for every clip of a test manifest, then evaluate (vmas.evaluation).

Resumable per clip: ``OUT/generated/<clip id>.wav`` is written atomically (into ``OUT/generated/.partial`` first,
then renamed), and a clip whose output exists is skipped, so an interrupted run continues where it stopped.
``OUT/generated/.generation.json`` records what made that music (model, sampling controls, seed); a run with other
settings on the same folder is refused (one ``error:`` line naming what differs), so music from another model is
never scored as this one's. The report carries the record in ``meta.generation``.
A clip that fails is logged to ``OUT/failures.jsonl`` and retried on the next run; the others still finish.

Every number of the report states how many clips it covers (``coverage`` in report.json, the ``clips`` column of
report.md); a number that covers fewer than ``--min-coverage`` of the clips (default 1: all) is not printed (null,
with the reason in ``meta.withheld``). Exit status: 0 = every clip generated and every computed number covers
enough clips; 1 = a clip failed to generate, a number was withheld, or nothing could be computed (the report is
still written); 2 = a usage or setup error (one ``error:`` line).

    python tools/benchmark.py --manifest data/disco_mv/test.jsonl --model runs/paper/ckpt.pt --out runs/bench \\
        --metrics fad,kl,mv_align,clap --fad-backbone vggish --kl-classifier passt

V2M-bench (VidMuse's 300 test clips: ``ROOT/video/<id>.mp4`` + ``ROOT/audio/<id>.wav``, or its ``data.jsonl``;
clip ids paired by file name; vmas.evaluation.read_v2m_bench) with the table those papers print::

    python tools/benchmark.py --layout v2m-bench --manifest V2M-bench/ --model runs/paper/ckpt.pt --out runs/v2m \\
        --metrics fad,kl,fd,imagebind,mv_align --fad-backbone vggish --kl-classifier passt

The manifest format is tools/evaluate.py's (the curation's manifest.jsonl with ``--split test`` works: a clip with
a ``start`` inside a long source video is cut to its own file first; ``duration`` caps the generated length).
Thin wrapper over :func:`vmas.evaluation.run_generation` with :func:`vmas.evaluation.vmas_generator` (any
``generator(clip, out_wav)`` callable can replace it there) and :func:`vmas.evaluation.evaluate`.
"""
from __future__ import annotations

import argparse
import json
import sys
import typing as tp
from pathlib import Path

from vmas.errors import DataError, VmasError
from vmas.evaluation import (
    ALL_METRICS,
    LAYOUTS,
    evaluate,
    report_problems,
    run_generation,
    vmas_generator,
    write_report,
)


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--manifest", required=True,
                   help="test manifest (JSONL, see tools/evaluate.py), or the benchmark folder with --layout v2m-bench")
    p.add_argument("--layout", default="manifest", choices=LAYOUTS,
                   help="v2m-bench: a folder laid out like VidMuse's V2M-bench (video/, audio/ or data.jsonl)")
    p.add_argument("--model", default=None, help="registered model name or checkpoint path (default: package default)")
    p.add_argument("--out", default="runs/bench", help="output folder: generated/, report.json, report.md")
    p.add_argument("--reference", help="folder of reference music when the manifest has no 'audio'")
    p.add_argument("--metrics", default=",".join(ALL_METRICS))
    p.add_argument("--fad-backbone", default="vggish")
    p.add_argument("--kl-classifier", default="passt")
    p.add_argument("--fd-backbone", default="passt", help="FD's embedding (papers: PaSST); see tools/evaluate.py")
    p.add_argument("--clap-model", default="laion/clap-htsat-unfused")
    p.add_argument("--mv-flow", default="farneback")
    p.add_argument("--retrieval-embeddings", help="see tools/evaluate.py")
    # sampling: None = the model's own generation config (what `vmas generate` uses), so the scores are of its music
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's generation.cfg)")
    p.add_argument("--top-k", type=int, default=None, help="default: the model's generation.top_k")
    p.add_argument("--temperature", type=float, default=None, help="default: the model's generation.temperature")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--auto-tags", action="store_true", help="tag branch: tags from the auto-tagger")
    p.add_argument("--split", help="keep manifest rows whose 'split' is this (e.g. test)")
    p.add_argument("--limit", type=int, default=0, help="first N clips only (0 = all)")
    p.add_argument("--skip-generation", action="store_true", help="only evaluate what is already generated")
    p.add_argument("--min-coverage", type=float, default=1.0, metavar="FRACTION",
                   help="a number covering fewer than this fraction of the clips is withheld (null, with the "
                        "reason); 1 = all clips")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    gen_dir = out / "generated"
    stats = {"failed": 0}
    try:
        record = generation_record(gen_dir, args, write=not args.skip_generation)
        if not args.skip_generation:
            generator = vmas_generator(args.model, cfg=args.cfg, top_k=args.top_k, temperature=args.temperature,
                                       seed=args.seed, auto_tags=args.auto_tags)
            stats = run_generation(args.manifest, gen_dir, generator, args.limit, not args.no_progress,
                                   failures=out / "failures.jsonl", split=args.split, layout=args.layout)
            print(f"generation: {stats}")
        report = evaluate(gen_dir, args.manifest, args.reference, args.metrics.split(","), args.fad_backbone,
                          args.kl_classifier, args.clap_model, args.mv_flow, args.retrieval_embeddings, args.limit,
                          progress=not args.no_progress, model=args.model, split=args.split,
                          layout=args.layout, fd_backbone=args.fd_backbone, min_coverage=args.min_coverage)
    except VmasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report["meta"]["generation"] = record
    md = write_report(report, out / "report.json")
    print(md.read_text())
    problems = report_problems(report, failed=stats["failed"], clips=sum(stats.values()))
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    return 1 if problems else 0


def generation_record(gen_dir: Path, args: argparse.Namespace, write: bool) -> tp.Optional[tp.Dict[str, tp.Any]]:
    """What made the music in ``gen_dir``: the model (a checkpoint file with its size and modification time, so a
    retrained file at the same path counts as another model) and the controls. A folder already holding a
    different record is refused; a new one is recorded (``write``). Returns the record in force (None: evaluating
    a folder nobody recorded, e.g. ``--skip-generation`` on music from elsewhere)."""
    model = args.model or "default"
    if args.model and Path(args.model).is_file():
        st = Path(args.model).stat()
        model = {"path": str(Path(args.model).resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    want = {"model": model, "cfg": args.cfg, "top_k": args.top_k, "temperature": args.temperature,
            "seed": args.seed, "auto_tags": args.auto_tags}
    path = gen_dir / ".generation.json"
    have = json.loads(path.read_text()) if path.is_file() else None
    if have is not None and write and have != want:
        differ = ", ".join(f"{k} {have.get(k)!r} -> {want.get(k)!r}" for k in sorted(set(have) | set(want))
                           if have.get(k) != want.get(k))
        raise DataError(f"{gen_dir} holds music generated with other settings ({differ}); pass another --out, or "
                        f"delete {gen_dir} to generate again")
    if have is None and write:
        gen_dir.mkdir(parents=True, exist_ok=True)
        if any(gen_dir.glob("*.wav")):
            print(f"warning: {gen_dir} holds music from a run that did not record its settings; its clips are "
                  f"kept and counted as made with these", file=sys.stderr)
        path.write_text(json.dumps(want, indent=2) + "\n")
        have = want
    return have


if __name__ == "__main__":
    sys.exit(main())
