"""The window engine: every piece of music vmas generates goes through here (``vmas generate``, the web page, scene
cuts and hit points, and the benchmarks' ``vmas.evaluation.generate_windows``), so a benchmark scores exactly the
generation a user gets.

The model sees ``window_seconds`` of video and music at once. Music longer than a window is a *plan* of windows
(:class:`vmas.structure.Section`, data, not code paths):

- plain continuation: one section over the whole clip; window 0 is generated from scratch, each later window
  starts ``stride`` frames after the previous one and continues the last ``window - stride`` frames of music
  already generated (MusicGen-style continuation, no seam);
- scene cuts (issue 22): one section per scene, each started from scratch on its own frames and crossfaded into
  the next (:func:`vmas.structure.section_windows`, :func:`vmas.structure.join_sections`);
- a benchmark's first window: the plain plan of one window.

One request is resolved against the model's own generation config once (:meth:`GenerationRequest.resolved`), the
conditions of a batch (tags, negative tags, beat grids from a tempo, the picture or hit points) are built in one
place (:meth:`WindowEngine.conditions`), and all music is decoded through :func:`decode_music` (chunked, so memory
does not grow with length). Every clip has its own random generator seeded with the request's seed: its music does
not depend on the batch it is generated in.

Layer 7 (above the architectures, data and structure signals; below the user-facing entry points).
"""
from __future__ import annotations

import dataclasses
import math
import typing as tp
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vmas import structure
from vmas.beat_grids import request_grids, tags_bpm, video_grids
from vmas.data import media
from vmas.errors import VmasError
from vmas.mixing import MixOptions
from vmas.sampling import SamplingParams

if tp.TYPE_CHECKING:
    from vmas.pipeline import GenerationSpec, VMASPipeline


# ------------------------------------------------------------------------------------------------------ request
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
    def structured(self) -> bool:
        """Sections at cuts or accents at hits were asked for (even if ``--cuts auto`` then finds no cut)."""
        return self.cuts not in (None, "none") or bool(self.hits)

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


# --------------------------------------------------------------------------------------------------------- jobs
@dataclasses.dataclass
class MusicJob:
    """One clip's music: what conditions it, and (after :meth:`WindowEngine.run`) its codes and waveform."""

    video: tp.Optional[Path]
    """The picture (None: tags-only music, the video slots hold the learned null condition)."""
    seconds: float
    """Seconds of music to generate (beat grids from the picture and scene cuts are found over this span)."""
    num_frames: int
    """Code frames kept (``ceil(seconds * frame_rate)``)."""
    tags: tp.List[str] = dataclasses.field(default_factory=list)
    negative: tp.List[str] = dataclasses.field(default_factory=list)
    cuts: tp.List[float] = dataclasses.field(default_factory=list)
    """Section boundaries (s), resolved (:func:`vmas.structure.resolve_cuts`)."""
    hits: tp.List[float] = dataclasses.field(default_factory=list)
    """Accent times (s) inside ``seconds``."""
    past_end: tp.Dict[str, tp.List[float]] = dataclasses.field(default_factory=dict)
    """The user's ``--cuts`` / ``--hits`` times at or past ``seconds``, dropped (option -> times; the CLI and the
    page say so)."""
    onsets: tp.Optional[torch.Tensor] = None
    """float [frames]: the onset oracle's input (a diagnostic of models trained with ``model.lm.onset_oracle``)."""
    info: tp.Any = None
    """The video's probe (:func:`vmas.data.media.probe_video`), for the writer."""
    codes: tp.Optional[torch.Tensor] = None
    """long [K, num_frames] on the CPU, set by :meth:`WindowEngine.run`."""
    audio: tp.Optional[np.ndarray] = None
    """float32 [N]: the joined music of a sectioned job (decoded per section); None for plain jobs (decode
    ``codes`` with :func:`decode_music`, streaming into a track if it is long)."""


@dataclasses.dataclass
class Conditions:
    """A batch's conditions, rows in job order: tags (emb [B, N, C], mask [B, N]), negative tags, beat grid
    [B, 2] or a hit grid [1, steps, 2], onsets [B, frames]; None = absent (learned null tokens)."""

    tag_emb: tp.Optional[torch.Tensor] = None
    tag_mask: tp.Optional[torch.Tensor] = None
    neg_emb: tp.Optional[torch.Tensor] = None
    neg_mask: tp.Optional[torch.Tensor] = None
    beat: tp.Optional[torch.Tensor] = None
    onsets: tp.Optional[torch.Tensor] = None
    motion_off: tp.Optional[torch.Tensor] = None  # bool [B]: clips whose timing is a requested tempo (see conditions)


# ------------------------------------------------------------------------------------------------------ the plan
def window_plan(total: int, window: int, stride: int) -> tp.List[tp.Tuple[int, int]]:
    """[(start_frame, end_frame)] of each generation window over ``total`` code frames.

    Window 0 covers [0, min(window, total)); window k starts ``stride`` frames after the previous one, so it
    re-reads ``window - stride`` frames of context and adds up to ``stride`` new frames.
    """
    plan = [(0, min(window, total))]
    while plan[-1][1] < total:
        start = plan[-1][1] - (window - stride)
        plan.append((start, min(start + window, total)))
    return plan


def frames_to_generate(num_frames: int, window: int, stride: int, n_q: int) -> int:
    """Code frames to generate for a clip that needs ``num_frames``: up to ``n_q - 1`` more, within its last window.

    With the delay pattern, codebook k of frame f is sampled at step f + k, after the input column that holds
    codebook 0 of frame f + k - 1: the last frames' upper codebooks see the next frames' first codebooks when those
    are generated and a special token when they are not. Generating ``n_q - 1`` extra frames (or up to the end of the
    window anyway being computed) makes the kept frames exactly what any longer generation gives, so a clip's music
    does not depend on the length of the clips batched with it. The extra frames are cut; no window is added.
    """
    last_start = window_plan(num_frames, window, stride)[-1][0]
    return min(num_frames + n_q - 1, last_start + window)


DECODE_CHUNK_SECONDS = 30.0
"""Music decoded by the codec at once (its decoder's activations take ~7 MB per second of audio: a 10-minute video
would need 4 GB in one call); longer music is decoded in chunks of this length. 30 s, not more: the chunk's
activations are the largest block of the whole run, so they set the peak memory of every long video (issue 35:
60 s chunks made a 4-minute video's peak 110 MB above a 1-minute one's); not less, so the 24 s videos of the
structure benchmark and every 10 s clip are still one call."""
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


# -------------------------------------------------------------------------------------------------- the engine
class WindowEngine:
    """Generates the music of :class:`MusicJob` batches for one pipeline and one request.

    ``request`` is resolved against the model's spec here (unset sampling controls = the model's own generation
    config). Plain jobs are generated together (one shared plan: the longest job's); a request with cuts or hits
    generates each job alone (each has its own sections).
    """

    def __init__(self, pipe: "VMASPipeline", request: tp.Optional[GenerationRequest] = None):
        self.pipe = pipe
        self.spec = pipe.spec
        self.request = (request or GenerationRequest()).resolved(pipe.spec)
        fr = pipe.codec.frame_rate
        self.frame_rate = fr
        self.window = round(self.spec.window_seconds * fr)
        self.stride = round((self.request.stride or self.spec.window_seconds / 2) * fr)
        if not 0 < self.stride <= self.window:
            raise VmasError(f"stride must be in (0, {self.spec.window_seconds}] seconds, got {self.request.stride}")

    # ---- jobs and conditions
    def job(self, video: tp.Optional[tp.Union[str, Path]], seconds: float, tags: tp.Sequence[str] = (),
            negative: tp.Optional[tp.Sequence[str]] = None, **extra: tp.Any) -> MusicJob:
        """A job for ``seconds`` of music on ``video``, with the request's cuts and hits resolved for it and
        negative tags defaulting to the request's (cleaned as tags are)."""
        req = self.request
        if negative is None:
            from vmas.tags.cleaner import clean_tags

            negative = clean_tags(list(req.negative)) if req.negative else []
        job = MusicJob(video=None if video is None else Path(video), seconds=seconds,
                       num_frames=max(1, math.ceil(seconds * self.frame_rate)), tags=list(tags),
                       negative=list(negative), **extra)
        if req.structured:
            hits = structure.parse_times(req.hits, "--hits")
            structure.check_hits(hits, self.spec.beat_condition)
            job.cuts = structure.resolve_cuts(req.cuts, job.video, seconds)
            job.hits = [t for t in hits if t < seconds]
            past = {"--cuts": structure.times_past_end(req.cuts, "--cuts", seconds),
                    "--hits": [t for t in hits if t >= seconds]}
            job.past_end = {k: v for k, v in past.items() if v}
        return job

    def conditions(self, jobs: tp.Sequence[MusicJob]) -> Conditions:
        """Tags, negative tags and beat grids of a batch, built once per batch (the one place that decides
        which grid a clip gets: a requested tempo, or the picture's motion peaks with ``beat_from_video``; and which
        clips leave the motion curve out: those whose timing a tempo or hits set)."""
        c = Conditions()
        if self.spec.tags:
            c.tag_emb, c.tag_mask = self._tag_tensors([job.tags for job in jobs])
            if any(job.negative for job in jobs):
                c.neg_emb, c.neg_mask = self._tag_tensors([job.negative for job in jobs])
        if self.spec.beat_condition:
            if self.request.beat_from_video and all(job.video is not None for job in jobs):
                c.beat = video_grids([job.video for job in jobs], [job.seconds for job in jobs], self.frame_rate,
                                     [tags_bpm(job.tags) for job in jobs])
            else:
                c.beat = request_grids([job.tags for job in jobs], self.frame_rate)
                if c.beat is not None:  # (a model without the motion condition ignores it)
                    # A requested tempo sets the note timing: the picture's motion curve is left out for those clips
                    # (zero, the condition's dropped value), else it contests the grid. Measured on the shipped demo
                    # (issue 32): tempos the picture does not suggest are followed in 0.68 of test clips with the
                    # curve and ~0.9 without it (docs/synthmv_results.md). --beat-from-video grids come from the
                    # same motion, so they keep it; so do clips without a tempo.
                    c.motion_off = torch.isfinite(c.beat[:, 0])
            if self.request.structured and structure.HITS_MOTION == "off":  # hits set the timing as a tempo does
                hit = torch.tensor([bool(job.hits) for job in jobs])
                c.motion_off = hit if c.motion_off is None else c.motion_off | hit
            if c.motion_off is not None:  # to the model's device once per batch, not once per window
                c.motion_off = c.motion_off.to(self.pipe.device)
        if any(job.onsets is not None for job in jobs):
            c.onsets = torch.stack([job.onsets for job in jobs])
        return c

    def _tag_tensors(self, tag_lists: tp.Sequence[tp.Sequence[str]]):
        """(emb [B, N, dim], mask [B, N]), or (None, None) when no list holds a tag: the model then uses its learned
        null tag token (what an empty list gives too), and the text encoder is never loaded."""
        if not any(tag_lists):
            return None, None
        enc = self.pipe.get_text_encoder()
        if enc is None:
            return None, None
        emb, mask = enc(tag_lists)
        return emb.to(self.pipe.device), mask.to(self.pipe.device)

    # ---- plans
    def sections(self, jobs: tp.Sequence[MusicJob]) -> tp.List[structure.Section]:
        """The plan of a batch: plain continuation over the longest job (one section), or for a structured request
        (one job) a section per scene, each running a crossfade past its cut."""
        if self.request.structured:
            (job,) = jobs
            cut_frames = [round(c * self.frame_rate) for c in job.cuts]
            return structure.section_windows(job.num_frames, self.window, self.stride, cut_frames, self._overlap())
        total = max(frames_to_generate(job.num_frames, self.window, self.stride, self.pipe.codec.n_q) for job in jobs)
        return [structure.Section(0, total, total, tuple(window_plan(total, self.window, self.stride)))]

    def _overlap(self) -> int:
        """Code frames a section runs past its cut for the crossfade: :data:`vmas.structure.CROSSFADE_S` read at call
        time (the structure benchmark tries other lengths through it)."""
        return max(1, round(structure.CROSSFADE_S * self.frame_rate))

    def _hit_beat(self, job: MusicJob, sections: tp.Sequence[structure.Section],
                  beat: tp.Optional[torch.Tensor]) -> tp.Optional[torch.Tensor]:
        """A hit grid [1, steps, 2] with a beat on each hit (period: the request's grid, else each scene's pace
        or the gaps between hits, :data:`vmas.structure.HITS_TEMPO`); ``beat`` unchanged without hits."""
        if not job.hits:
            return beat
        fr = self.frame_rate
        steps = job.num_frames + self.pipe.codec.n_q  # the grid covers the delay pattern's K-1 steps past the end
        if beat is not None and torch.isfinite(beat[0]).all():  # a requested tempo (or --beat-from-video grid)
            period: tp.Union[float, np.ndarray] = float(beat[0, 0])
        elif structure.HITS_TEMPO == "picture":
            bounds = [0, *[s.end for s in sections[:-1]], steps]
            period = structure.scene_periods(job.video, job.num_frames / fr, fr, bounds,
                                             structure.hits_period(job.hits, fr))
        else:
            period = structure.hits_period(job.hits, fr)
        return structure.hit_grid(job.hits, steps, fr, period)[None]

    def _frames(self, jobs: tp.Sequence[MusicJob], start: int, section_end: tp.Optional[int]
                ) -> tp.Optional[torch.Tensor]:
        """uint8 [B, T, H, W, 3] of the window starting at code frame ``start`` (None for tags-only jobs). Inside
        a section, frames at or after its end (the next scene) repeat the section's last frame."""
        if all(job.video is None for job in jobs):
            return None
        spec, fr = self.spec, self.frame_rate
        out = []
        for job in jobs:
            frames, ts, _ = media.read_video_frames(job.video, fps=spec.fps, size=spec.image_size,
                                                    start=start / fr, duration=spec.window_seconds)
            if section_end is not None:
                later = np.flatnonzero(np.asarray(ts) >= section_end / fr - 1e-3)
                if later.size and later[0] > 0:
                    frames[later] = frames[later[0] - 1].clone()
            out.append(frames)
        return torch.stack(out).to(self.pipe.device)

    # ---- the loop
    @torch.no_grad()
    def run(self, jobs: tp.Sequence[MusicJob], progress: bool = False,
            on_window: tp.Optional[tp.Callable[[int, int], None]] = None) -> int:
        """Generate every job's codes (and the joined audio of sectioned jobs); returns the most windows any
        batch needed. ``on_window(done, total)`` after each window of a batch."""
        if self.request.structured:
            return max(self._run_batch([job], progress, on_window) for job in jobs)
        return self._run_batch(list(jobs), progress, on_window)

    def _run_batch(self, jobs: tp.List[MusicJob], progress: bool,
                   on_window: tp.Optional[tp.Callable[[int, int], None]]) -> int:
        sections = self.sections(jobs)
        cond = self.conditions(jobs)
        beat = self._hit_beat(jobs[0], sections, cond.beat) if self.request.structured else cond.beat
        # one generator per clip: its music is the same whatever it is batched with (and equals batch size 1)
        gens = [torch.Generator(device="cpu").manual_seed(self.request.seed) for _ in jobs]
        windows = [(sec, w) for sec in sections for w in sec.windows]
        bar = tqdm(total=len(windows), desc="windows", unit="win", leave=False,
                   disable=not progress or len(windows) == 1)
        parts: tp.List[torch.Tensor] = []  # [B, K, stop - start] per section
        codes: tp.Optional[torch.Tensor] = None
        for done, (sec, (start, end)) in enumerate(windows, start=1):
            if start == sec.start:  # a section starts from scratch (window 0 has no prompt)
                codes = None
            prompt = None if codes is None else codes[:, :, start - sec.start:]
            frames = self._frames(jobs, start, sec.end if self.request.structured else None)
            out = self.pipe.model.generate(
                frames, num_frames=end - start, tag_emb=cond.tag_emb, tag_mask=cond.tag_mask,
                neg_emb=cond.neg_emb, neg_mask=cond.neg_mask, sampling=self.request.sampling, prompt=prompt,
                generator=gens, beat=beat, beat_start=start,
                onsets=cond.onsets, motion_off=cond.motion_off)  # [B, K, end - start]
            new = out if codes is None else out[:, :, codes.shape[-1] - (start - sec.start):]
            codes = new if codes is None else torch.cat([codes, new], dim=-1)
            if end == sec.stop:
                parts.append(codes)
            bar.update(1)
            if on_window is not None:
                on_window(done, len(windows))
        bar.close()
        if not self.request.structured:  # one section: the codes are the music (decoded later, in chunks)
            for b, job in enumerate(jobs):
                job.codes = parts[0][b, :, : job.num_frames].cpu()
            return len(windows)
        (job,) = jobs
        codec, sr = self.pipe.codec, self.pipe.codec.sample_rate
        wavs = [decode_music(codec, p[0].cpu(), self.pipe.device).numpy() for p in parts]
        fade = round(self._overlap() * sr / self.frame_rate)
        job.audio = structure.join_sections(wavs, [round(s.start * sr / self.frame_rate) for s in sections],
                                            round(job.num_frames * sr / self.frame_rate), fade)
        job.codes = torch.cat([p[0, :, : s.end - s.start] for p, s in zip(parts, sections)], dim=-1).cpu()
        return len(windows)

    def music(self, job: MusicJob) -> np.ndarray:
        """The job's waveform, float32 [N] (the joined sections, or its codes decoded)."""
        if job.audio is not None:
            return job.audio
        return decode_music(self.pipe.codec, job.codes, self.pipe.device).numpy()
