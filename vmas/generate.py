"""Video in, video with music out: the library function behind the ``vmas`` command.

Any length: the model sees ``clip_seconds`` windows (10 s in the paper preset). The first window is generated from
scratch; each later window is conditioned on its own video frames and *continues* from the last
``clip_seconds - stride`` seconds of music already generated (MusicGen-style continuation), so there is no seam.
A video shorter than a window gets exactly its length (the frame reader pads the window by repeating the last
frame; the extra music is cut).
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import typing as tp
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vmas.data import media
from vmas.errors import MediaError, VmasError
from vmas.mixing import MixOptions
from vmas.sampling import SamplingParams
from vmas.tags.cleaner import merge_tags

if tp.TYPE_CHECKING:
    from vmas.pipeline import GenerationSpec, VMASPipeline


@dataclasses.dataclass
class GenerationRequest:
    """User controls for one run (shared by all files)."""

    tags: tp.Sequence[str] = ()
    instruments: tp.Sequence[str] = ()
    genres: tp.Sequence[str] = ()
    tempo: tp.Optional[float] = None
    negative: tp.Sequence[str] = ()
    auto_tags: bool = False
    # Sampling controls: the fields of :class:`vmas.sampling.SamplingParams`, optional here; None = the model's
    # own ``generation`` config (see :meth:`resolved`; tests/test_generate.py checks the two lists agree).
    cfg: tp.Optional[float] = None
    top_k: tp.Optional[int] = None
    top_p: tp.Optional[float] = None
    temperature: tp.Optional[float] = None
    guide: tp.Optional[str] = None
    """CFG branch with user tags, ``all``, ``tags`` or ``both`` (``VMAS.generate``); None = the model's config."""
    tag_cfg: tp.Optional[float] = None
    """Guidance scale of the tags branch (``generation.tag_cfg``; 0 = ``cfg``)."""
    decode: tp.Optional[str] = None
    """Decoder implementation (``generation.decode``: cached, static, static-compiled, static-graph; same tokens)."""
    beat_from_video: tp.Optional[bool] = None
    """Fit the beat grid to the picture's motion peaks (``generation.beat_from_video``)."""
    seed: int = 0
    duration: tp.Optional[float] = None
    """Generate music for at most this many seconds of each video (the rest of the video stays silent)."""
    stride: tp.Optional[float] = None
    """Seconds of new music per continuation window (default: half a window)."""
    cuts: tp.Union[str, tp.Sequence[float], None] = None
    """Section boundaries (issue 22, :mod:`vmas.structure`): ``"auto"`` (detected scene changes), ``"none"`` / None
    (plain continuation) or comma-separated seconds (a locked edit). After a cut the music restarts on the new
    scene's frames, with a short crossfade."""
    hits: tp.Optional[tp.Union[str, tp.Sequence[float]]] = None
    """Accent times (s; comma-separated or a list): a beat of the model's beat grid on each (needs
    ``model.lm.beat_condition``)."""
    mixing: MixOptions = dataclasses.field(default_factory=MixOptions)
    """The finished track in ``NAME.mp4`` (keep or replace the video's own audio, ducking under speech, music gain,
    loudness): :class:`vmas.mixing.MixOptions`."""

    def resolved(self, defaults: tp.Any) -> "GenerationRequest":
        """A copy with every unset sampling control (and ``beat_from_video``) taken from the model's defaults: a
        :class:`vmas.pipeline.GenerationSpec` or a ``generation`` config (a 256-entry SynthMV codebook wants
        top-k 50, MusicGen's 2048 entries 250)."""
        sampling = defaults.sampling
        given = {k: getattr(sampling, k) for k in SamplingParams.names() if getattr(self, k) is None}
        if self.beat_from_video is None:
            given["beat_from_video"] = defaults.beat_from_video
        return dataclasses.replace(self, **given)

    @property
    def sampling(self) -> SamplingParams:
        """The sampling controls of a :meth:`resolved` request."""
        return SamplingParams.of(self)

    @property
    def has_tags(self) -> bool:
        """The user asked for tags (their own or automatic), a tempo or negative tags."""
        return bool(self.tags or self.instruments or self.genres or self.tempo or self.negative or self.auto_tags)

    def ineffective(self, spec: "GenerationSpec") -> tp.List[str]:
        """One line per control of this (unresolved) request that changes nothing for a model with ``spec``.

        The CLI prints them as warnings, so a flag that does nothing is never silently accepted.
        """
        notes = []
        if self.guide in ("tags", "both") and not self.has_tags:
            notes.append(f"--guide {self.guide} has no effect without --tags/--negative (no tags to guide with): "
                         "guidance runs against the null condition")
        if self.tag_cfg is not None and not self.has_tags:
            notes.append("--tag-cfg has no effect without --tags/--negative")
        if self.beat_from_video and not spec.beat_condition:
            notes.append("--beat-from-video has no effect: this model has no beat condition "
                         "(model.lm.beat_condition is false)")
        if (self.mixing is not None and self.mixing.mix == "replace"
                and self.mixing.music_gain != MixOptions().music_gain):
            notes.append("--music-gain has no effect with --mix replace (it sets the music against the video's own "
                         "sound): the music keeps its generated level, or use --loudness LUFS")
        top_p = spec.sampling.top_p if self.top_p is None else self.top_p
        if self.top_k is not None and top_p > 0:
            notes.append(f"--top-k has no effect while top-p is {top_p:g} (nucleus sampling wins; pass --top-p 0)")
        return notes


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


@dataclasses.dataclass
class _Job:
    video: Path
    info: tp.Any
    seconds: float  # how much music to generate
    num_frames: int  # code frames to generate
    tags: tp.List[str]
    codes: tp.Optional[torch.Tensor] = None  # [K, T] generated so far
    audio: tp.Any = None  # float32 [N]: the music already decoded (sections joined by vmas.structure)


def _window_plan(total: int, window: int, stride: int) -> tp.List[tp.Tuple[int, int]]:
    """[(start_frame, end_frame)] of each generation window over ``total`` code frames.

    Window 0 covers [0, min(window, total)); window k starts ``stride`` frames after the previous one, so it
    re-reads ``window - stride`` frames of context and adds up to ``stride`` new frames.
    """
    plan = [(0, min(window, total))]
    while plan[-1][1] < total:
        start = plan[-1][1] - (window - stride)
        plan.append((start, min(start + window, total)))
    return plan


def _frames_to_generate(num_frames: int, window: int, stride: int, n_q: int) -> int:
    """Code frames to generate for a video that needs ``num_frames``: up to ``n_q - 1`` more, within its last window.

    With the delay pattern, codebook k of frame f is sampled at step f + k, after the input column that holds
    codebook 0 of frame f + k - 1: the last frames' upper codebooks see the next frames' first codebooks when those
    are generated and a special token when they are not. Generating ``n_q - 1`` extra frames (or up to the end of the
    window anyway being computed) makes the kept frames exactly what any longer generation gives, so a video's music
    does not depend on the length of the videos batched with it. The extra frames are cut; no window is added.
    """
    last_start = _window_plan(num_frames, window, stride)[-1][0]
    return min(num_frames + n_q - 1, last_start + window)


def _tag_tensors(pipe: "VMASPipeline", tag_lists: tp.Sequence[tp.Sequence[str]]):
    """(emb [B, N, dim], mask [B, N]) of the tag lists, or (None, None) when no list holds a tag: the model then uses
    its learned null tag token (what an empty list gives too), and the text encoder is never loaded."""
    if not any(tag_lists):
        return None, None
    enc = pipe.get_text_encoder()
    if enc is None:
        return None, None
    emb, mask = enc(tag_lists)
    return emb.to(pipe.device), mask.to(pipe.device)


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
    req = (request or GenerationRequest()).resolved(pipe.spec)
    out_dir = check_output_dir(out_dir)
    if not pipe.spec.tags and req.has_tags:
        raise VmasError("this model has no tag branch (model.tags.enabled is false): drop --tags/--instruments/"
                        "--genres/--tempo/--negative/--auto-tags, or use a model trained with tags")
    results: tp.List[GenerationResult] = []

    def fail(path: Path, err: Exception):
        if on_error is None:
            raise err
        on_error(path, err)

    jobs: tp.List[_Job] = []
    taken: tp.Dict[str, Path] = {}
    for video in map(Path, videos):
        conflict = _output_conflict(video, out_dir, overwrite, taken)
        if conflict:
            fail(video, conflict)
            continue
        try:
            jobs.append(_prepare(video, pipe, req, auto_tagger))
            taken[video.stem] = video
        except VmasError as err:
            fail(video, err)

    bar = tqdm(total=len(jobs), desc="videos", unit="video", disable=not progress)
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i: i + batch_size]
        try:
            windows = _generate_chunk(chunk, pipe, req, progress, on_window)
        except VmasError as err:
            for job in chunk:
                fail(job.video, err)
            bar.update(len(chunk))
            continue
        for job in chunk:
            try:
                results.append(_write_atomically(job, pipe, out_dir, windows, req.mixing))
            except VmasError as err:
                fail(job.video, err)
            bar.update(1)
    bar.close()
    return results


def _write_atomically(job: "_Job", pipe: "VMASPipeline", out_dir: Path, windows: int,
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
def _prepare(video: Path, pipe: "VMASPipeline", req: GenerationRequest, auto_tagger) -> _Job:
    info = media.probe_video(video)
    if not info.duration or info.duration <= 0 or not info.num_frames:
        raise MediaError(f"{video}: video has no frames; pass a video with a readable video stream")
    seconds = info.duration if req.duration is None else min(info.duration, req.duration)
    fr = pipe.codec.frame_rate
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
    return _Job(video=video, info=info, seconds=seconds, num_frames=max(1, math.ceil(seconds * fr)), tags=tags)


def _generate_chunk(chunk: tp.List[_Job], pipe: "VMASPipeline", req: GenerationRequest, progress: bool,
                    on_window: tp.Optional[tp.Callable[[int, int], None]] = None) -> int:
    """Generate codes for a batch of videos window by window; returns the number of windows."""
    spec: GenerationSpec = pipe.spec
    fr = pipe.codec.frame_rate
    window = round(spec.window_seconds * fr)
    stride = round((req.stride or spec.window_seconds / 2) * fr)
    if not 0 < stride <= window:
        raise VmasError(f"stride must be in (0, {spec.window_seconds}] seconds, got {req.stride}")
    total = max(_frames_to_generate(job.num_frames, window, stride, pipe.codec.n_q) for job in chunk)
    plan = _window_plan(total, window, stride)
    device = pipe.device

    tag_emb = tag_mask = neg_emb = neg_mask = None
    if spec.tags:
        tag_emb, tag_mask = _tag_tensors(pipe, [job.tags for job in chunk])
        if req.negative:
            from vmas.tags.cleaner import clean_tags

            neg = clean_tags(list(req.negative))
            neg_emb, neg_mask = _tag_tensors(pipe, [neg] * len(chunk))
    beat = None
    if spec.beat_condition:  # a requested tempo ("N BPM" tag / --tempo) or the picture gives a beat grid
        from vmas import beat_grids as rhythm

        if req.beat_from_video:
            beat = rhythm.video_grids([job.video for job in chunk], [job.seconds for job in chunk], fr,
                                      [rhythm.tags_bpm(job.tags) for job in chunk])
        else:
            beat = rhythm.request_grids([job.tags for job in chunk], fr)

    # one generator per video: its music is the same whatever it is batched with (and equals batch size 1)
    gens = [torch.Generator(device="cpu").manual_seed(req.seed) for _ in chunk]
    if req.cuts not in (None, "none") or req.hits:  # sections at scene cuts, accents at hit points (issue 22)
        from vmas import structure

        return structure.generate_chunk(chunk, pipe, req.cuts, req.hits, req.sampling, req.seed, stride, tag_emb,
                                        tag_mask, neg_emb, neg_mask, beat)
    codes: tp.Optional[torch.Tensor] = None  # [B, K, T]
    for done, (start, end) in enumerate(tqdm(plan, desc="windows", unit="win", disable=not progress or len(plan) == 1,
                                             leave=False), start=1):
        frames = torch.stack([
            media.read_video_frames(job.video, fps=spec.fps, size=spec.image_size,
                                    start=start / fr, duration=spec.window_seconds)[0]
            for job in chunk]).to(device)  # [B, T, H, W, 3] uint8
        prompt = None if codes is None else codes[:, :, start:]
        out = pipe.model.generate(frames, num_frames=end - start, tag_emb=tag_emb, tag_mask=tag_mask,
                                  neg_emb=neg_emb, neg_mask=neg_mask, sampling=req.sampling, prompt=prompt,
                                  generator=gens, beat=beat, beat_start=start)  # [B, K, end-start]
        new = out if codes is None else out[:, :, codes.shape[-1] - start:]
        codes = new if codes is None else torch.cat([codes, new], dim=-1)
        if on_window is not None:
            on_window(done, len(plan))
    for b, job in enumerate(chunk):
        job.codes = codes[b, :, : job.num_frames].cpu()
    return len(plan)


DECODE_CHUNK_SECONDS = 60.0
"""Music decoded by the codec at once (its decoder's activations take ~7 MB per second of audio: a 10-minute video
would need 4 GB in one call); longer music is decoded in chunks of this length."""
DECODE_CONTEXT_SECONDS = 1.0
"""Codes decoded on each side of a chunk and then dropped, so the samples at a seam see the same neighbourhood as in
one long call (the decoder's convolutions reach a few frames; its LSTM's memory fades within a second)."""


def decode_music(codec, codes: torch.Tensor, device, chunk_seconds: float = DECODE_CHUNK_SECONDS,
                 context_seconds: float = DECODE_CONTEXT_SECONDS, out: tp.Any = None,
                 length: tp.Optional[int] = None) -> tp.Any:
    """Codes ``long [K, T]`` -> mono audio ``float [N]`` on the CPU, in chunks of ``chunk_seconds`` with
    ``context_seconds`` of codes either side (memory bounded by the chunk, time linear in ``T``). Music of at most
    one chunk (plus its context) is decoded in a single call, exactly as before.

    With ``out`` (a :class:`vmas.mixing.Track`) each chunk is written there as it is decoded, cut at ``length``
    samples (the track is zero past the music), and the track is returned: the music is never whole in memory."""
    fr = codec.frame_rate
    K, T = codes.shape
    chunk, context = max(1, round(chunk_seconds * fr)), max(0, round(context_seconds * fr))
    parts = []
    at = 0

    def keep(wav: torch.Tensor) -> None:
        nonlocal at
        if out is None:
            parts.append(wav)
            return
        wav = wav[: max(0, length - at)] if length is not None else wav
        out.write(at, wav.numpy())
        at += wav.numel()

    with torch.no_grad():
        if T <= chunk + context:
            keep(codec.decode(codes[None].to(device))[0, 0].float().cpu())  # [N]
        else:
            for s in range(0, T, chunk):
                a, e, b = max(0, s - context), min(T, s + chunk), min(T, s + chunk + context)
                wav = codec.decode(codes[None, :, a:b].to(device))[0, 0].float().cpu()  # [(b - a) * hop]
                hop = wav.numel() / (b - a)  # samples per code frame
                keep(wav[round((s - a) * hop): round((e - a) * hop)])
    if out is not None:
        if length is not None:
            out.n = length
        return out
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _music_track(job: _Job, pipe: "VMASPipeline", folder: Path):
    """The music of ``job`` as a float32 :class:`vmas.mixing.Track` file in ``folder``: decoded chunk by chunk,
    ``round(seconds * sr)`` samples (cut, or zero past the decoded music), scaled under 0.99 when it would clip
    (keeps the relative dynamics): the samples the whole-tensor path wrote, without the whole tensor."""
    from vmas.mixing import Track, _spans

    sr = pipe.codec.sample_rate
    n = round(job.seconds * sr)
    track = Track.on_disk(1, 0, folder)
    if job.audio is not None:  # decoded and joined by vmas.structure (--cuts / --hits)
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


def _write_outputs(job: _Job, pipe: "VMASPipeline", out_dir: Path, windows: int,
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


def _mux_finished(job: _Job, music, sr: int, mp4_path: Path, opts: MixOptions,
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
