"""Video in, video with music out: the library function behind the ``vmas`` command.

Any length: the model sees ``clip_seconds`` windows (10 s in the paper preset). The first window is generated from
scratch; each later window is conditioned on its own video frames and *continues* from the last
``clip_seconds - stride`` seconds of music already generated (MusicGen-style continuation), so there is no seam.
A video shorter than a window gets exactly its length (the frame reader pads the window by repeating the last
frame; the extra music is cut).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import typing as tp
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vmas.data import media
from vmas.engine import GenerationRequest, MusicJob, WindowEngine, decode_music
from vmas.errors import MediaError, VmasError
from vmas.mixing import MixOptions
from vmas.tags.cleaner import merge_tags

if tp.TYPE_CHECKING:
    from vmas.pipeline import VMASPipeline

__all__ = ["GenerationRequest", "GenerationResult", "decode_music", "generate_for_video", "generate_for_videos"]


@dataclasses.dataclass
class GenerationResult:
    video: Path
    wav: Path
    mp4: Path
    duration: float
    tags: tp.List[str]
    windows: int
    mix: tp.Dict[str, tp.Any] = dataclasses.field(default_factory=dict)
    """The finished track of ``mp4``: mode, loudness (LUFS) and true peak (dBTP) measured on the decoded mp4,
    normalisation gain, speech intervals (:meth:`vmas.mixing.MixResult.summary`)."""
    cuts: tp.Optional[tp.List[float]] = None
    """Section boundaries the music restarted at (s): the detected scene cuts with ``--cuts auto`` (empty: none
    found), the given ones otherwise; None when no cuts were asked for."""

    @property
    def cuts_note(self) -> str:
        """One line for the user: ``"no cuts found"`` / ``"cuts at 3.20, 7.84 s"``; empty without ``--cuts``."""
        if self.cuts is None:
            return ""
        return "cuts at " + ", ".join(f"{c:.2f}" for c in self.cuts) + " s" if self.cuts else "no cuts found"

    past_end: tp.Dict[str, tp.List[float]] = dataclasses.field(default_factory=dict)
    """``--cuts`` / ``--hits`` times at or past the music's end, which were dropped (option -> times)."""

    @property
    def past_end_note(self) -> str:
        """One warning line naming the dropped times and the length, e.g. ``"--cuts 95.00 s past the end of the
        video (60.00 s): ignored"``; empty when nothing was dropped."""
        if not self.past_end:
            return ""
        given = " and ".join(f"{k} {', '.join(f'{t:.2f}' for t in v)} s" for k, v in self.past_end.items())
        return f"{given} past the end of the video ({self.duration:.2f} s): ignored"


VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ogv", ".3gp",
                  ".ts", ".mts")
"""What ``vmas generate FOLDER`` picks up from a folder (by suffix, case-insensitive)."""

OUTPUT_SUFFIXES = (".wav", ".mp4", ".mkv", ".mov")
"""Files a video ``NAME`` may produce in the output folder (``NAME.wav`` + the muxed video's container)."""


def expand_inputs(paths: tp.Sequence[tp.Union[str, Path]]) -> tp.List[Path]:
    """Files as given; a folder becomes its video files (:data:`VIDEO_SUFFIXES`, sorted, not recursive).

    A folder without videos raises a one-line :class:`MediaError`; a missing file is kept (generation reports it
    in its own error boundary, so the other files still run).
    """
    out: tp.List[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES)
            if not found:
                raise MediaError(f"{path}: folder holds no video files ({', '.join(VIDEO_SUFFIXES[:5])}, ...)")
            out.extend(found)
        else:
            out.append(path)
    return out


def check_output_dir(out_dir: tp.Union[str, Path]) -> Path:
    """Create ``out_dir`` and prove it writable before any generation (one :class:`MediaError` line otherwise)."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".vmas-write-test-", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise MediaError(f"output folder {out_dir} is not writable ({err.strerror or type(err).__name__}): choose "
                         "another with -o") from None
    return out_dir


class OutputExists(MediaError):
    """``video``'s outputs exist and ``overwrite`` is off: nothing to do for it, which is not a failure (``vmas
    generate`` counts these apart and still exits 0)."""


def _output_conflict(video: Path, out_dir: Path, overwrite: bool,
                     taken: tp.Dict[str, Path]) -> tp.Optional[MediaError]:
    """Why ``video``'s outputs cannot be written (None = they can): they would replace the input itself, another
    input of the run has the same name (both failures), or they exist and ``overwrite`` is off
    (:class:`OutputExists`)."""
    stem = video.stem
    outputs = [out_dir / f"{stem}{ext}" for ext in OUTPUT_SUFFIXES]
    if video.exists() and any(o.exists() and o.samefile(video) for o in outputs):
        return MediaError(f"{video}: its output would replace the input itself; choose another output folder with -o")
    if stem in taken:
        return MediaError(f"{video}: same output name as {taken[stem]} ({out_dir / stem}.*); rename one of them")
    existing = [o for o in outputs if o.exists()]
    if existing and not overwrite:
        return OutputExists(f"{video}: {existing[0]} already exists; pass --overwrite to replace it")
    return None


def generate_for_videos(videos: tp.Sequence[tp.Union[str, Path]], pipe: "VMASPipeline", out_dir: tp.Union[str, Path],
                        request: tp.Optional[GenerationRequest] = None, batch_size: int = 1,
                        auto_tagger: tp.Optional[tp.Callable] = None, progress: bool = True,
                        on_error: tp.Optional[tp.Callable[[Path, Exception], None]] = None,
                        on_window: tp.Optional[tp.Callable[[int, int], None]] = None,
                        overwrite: bool = True) -> tp.List[GenerationResult]:
    """Generate music for each video and write ``NAME.wav`` and ``NAME.mp4`` (video stream copied) to ``out_dir``.

    Each file runs inside its own error boundary: a :class:`VmasError` for one file is passed to ``on_error``
    (default: re-raise) and the others still finish. ``on_window(done, total)`` is called after each generation
    window of a batch (the web page's progress bar, :mod:`vmas.app`). ``overwrite=False`` skips a video whose
    outputs already exist, passing :class:`OutputExists` to ``on_error`` (a caller tells it from a failure). Outputs are written into a hidden folder inside ``out_dir`` and renamed
    into place when complete, so an interrupted run (Ctrl-C) never leaves a half-written file under a final name.

    Every video has its own random generator seeded with ``request.seed``: a video's music does not depend on the
    batch size or on the other videos of its batch.
    """
    if batch_size < 1:
        raise VmasError(f"batch size must be at least 1, got {batch_size}")
    engine = WindowEngine(pipe, request)  # the request, resolved against the model's own generation config
    req = engine.request
    out_dir = check_output_dir(out_dir)
    if not pipe.spec.tags and req.has_tags:
        raise VmasError("this model has no tag branch (model.tags.enabled is false): drop --tags/--instruments/"
                        "--genres/--tempo/--negative/--auto-tags, or use a model trained with tags")
    results: tp.List[GenerationResult] = []

    def fail(path: Path, err: Exception):
        if on_error is None:
            raise err
        on_error(path, err)

    jobs: tp.List[MusicJob] = []
    taken: tp.Dict[str, Path] = {}
    for video in map(Path, videos):
        conflict = _output_conflict(video, out_dir, overwrite, taken)
        if conflict:
            fail(video, conflict)
            continue
        try:
            jobs.append(_prepare(video, engine, auto_tagger))
            taken[video.stem] = video
        except VmasError as err:
            fail(video, err)

    bar = tqdm(total=len(jobs), desc="videos", unit="video", disable=not progress)
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i: i + batch_size]
        try:
            windows = engine.run(chunk, progress, on_window)
        except VmasError as err:
            for job in chunk:
                fail(job.video, err)
            bar.update(len(chunk))
            continue
        for job in chunk:
            try:
                res = _write_atomically(job, pipe, out_dir, windows, req.mixing)
                asked = req.cuts not in (None, "none")
                results.append(dataclasses.replace(res, cuts=[round(float(c), 3) for c in job.cuts] if asked
                                                   else None, past_end=dict(job.past_end)))
            except VmasError as err:
                fail(job.video, err)
            bar.update(1)
    bar.close()
    return results


def _write_atomically(job: "MusicJob", pipe: "VMASPipeline", out_dir: Path, windows: int,
                      mixing: MixOptions) -> GenerationResult:
    """:func:`_write_outputs` into a hidden folder of ``out_dir``, then every finished file renamed into place (a
    rename within one file system is atomic); the folder is removed whatever happens, Ctrl-C included."""
    tmp = Path(tempfile.mkdtemp(prefix=f".vmas-{job.video.stem}-", dir=out_dir))
    try:
        res = _write_outputs(job, pipe, tmp, windows, mixing)
        moved: tp.Dict[Path, Path] = {}
        for f in sorted(tmp.iterdir(), key=lambda f: f.suffix == ".mp4"):  # the video last: it marks completion
            os.replace(f, out_dir / f.name)
            moved[f] = out_dir / f.name
        return dataclasses.replace(res, **{k: moved[v] for k, v in vars(res).items() if isinstance(v, Path)
                                           and v in moved})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def generate_for_video(video: tp.Union[str, Path], model: tp.Any = None, out_dir: tp.Union[str, Path] = "outputs",
                       on_window: tp.Optional[tp.Callable[[int, int], None]] = None, **controls) -> GenerationResult:
    """One call from Python: ``generate_for_video("clip.mp4", tags=["piano"], tempo=96)``.

    ``model`` is a loaded pipeline, a registered name or a checkpoint path (default: the package's default model).
    The audio options of :class:`vmas.mixing.MixOptions` can be given by name (``mix="keep", duck=-12,
    music_gain=-4, loudness=-14``) or as ``mixing=MixOptions(...)``. ``on_window(done, total)`` reports progress
    after each generation window. ``overwrite=False`` refuses to replace existing outputs.
    """
    from vmas.hub import load_model

    pipe = model if hasattr(model, "codec") else load_model(model)
    overwrite = controls.pop("overwrite", True)
    fields = {f.name for f in dataclasses.fields(GenerationRequest)} | set(MixOptions.names())
    unknown = set(controls) - fields
    if unknown:
        raise VmasError(f"unknown generation option(s) {sorted(unknown)}; valid: {sorted(fields)}")
    audio = {k: controls.pop(k) for k in MixOptions.names() if k in controls}
    if audio:
        controls["mixing"] = dataclasses.replace(controls.get("mixing") or MixOptions(), **audio)
    return generate_for_videos([video], pipe, out_dir, GenerationRequest(**controls), progress=False,
                               on_window=on_window, overwrite=overwrite)[0]


# ------------------------------------------------------------------------------------------------------ internals
def _prepare(video: Path, engine: WindowEngine, auto_tagger) -> MusicJob:
    """The engine's job for one video: probed, its length (``--duration``), its merged tags, cuts and hits."""
    pipe, req = engine.pipe, engine.request
    info = media.probe_video(video)
    if not info.duration or info.duration <= 0 or not info.num_frames:
        raise MediaError(f"{video}: video has no frames; pass a video with a readable video stream")
    seconds = info.duration if req.duration is None else min(info.duration, req.duration)
    tags: tp.List[str] = []
    if pipe.spec.tags:
        auto: tp.List[str] = []
        if req.auto_tags:
            if auto_tagger is None:
                if not req.tags:
                    raise VmasError(f"{video}: --auto-tags needs a captioner and an LLM (model.tags.captioner / "
                                    "model.tags.llm) which are not available; pass --tags instead")
            else:
                frames, _, _ = media.read_video_frames(video, fps=1.0, size=224, start=0.0, duration=min(10.0, seconds))
                auto = auto_tagger(frames)
        tags = merge_tags(auto, req.tags, req.instruments, req.genres, req.tempo, req.negative,
                          max_tags=pipe.spec.max_tags)
    return engine.job(video, seconds, tags=tags, info=info)


def _music_track(job: MusicJob, pipe: "VMASPipeline", folder: Path):
    """The music of ``job`` as a float32 :class:`vmas.mixing.Track` file in ``folder``: decoded chunk by chunk,
    ``round(seconds * sr)`` samples (cut, or zero past the decoded music), scaled under 0.99 when it would clip
    (keeps the relative dynamics): the samples the whole-tensor path wrote, without the whole tensor."""
    from vmas.mixing import Track, _spans

    sr = pipe.codec.sample_rate
    n = round(job.seconds * sr)
    track = Track.on_disk(1, 0, folder)
    if job.audio is not None:  # sections decoded and joined by the engine (--cuts / --hits)
        track.write(0, torch.as_tensor(job.audio, dtype=torch.float32)[:n].numpy())
        track.n = n
    else:
        decode_music(pipe.codec, job.codes, pipe.device, out=track, length=n)
    peak = torch.zeros((), dtype=torch.float32)
    for s, e in _spans(n):
        peak = torch.maximum(peak, torch.from_numpy(np.abs(track.read(s, e)[0])).max())
    if peak > 0.99:  # avoid clipping in the written file; keeps relative dynamics
        scale = 0.99 / peak
        for s, e in _spans(n):
            track.write(s, (torch.from_numpy(np.ascontiguousarray(track.read(s, e)[0])) * scale).numpy())
    return track


def _write_outputs(job: MusicJob, pipe: "VMASPipeline", out_dir: Path, windows: int,
                   mixing: tp.Optional[MixOptions] = None) -> GenerationResult:
    """``NAME.wav`` (the music alone) and ``NAME.mp4`` (the finished video) in ``out_dir``. Every whole-length
    signal lives in float32 files of a work folder inside ``out_dir`` (the output's own disk, not a /tmp that may
    be held in memory), removed when done: memory does not grow with the video's length (issue 35)."""
    sr = pipe.codec.sample_rate
    stem = job.video.stem
    wav_path, mp4_path = out_dir / f"{stem}.wav", out_dir / f"{stem}.mp4"
    work = Path(tempfile.mkdtemp(prefix=".audio-", dir=out_dir))
    try:
        music = _music_track(job, pipe, work)
        media.write_wav(wav_path, music, sr)  # the music alone, as the model made it (what evaluation reads)
        mix = _mux_finished(job, music, sr, mp4_path, mixing or MixOptions(), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return GenerationResult(video=job.video, wav=wav_path, mp4=mp4_path, duration=job.seconds, tags=job.tags,
                            windows=windows, mix=mix)


MIX_RATE = 48000
"""Rate of the finished track when the video's own audio is kept (video audio's usual rate; the music is resampled)."""


def _mux_finished(job: MusicJob, music, sr: int, mp4_path: Path, opts: MixOptions,
                  work: tp.Optional[Path] = None) -> tp.Dict[str, tp.Any]:
    """Mux the finished track (:func:`vmas.mixing.finish_audio`: the music over or instead of the video's own audio
    stream) into ``mp4_path``, keeping the decoded AAC's true peak under the ceiling; returns the measurements.

    The track keeps the original's channel layout when the MP4's AAC takes it (mono, stereo, 5.1:
    :data:`media.AAC_LAYOUTS`); any other layout is downmixed to stereo, and ``audio_note`` says so. The picture is
    copied when MP4 takes its codec, else re-encoded to H.264 once (:func:`media.mp4_video_source`; ``video`` in
    the result says which). Audio that does not decode at all loses nothing: the music alone is used
    (``audio_note`` says why) rather than the file being skipped after its music was generated. ``work``: folder
    for the disk-backed tracks (None: in memory).
    """
    import logging

    from vmas import mixing

    log = logging.getLogger(__name__)
    mode = opts.resolve_mode(job.info.has_audio)
    if mode == "keep" and not job.info.has_audio:
        raise MediaError(f"{job.video}: --mix keep needs an audio stream and this video has none; use --mix replace")
    original, layout, note = None, None, ""
    if mode == "keep":
        try:
            own = media.read_audio_track(job.video, MIX_RATE, duration=job.info.duration, folder=work,
                                         layouts=media.AAC_LAYOUTS)
            original, layout, note = own.track, own.layout, own.note
            if note:
                log.warning("%s: %s", job.video, note)
        except MediaError as err:
            note = f"its audio does not decode ({str(err).split(': ', 1)[-1]}); the music replaces it"
            log.warning("%s: %s", job.video, note)
            mode = "replace"
    res = mixing.finish_audio(music, sr, original, MIX_RATE, dataclasses.replace(opts, mix=mode), headroom=0.5,
                              layout=layout, folder=work)
    if original is not None:
        original.close()
    source, how = media.mp4_video_source(job.video, mp4_path.parent)
    try:
        if source != job.video:
            log.warning("%s: %s", job.video, how)

        def encode(audio):
            media.mux_audio(source, audio, mp4_path, sr=res.sample_rate, layout=res.layout,  # --duration: video too
                            duration=job.seconds if job.seconds < job.info.duration else None)
            return media.read_audio_track(mp4_path, res.sample_rate, folder=work).track

        _, decoded = mixing.encode_within_ceiling(res.audio, res.sample_rate, opts.true_peak, encode, folder=work)
    finally:
        if source != job.video:
            source.unlink(missing_ok=True)
    weights = mixing.loudness_weights(res.layout) if len(res.layout) > 1 else None
    out = dict(res.summary(), loudness=round(mixing.integrated_loudness(decoded, res.sample_rate, weights), 2),
               true_peak=round(mixing.true_peak(decoded, res.sample_rate), 2), video=how)
    if note:
        out["audio_note"] = note
    return out
