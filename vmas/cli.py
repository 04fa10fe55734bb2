"""The ``vmas`` command (also ``python -m vmas``): a thin wrapper over :mod:`vmas.generate`.

    vmas generate clip.mp4 other.mp4 -o out/ --tags "piano, ambient" --tempo 96 --negative "drums"
    vmas generate clips/ -o out/ --set model.tags.captioner=DIR --auto-tags --overwrite
    vmas models
    vmas demo
    vmas app --model vmas-synthmv-demo     # the web page (vmas.app)
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import typing as tp
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``vmas generate: error: argument --duration: ... (see vmas generate --help)``
    instead of the usage block followed by the error."""

    def error(self, message: str) -> tp.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, low: tp.Optional[float] = None, high: tp.Optional[float] = None, open_low: bool = False,
            what: str = "") -> tp.Callable[[str], tp.Any]:
    """An argparse ``type`` for a finite ``kind`` (int/float) in [low, high] (``open_low``: (low, high]); a bad value
    is one line naming the range."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") \
                from None
        too_low = low is not None and (value <= low if open_low else value < low)
        if value != value or value in (float("inf"), float("-inf")) or too_low or (high is not None and value > high):
            rng = ("> " if open_low else ">= ") + f"{low:g}" if low is not None else ""
            rng = f"{rng} and <= {high:g}" if high is not None else rng
            raise argparse.ArgumentTypeError(f"must be {what or rng}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


_POSITIVE = _number(float, 0, open_low=True, what="a positive number of seconds")
_FINITE = _number(float)


def _add_generate_args(p: argparse.ArgumentParser) -> None:
    from vmas.hub import DEFAULT_MODEL

    p.add_argument("video", nargs="+", help="input video file(s), or folders: every video file inside")
    p.add_argument("-o", "--output_dir", "--output-dir", dest="output_dir", default="outputs",
                   help="folder for NAME.wav and NAME.mp4")
    p.add_argument("--model", default=DEFAULT_MODEL, help="registered model name (see `vmas models`) or checkpoint path")
    p.add_argument("--tags", action="append", default=[], help='comma-separated tags, e.g. "piano, jazz"')
    p.add_argument("--instruments", action="append", default=[], help='instruments to add, e.g. "cello, harp"')
    p.add_argument("--genres", action="append", default=[], help='genres to add, e.g. "lo-fi"')
    p.add_argument("--tempo", type=_number(float, 0, 1000, open_low=True), default=None,
                   help="tempo in BPM (wins over automatic tags)")
    p.add_argument("--negative", action="append", default=[], help='tags to steer away from, e.g. "drums, vocals"')
    p.add_argument("--auto-tags", action="store_true", help="derive tags from the video (captioner + LLM)")
    p.add_argument("--cfg", type=_number(float, 0), default=None, help="classifier-free guidance scale (default: the model's "
                   "generation.cfg, 3 for MusicGen-style models)")
    p.add_argument("--top-k", type=_number(int, 0), default=None, help="top-k sampling, 0 = off (default: the model's "
                   "generation.top_k)")
    p.add_argument("--top-p", type=_number(float, 0, 1), default=None, help="nucleus sampling, 0 = off (default: the model's)")
    p.add_argument("--temperature", type=_number(float, 0), default=None, help="sampling temperature (default: the model's)")
    p.add_argument("--guide", choices=["all", "tags", "both"], default=None,
                   help="with --tags/--negative: guide against no video + no tags (all), against the video without "
                        "your tags (tags: the tags win over a contradicting picture), or both at once; default: the "
                        "model's generation.guide")
    p.add_argument("--beat-from-video", action=argparse.BooleanOptionalAction, default=None,
                   help="models with a beat condition: put the music's beats on the picture's motion peaks (tempo "
                        "from the video unless --tempo is given); default: the model's generation.beat_from_video")
    p.add_argument("--tag-cfg", type=_number(float, 0), default=None, help="guidance scale of the tags branch (--guide tags/both): "
                   "raise it when the tags should win over the picture; default: the model's generation.tag_cfg")
    p.add_argument("--decode", choices=["cached", "static", "static-compiled", "static-graph"], default=None,
                   help="decoder implementation, the same tokens for a seed: KV-cache loop (cached), the fixed-shape "
                        "step (static), compiled (static-compiled), replayed as a CUDA graph (static-graph, GPU "
                        "only); default: the model's generation.decode")
    _add_mix_args(p)
    p.add_argument("--cuts", default="none", metavar="auto|none|T1,T2",
                   help="section boundaries: detected scene changes (auto), none (one continuous piece), or your "
                        "edit's cut times in seconds; after a cut the music restarts on the new scene, crossfaded")
    p.add_argument("--hits", default=None, metavar="T1,T2",
                   help="times (s) that should get an accent (a note onset), through the model's beat grid")
    p.add_argument("--seed", type=_number(int, 0, 2 ** 63 - 1), default=0,
                   help="random seed: the same seed gives the same audio, whatever --batch-size")
    p.add_argument("--duration", type=_POSITIVE, default=None,
                   help="music (and output video) for at most this many seconds of each video")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--batch-size", type=_number(int, 1), default=1, help="videos generated together")
    p.add_argument("--threads", type=_number(int, 1), default=None,
                   help="CPU threads for generation (default: chosen from the model's size and the cores this process "
                        "may use, minus busy ones; OMP_NUM_THREADS also sets it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="set a config value of the loaded model for this run, e.g. model.tags.captioner=DIR or "
                        "generation.top_k=100 (repeatable; KEY= clears a string)")
    p.add_argument("--overwrite", action="store_true", help="replace existing NAME.wav / NAME.mp4 in the output folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars (weight loading included)")


def _lufs(text: str) -> tp.Optional[float]:
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        return _FINITE(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a loudness in LUFS (e.g. -14) or 'off', got {text!r}") from None


def _add_mix_args(p: argparse.ArgumentParser) -> None:
    """The finished track (issue 24, :mod:`vmas.mixing`); defaults come from :class:`vmas.mixing.MixOptions`."""
    from vmas.mixing import MIX_MODES, MixOptions

    d = MixOptions()
    p.add_argument("--mix", choices=MIX_MODES, default=None,
                   help="keep: the music under the video's own audio; replace: the music alone; default: keep when "
                        "the video has an audio stream, replace otherwise")
    p.add_argument("--duck", type=_FINITE, default=d.duck, metavar="DB",
                   help="with keep: dB the music dips while someone speaks in the video (0 = no ducking)")
    p.add_argument("--music-gain", type=_FINITE, default=d.music_gain, metavar="DB",
                   help="with keep: music level relative to the loudness of the video's own audio (between "
                        "sentences); not used with replace (the music keeps its generated level)")
    p.add_argument("--loudness", type=_lufs, default=d.loudness, metavar="LUFS",
                   help=f"integrated loudness of the finished track (BS.1770), true peak <= {d.true_peak:g} dBTP; "
                        "'off' = no normalisation")
    p.add_argument("--music-width", type=_number(float, 0, 1), default=d.width, metavar="W",
                   help="stereo/5.1 tracks: widen the centred music by W (0-1) with a mono-compatible side signal "
                        "(L/R = centre +- W x the music 12 ms later; the mono fold-down is unchanged)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vmas", description="Generate background music for videos.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="music for one or more videos",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_generate_args(gen)
    sub.add_parser("models", help="list registered models")
    demo = sub.add_parser("demo", help="music for the bundled example video (what `make demo` runs)",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("-o", "--output_dir", default="outputs/demo")
    demo.add_argument("--model", default=None, help="defaults to the package's default model")
    from vmas.app import add_app_args  # no Gradio import until the page is built

    app = sub.add_parser("app", help="a web page (Gradio): upload a video, steer the music, download the result",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_app_args(app)
    return parser


def _auto_tagger(pipe, args) -> tp.Optional[tp.Callable]:
    if not args.auto_tags:
        return None
    from vmas.errors import VmasError
    from vmas.tags.autotag import build_auto_tagger

    try:
        return build_auto_tagger(pipe.spec.captioner, pipe.spec.llm, device=pipe.device)
    except VmasError as err:
        hint = " (here: --set model.tags.captioner=NAME_OR_DIR --set model.tags.llm=NAME_OR_DIR)"
        if not args.tags:
            raise type(err)(f"{err}{hint}") from None
        print(f"warning: {err}{hint}; continuing with your --tags only", file=sys.stderr)
        return None


def _quiet() -> None:
    """Silence every progress bar of this process: ours, transformers' weight loading, the hub's downloads."""
    os.environ["TQDM_DISABLE"] = "1"  # tqdm >= 4.66 reads TQDM_* defaults from the environment
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when transformers / huggingface_hub are imported
    if "transformers" in sys.modules:
        import transformers

        transformers.utils.logging.disable_progress_bar()


def check_device(text: str):
    """``--device`` -> torch.device, or one :class:`VmasError` line (no CUDA, index out of range, unknown name)."""
    import torch

    from vmas.errors import VmasError
    from vmas.utils import resolve_device

    try:
        device = resolve_device(text)
    except RuntimeError:
        raise VmasError(f"--device {text}: unknown device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise VmasError(f"--device {text}: torch sees no CUDA GPU on this machine; use --device cpu (or auto)")
        if device.index is not None and device.index >= count:
            raise VmasError(f"--device {text}: only {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise VmasError(f"--device {text}: MPS is not available here; use --device cpu (or auto)")
    return device


def _without_path(err: Exception, path: Path) -> str:
    """The error text without a leading ``PATH: `` (the ``skipping PATH:`` line names it already)."""
    text = str(err)
    for prefix in (f"{path}: ", f"{path.resolve()}: "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def run_generate(args) -> int:
    """``vmas generate``: everything that can be checked without the model is checked first (flags, device,
    inputs, output folder), so a mistake costs no loading and no generation; exit 2 for those, 1 if a file failed.
    An input whose outputs exist (no ``--overwrite``) is nothing to do, not a failure: counted in one ``skipped``
    line, exit 0 when nothing else failed."""
    from vmas.errors import VmasError
    from vmas.generate import GenerationRequest, OutputExists, check_output_dir, expand_inputs, generate_for_videos
    from vmas.hub import load_model
    from vmas.mixing import MixOptions
    from vmas.tags.cleaner import split_tag_arg

    if args.quiet:
        _quiet()
    try:
        mixing = MixOptions(mix=args.mix, duck=args.duck, music_gain=args.music_gain, loudness=args.loudness,
                            width=args.music_width)
    except VmasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    device = check_device(args.device)
    videos = expand_inputs(args.video)
    check_output_dir(args.output_dir)
    pipe = load_model(args.model, device=str(device), overrides=args.overrides)
    if pipe.note:
        print(pipe.note, file=sys.stderr)
    from vmas.threads import configure_threads

    threads, why = configure_threads(sum(t.numel() for t in pipe.model.parameters()), args.threads)
    logging.getLogger("vmas").info("generating with %d CPU thread(s) (%s)", threads, why)
    request = GenerationRequest(
        tags=split_tag_arg(args.tags), instruments=split_tag_arg(args.instruments), genres=split_tag_arg(args.genres),
        tempo=args.tempo, negative=split_tag_arg(args.negative), auto_tags=args.auto_tags,
        seed=args.seed, duration=args.duration, cfg=args.cfg, top_k=args.top_k, top_p=args.top_p,
        temperature=args.temperature, guide=args.guide, tag_cfg=args.tag_cfg, decode=args.decode,
        beat_from_video=args.beat_from_video,  # None = the model's generation config
        cuts=args.cuts, hits=args.hits,
        mixing=mixing)
    for note in request.ineffective(pipe.spec):
        print(f"warning: {note}", file=sys.stderr)
    failed: tp.List[Path] = []
    existing: tp.List[Path] = []

    def on_error(path: Path, err: Exception) -> None:
        if isinstance(err, OutputExists):
            existing.append(path)
            return
        failed.append(path)
        print(f"skipping {path}: {_without_path(err, path)}", file=sys.stderr)

    try:
        tagger = _auto_tagger(pipe, args)
    except VmasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = generate_for_videos(videos, pipe, args.output_dir, request, batch_size=args.batch_size,
                                  auto_tagger=tagger, progress=not args.quiet, on_error=on_error,
                                  overwrite=args.overwrite)
    for r in results:
        if r.past_end_note:
            print(f"warning: {r.video}: {r.past_end_note}", file=sys.stderr)
        tags = f"  tags: {', '.join(r.tags)}" if r.tags else ""
        audio = f"  audio: {r.mix['mode']}, {r.mix['loudness']:.1f} LUFS" if r.mix else ""
        cuts = f"  {r.cuts_note}" if r.cuts_note else ""
        print(f"{r.mp4}  ({r.duration:.2f} s, {r.windows} window(s)){tags}{audio}{cuts}")
    if existing:
        names = ", ".join(p.name for p in existing[:5]) + (", ..." if len(existing) > 5 else "")
        one = len(existing) == 1
        print(f"skipped {len(existing)} input{'' if one else 's'} whose outputs exist in {args.output_dir} "
              f"({names}): pass --overwrite to replace them", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(videos)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


def run_demo(args) -> int:
    from vmas.hub import _MODELS, DEFAULT_MODEL

    example = Path(__file__).parent / "assets" / "example.mp4"
    name = args.model or DEFAULT_MODEL
    entry = _MODELS.get(name)
    print(f"vmas demo: model '{name}'" + (f" ({entry.description})" if entry else ""))
    # the example's own audio is SynthMV's reference music, not a voice to keep: the demo replaces it
    ns = build_parser().parse_args(["generate", str(example), "-o", args.output_dir, "--model", name, "--mix", "replace",
                                    "--overwrite"])
    return run_generate(ns)


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> int:
    from vmas.errors import VmasError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "models":
            from vmas.hub import _MODELS, DEFAULT_MODEL

            for name in sorted(_MODELS):
                mark = "*" if name == DEFAULT_MODEL else " "
                print(f"{mark} {name:28s} {_MODELS[name].description}")
            return 0
        if args.command == "demo":
            return run_demo(args)
        if args.command == "app":
            from vmas.app import run_app

            return run_app(args)
        return run_generate(args)
    except VmasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
