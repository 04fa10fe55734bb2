"""``vmas app``: a web page for creators (Gradio) over the same library call as ``vmas generate``.

    vmas app --model vmas-synthmv-demo                 # http://127.0.0.1:7860
    vmas app --host 0.0.0.0 --port 8080 --max-file-mb 50 --max-seconds 60

Upload a video (or take the bundled example), steer the music with the fields of ``vmas generate`` (tags,
instruments, genres, tempo, negative tags, guidance, beat from video, seed, the finished-track options) and press
Generate: the page plays the video with its music and offers NAME.mp4 and NAME.wav for download.

The page has no generation logic of its own: :func:`request_controls` maps the form onto the keyword arguments of
:func:`vmas.generate.generate_for_video` (the CLI's flags, same defaults: None = the model's ``generation`` config)
and :func:`run_request` makes that one call. What the page adds is serving: one model loaded at start-up, a queue that
runs one request at a time (the model is not shared between threads), a progress bar fed by the library's
``on_window`` callback, deployer-set input limits, and errors shown as the one line the CLI prints (the server keeps
serving). Nothing leaves the machine: Gradio's analytics are off, its fonts are local, ``--share`` (a public tunnel
through Gradio's servers) is off unless asked for.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import tempfile
import typing as tp
from pathlib import Path

# Gradio reports usage to its servers and checks for new versions unless told not to; set before it is imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from vmas.errors import MediaError, VmasError  # noqa: E402

log = logging.getLogger(__name__)

EXAMPLE = Path(__file__).parent / "assets" / "example.mp4"


@dataclasses.dataclass
class AppLimits:
    """What a deployer lets one request use (``vmas app --max-file-mb/--max-seconds/--max-queue``).

    Args:
        max_file_mb: largest upload in MB; Gradio refuses bigger files while uploading, and :func:`check_limits`
            checks again on the server.
        max_seconds: longest video accepted, in seconds (generation time grows linearly with it).
        max_queue: requests waiting behind the running one; more are turned away with "queue full".
    """

    max_file_mb: float = 200.0
    max_seconds: float = 300.0
    max_queue: int = 16

    def __post_init__(self):
        if not self.max_file_mb > 0 or not self.max_seconds > 0 or self.max_queue < 1:
            raise VmasError(f"app limits must be positive (got --max-file-mb {self.max_file_mb}, --max-seconds "
                            f"{self.max_seconds}, --max-queue {self.max_queue})")


def check_limits(video: Path, limits: AppLimits) -> None:
    """Refuse an upload over the deployer's limits with one line naming the limit and its flag."""
    size_mb = video.stat().st_size / 1e6
    if size_mb > limits.max_file_mb:
        raise MediaError(f"{video.name}: file is {size_mb:.2f} MB, this server accepts at most {limits.max_file_mb:g} "
                         "MB (vmas app --max-file-mb); upload a shorter or more compressed video")
    from vmas.data.media import probe_video

    info = probe_video(video)
    if info.duration and info.duration > limits.max_seconds:
        raise MediaError(f"{video.name}: video is {info.duration:.1f} s long, this server accepts at most "
                         f"{limits.max_seconds:g} s (vmas app --max-seconds); trim it first")


def _number(value: tp.Any, cast: tp.Callable = float) -> tp.Any:
    """A Gradio number field; a cleared field (None) is the CLI's absent flag (the model's config decides)."""
    return None if value is None or value == "" else cast(value)


def _off(value: tp.Any) -> tp.Optional[float]:
    """Fields where 0 means "not given" (tempo, duration, loudness): 0 is no valid value for them."""
    value = _number(value)
    return value or None


def request_controls(tags: str = "", instruments: str = "", genres: str = "", tempo: tp.Any = 0,
                     negative: str = "", guide: tp.Optional[str] = None, cfg: tp.Any = None, tag_cfg: tp.Any = None,
                     beat_from_video: tp.Optional[str] = None, seed: tp.Any = 0, duration: tp.Any = 0,
                     top_k: tp.Any = None, top_p: tp.Any = None, temperature: tp.Any = None,
                     mix: str = "auto", duck: tp.Any = None, music_gain: tp.Any = None,
                     loudness: tp.Any = 0, cuts: str = "none", hits: str = "",
                     music_width: tp.Any = None) -> tp.Dict[str, tp.Any]:
    """The form's fields as keyword arguments of :func:`vmas.generate.generate_for_video`.

    Text fields are comma-separated like the CLI's ``--tags``. The page fills the sampling fields with the model's
    own ``generation`` values, so an untouched form asks for exactly what ``vmas generate`` without flags does;
    None (a cleared field) leaves the value to the model too. Tempo, duration and loudness use 0 for "not given"
    (the CLI's absent ``--tempo``/``--duration`` and ``--loudness off``); mix ``auto`` is the CLI's absent ``--mix``.
    Cuts and hits are the CLI's ``--cuts`` (``auto``, ``none`` or comma-separated seconds; empty = ``none``) and
    ``--hits`` (empty = none) as typed; ``music_width`` is ``--music-width`` (None: its default, centred music).
    """
    from vmas.mixing import MixOptions
    from vmas.tags.cleaner import split_tag_arg

    mix_defaults = MixOptions()
    return dict(
        tags=split_tag_arg([tags or ""]), instruments=split_tag_arg([instruments or ""]),
        genres=split_tag_arg([genres or ""]), negative=split_tag_arg([negative or ""]), tempo=_off(tempo),
        guide=guide or None, cfg=_number(cfg), tag_cfg=_number(tag_cfg), top_k=_number(top_k, int),
        top_p=_number(top_p), temperature=_number(temperature),
        beat_from_video=None if beat_from_video is None else beat_from_video == "on",
        seed=_number(seed, int) or 0, duration=_off(duration),
        mix=None if mix in (None, "", "auto") else mix,
        duck=mix_defaults.duck if _number(duck) is None else _number(duck),
        music_gain=mix_defaults.music_gain if _number(music_gain) is None else _number(music_gain),
        loudness=_off(loudness), cuts=(cuts or "").strip() or "none", hits=(hits or "").strip() or None,
        width=mix_defaults.width if _number(music_width) is None else _number(music_width))


def run_request(pipe: tp.Any, video: tp.Union[str, Path, None], controls: tp.Dict[str, tp.Any], limits: AppLimits,
                out_root: Path, on_window: tp.Optional[tp.Callable[[int, int], None]] = None):
    """One page request: check the limits, then the one library call; returns its ``GenerationResult``.

    Each request writes into its own folder under ``out_root`` (two uploads named ``clip.mp4`` do not collide).
    """
    from vmas.generate import generate_for_video

    if not video:
        raise MediaError("no video: upload one (or click the example above the Generate button), then press Generate")
    video = Path(video)
    check_limits(video, limits)
    out_root.mkdir(parents=True, exist_ok=True)
    out_dir = Path(tempfile.mkdtemp(prefix="request-", dir=out_root))
    return generate_for_video(video, pipe, out_dir, on_window=on_window, **controls)


def _one_line(err: Exception, video: tp.Optional[str]) -> str:
    """The CLI's error line; the upload's server-side cache path is shown as the file name the user picked."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if video:
        text = text.replace(str(video), Path(video).name)
    return text


BROWSER_VIDEO = (".mp4", ".m4v", ".mov", ".webm", ".ogv", ".ogg")
"""Containers a browser's <video> usually plays; other uploads (AVI, WMV, FLV, MKV, MPEG-TS...) cannot be previewed
in the upload box, though generation reads them all."""


def preview_note(video: tp.Optional[str]) -> str:
    """What the summary says when an upload is chosen: for a container the browser cannot preview, that the preview
    is unavailable (the box may show Gradio's "Video not playable") and that generation works; else nothing."""
    if not video:
        return ""
    suffix = Path(video).suffix.lower()
    if suffix in BROWSER_VIDEO:
        return ""
    return (f"preview unavailable: browsers do not play {suffix or 'this format'} files (the box may say "
            "\"Video not playable\"); press Generate: the result is an MP4 that plays here")


def build_app(pipe: tp.Any, model_name: str, limits: tp.Optional[AppLimits] = None,
              out_root: tp.Union[str, Path] = "outputs/app"):
    """The Gradio Blocks page for one loaded pipeline (not launched; :func:`launch` does that)."""
    try:
        import gradio as gr
    except ImportError:
        raise VmasError("the web page needs Gradio: pip install 'vmas[app]' (or `make install`)") from None
    from vmas.mixing import MIX_MODES, MixOptions
    from vmas.sampling import GUIDES

    limits = limits or AppLimits()
    out_root = Path(out_root)
    mix_defaults = MixOptions()
    spec = pipe.spec
    sampling = spec.sampling
    has_tags = bool(spec.tags)

    def generate(video, tags, instruments, genres, tempo, negative, guide, cfg, tag_cfg, beat_from_video, seed,
                 duration, top_k, top_p, temperature, mix, duck, music_gain, loudness, cuts="none", hits="",
                 music_width=None, progress=gr.Progress()):
        progress(0.0, desc="reading the video")
        try:
            controls = request_controls(tags, instruments, genres, tempo, negative, guide, cfg, tag_cfg,
                                        beat_from_video, seed, duration, top_k, top_p, temperature, mix, duck,
                                        music_gain, loudness, cuts, hits, music_width)
            result = run_request(pipe, video, controls, limits, out_root,
                                 on_window=lambda done, total: progress((done, total), desc="windows", unit="window"))
        except (VmasError, ValueError, TypeError, OSError) as err:  # the CLI's one line; the server keeps serving
            if isinstance(err, VmasError):
                log.info("request refused: %s", err)
            else:  # a malformed field or an unreadable upload
                log.warning("request failed", exc_info=True)
            # the line stays in the summary until the next request (a toast alone fades, leaving red badges)
            line = f"error: {_one_line(err, video)}"
            gr.Warning(line, duration=None)
            return None, [], "", line
        mix_note = (f"audio: {result.mix['mode']}, {result.mix['loudness']:.1f} LUFS, true peak "
                    f"{result.mix['true_peak']:.1f} dBTP" if result.mix else "")
        summary = f"{result.mp4.name}: {result.duration:.2f} s of music, {result.windows} window(s). {mix_note}"
        if result.cuts_note:
            summary += f". Scene {result.cuts_note}" if result.cuts else f". Scene cuts: {result.cuts_note}"
        if result.past_end_note:
            summary += f". Warning: {result.past_end_note}"
        return str(result.mp4), [str(result.mp4), str(result.wav)], ", ".join(result.tags), summary

    with gr.Blocks(title="vmas: music for your video", analytics_enabled=False) as page:
        gr.Markdown(f"# vmas: background music for your video\nModel **{model_name}**"
                    + (f": {pipe.note}" if getattr(pipe, "note", None) else "")
                    + f". Videos up to {limits.max_file_mb:g} MB and {limits.max_seconds:g} s.")
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Video", sources=["upload"], height=320, elem_id="video")
                with gr.Group(visible=has_tags):
                    tags = gr.Textbox(label="Tags", placeholder="piano, ambient, calm", elem_id="tags")
                    instruments = gr.Textbox(label="Instruments", placeholder="cello, harp", elem_id="instruments")
                    genres = gr.Textbox(label="Genres", placeholder="lo-fi, jazz", elem_id="genres")
                    tempo = gr.Number(label="Tempo (BPM; 0 = from the tags / the video)", value=0, minimum=0,
                                      elem_id="tempo")
                    negative = gr.Textbox(label="Negative tags (steer away from)", placeholder="drums, vocals",
                                          elem_id="negative")
                # the model's own generation values, shown as they are: an untouched form = `vmas generate`
                with gr.Accordion("Guidance and sampling", open=False):
                    guide = gr.Dropdown(list(GUIDES), value=sampling.guide, label="Guidance mode",
                                        info="all: against no video + no tags; tags: against the video without your "
                                             "tags (the tags win over the picture); both", elem_id="guide")
                    cfg = gr.Number(label="Guidance scale (1 = none)", value=sampling.cfg, elem_id="cfg")
                    tag_cfg = gr.Number(label="Tags guidance scale (guide tags/both; 0 = the guidance scale)",
                                        value=sampling.tag_cfg, elem_id="tag_cfg")
                    beat = gr.Radio(["on", "off"], value="on" if spec.beat_from_video else "off",
                                    label="Beat from video", elem_id="beat",
                                    info="models with a beat condition: the music's beats on the picture's motion "
                                         "peaks")
                    top_k = gr.Number(label="Top-k (0 = off)", value=sampling.top_k, precision=0, elem_id="top_k")
                    top_p = gr.Number(label="Top-p (0 = off)", value=sampling.top_p, elem_id="top_p")
                    temperature = gr.Number(label="Temperature", value=sampling.temperature, elem_id="temperature")
                    seed = gr.Number(label="Seed (same seed = same music)", value=0, precision=0, elem_id="seed")
                    duration = gr.Number(label="Music for at most this many seconds (0 = the whole video)", value=0,
                                         minimum=0, elem_id="duration")
                with gr.Accordion("Scene cuts and hits", open=False):
                    cuts = gr.Textbox(label="Cuts (auto, none, or your edit's cut times in seconds: 12.5, 30)",
                                      value="none", elem_id="cuts",
                                      info="after a cut the music restarts on the new scene, crossfaded")
                    hits = gr.Textbox(label="Hits (seconds that get an accent: 3.2, 7.5)", value="",
                                      visible=bool(getattr(spec, "beat_condition", False)), elem_id="hits")
                with gr.Accordion("Finished audio", open=False):
                    mix = gr.Radio(["auto", *MIX_MODES], value="auto", label="Mix",
                                   info="keep: music under the video's own sound; replace: music alone; auto: keep "
                                        "when the video has sound", elem_id="mix")
                    duck = gr.Number(label="Duck under speech (dB)", value=mix_defaults.duck, elem_id="duck")
                    music_gain = gr.Number(label="Music gain (dB)", value=mix_defaults.music_gain,
                                           elem_id="music_gain")
                    loudness = gr.Number(label="Loudness (LUFS; 0 = no normalisation)",
                                         value=mix_defaults.loudness or 0, elem_id="loudness")
                    # --music-width: like the CLI, no effect where the track is mono (a mono video, mix replace)
                    music_width = gr.Slider(0.0, 1.0, value=mix_defaults.width, step=0.05, label="Music width",
                                            info="stereo/5.1 videos with mix keep: widen the centred music "
                                                 "(mono-compatible; 0 = centred); no effect on a mono track",
                                            elem_id="music_width")
                # the example's own audio is SynthMV's reference music, not a sound to keep: as `vmas demo`, replace
                gr.Examples([[str(EXAMPLE), "replace"]], inputs=[video, mix], label="Example (click to load)")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                result = gr.Video(label="Video with its music", interactive=False, height=320, elem_id="result")
                files = gr.File(label="Download (mp4, wav)", file_count="multiple", interactive=False,
                                elem_id="files")
                used = gr.Textbox(label="Tags used", interactive=False, elem_id="used_tags")
                summary = gr.Markdown(elem_id="summary")
        button.click(generate, [video, tags, instruments, genres, tempo, negative, guide, cfg, tag_cfg, beat, seed,
                                duration, top_k, top_p, temperature, mix, duck, music_gain, loudness, cuts, hits,
                                music_width],
                     [result, files, used, summary], concurrency_limit=1, api_name="generate")
        video.change(preview_note, video, summary, queue=False, show_progress="hidden")
    # one request at a time: the loaded model is not shared between threads; others wait in the queue (position shown)
    page.queue(default_concurrency_limit=1, max_size=limits.max_queue)
    return page


def launch(model: tp.Optional[str] = None, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           limits: tp.Optional[AppLimits] = None, device: str = "auto", out_root: tp.Union[str, Path] = "outputs/app",
           block: bool = True):
    """Load the model once and serve the page; returns the Gradio app (``block=False``: the server runs in a
    background thread, for tests and notebooks)."""
    from vmas.hub import DEFAULT_MODEL, load_model
    from vmas.utils import resolve_device

    limits = limits or AppLimits()
    name = model or DEFAULT_MODEL
    pipe = load_model(name, device=str(resolve_device(device)))
    from vmas.threads import configure_threads

    configure_threads(sum(t.numel() for t in pipe.model.parameters()))
    page = build_app(pipe, name, limits, out_root)
    out_root = Path(out_root).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    try:
        page.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                    max_file_size=f"{limits.max_file_mb:g}mb", allowed_paths=[str(out_root), str(EXAMPLE.parent)],
                    ssr_mode=False, show_error=False, inbrowser=False, footer_links=[], quiet=True)
    except OSError as err:  # Gradio's "Cannot find empty port in range: 7860-7860. ..."
        raise VmasError(f"cannot serve on {host}:{port} ({str(err).split('.')[0]}): pass another --port, or "
                        "--host 127.0.0.1 if the address is not this machine's") from None
    # our own start-up lines (Gradio's are off: its hint says to edit launch(), a vmas user passes --share)
    print(f"* Running on local URL:  http://{host}:{page.server_port}", flush=True)
    if share:
        print(f"* Running on public URL: {page.share_url}", flush=True)
    else:
        print("* To create a public link, restart with `vmas app --share` (anyone with the link can use it)",
              flush=True)
    return page


def add_app_args(p: argparse.ArgumentParser) -> None:
    """Flags of ``vmas app`` (the CLI owns the parser; the page's own knobs live here)."""
    d = AppLimits()
    p.add_argument("--model", default=None, help="registered model name (see `vmas models`) or checkpoint path "
                   "(default: the package's default model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--share", action="store_true", help="also open a public *.gradio.live link through Gradio's "
                   "servers (needs the internet; off by default)")
    p.add_argument("--max-file-mb", type=float, default=d.max_file_mb, help="largest upload accepted, MB")
    p.add_argument("--max-seconds", type=float, default=d.max_seconds, help="longest video accepted, seconds")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="requests that may wait behind the running one")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("-o", "--output-dir", default="outputs/app", help="each request's NAME.mp4/NAME.wav go in a "
                   "folder of their own under this one")


def run_app(args: argparse.Namespace) -> int:
    """``vmas app``: serve until interrupted."""
    limits = AppLimits(max_file_mb=args.max_file_mb, max_seconds=args.max_seconds, max_queue=args.max_queue)
    launch(args.model, host=args.host, port=args.port, share=args.share, limits=limits, device=args.device,
           out_root=args.output_dir)
    return 0
