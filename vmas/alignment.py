"""Video–music alignment signals for the beat-weighted objective (SPEC §5).

The pieces, in the order the data pipeline runs them for one clip (:func:`precompute_alignment`):

1. :func:`music_beats`  onsets of the ground-truth audio (librosa), snapped to the 50 Hz code grid -> ``bm [T]``;
2. :func:`video_motion` mean optical-flow magnitude between consecutive frames (RAFT or Farneback) -> ``f [F-1]``;
3. :func:`video_beats`  ``f`` linearly interpolated to the code grid, local maxima within ±w -> ``bv [T]``;
4. :func:`beat_weights` 1 where a music beat has a video beat within ±δ, λ elsewhere -> ``W [T]``.

Everything here runs once per clip at preprocessing time and is stored in the shards, so training never runs
optical flow. Public functions accept 1-D torch tensors or numpy arrays and return torch tensors on the CPU.

Time convention (DEVELOPERS.md): code frame ``t`` covers ``[t/50, (t+1)/50)``; video frame ``j`` is shown at
``j/fps``. The motion value ``f[j]`` (flow from frame ``j`` to ``j+1``) is placed at ``(j+1)/fps``, the instant the
change becomes visible, which is when a matching music onset should sound.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import typing as tp

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from vmas.errors import CheckpointError, DataError
from vmas.loading import load_state_dict_strict, torch_load
from vmas.utils import to_tensor

logger = logging.getLogger(__name__)

FLOW_METHODS = ("raft_small", "raft_large", "farneback")
RAFT_MIN_SIZE = 128
"""torchvision's RAFT pools its correlation volume 3 times from 1/8 resolution and needs >= 2 cells left, so
H and W must be >= 16 * 8 = 128 (and divisible by 8). Smaller frames are resized up; flow is rescaled back."""


# --------------------------------------------------------------------------------------------------- music beats
def onset_times(wav: tp.Any, sr: int, hop_length: int = 512) -> np.ndarray:
    """Onset times (s) of mono ``wav`` ``[N]``: librosa's onset detector (spectral-flux envelope, default peak
    picking, no backtracking) at ``hop_length`` samples -> float64 ``[n_onsets]``.

    The one onset detector of the package. Callers differ only in the time resolution they need, and keep the
    resolution their numbers were measured with: the training beats (:func:`music_beats`) use 5 ms hops at the
    native rate, MV-Align uses the AV-Align reference's 22.05 kHz / hop 512 (``vmas.metrics.mv_align.audio_peaks``
    resamples first), the SynthMV onset F1 uses 10 ms hops (``vmas.metrics.onsets.onset_times_10ms``). Silence has no
    onsets (librosa would warn on an all-zero signal).
    """
    y = to_tensor(wav).detach().cpu().to(torch.float32).numpy().reshape(-1)  # [N]
    if y.size == 0 or not np.any(y):
        return np.zeros(0, dtype=np.float64)

    import librosa  # heavy import, only needed where audio is analysed

    frames = librosa.onset.onset_detect(y=y, sr=sr, hop_length=hop_length, units="frames")
    return librosa.frames_to_time(frames, sr=sr, hop_length=hop_length).astype(np.float64)


def music_beats(wav: tp.Any, sr: int, frame_rate: int = 50, num_frames: tp.Optional[int] = None) -> torch.Tensor:
    """Onsets of ``wav`` (mono ``[N]``) as a bool mask over code frames ``[T]``.

    Onset detection (:func:`onset_times`) runs at 4x the code frame rate (5 ms at 50 Hz) so the snap to the grid
    (``floor(time * rate)``, the code frame whose span contains the onset) costs at most one hop of jitter, not a
    whole frame.

    Args:
        wav: mono audio ``[N]`` (or ``[1, N]``), float.
        sr: sample rate of ``wav``.
        frame_rate: code frames per second (EnCodec 32 kHz: 50).
        num_frames: length T of the output; default ``round(N / sr * frame_rate)``.
    """
    y = to_tensor(wav).detach().cpu()
    if y.ndim == 2 and y.shape[0] == 1:
        y = y[0]
    if y.ndim != 1:
        raise DataError(f"music_beats: wav must be mono [N] or [1, N], got shape {tuple(y.shape)}; "
                        "mix down first (wav.mean(0))")
    y = y.to(torch.float32).numpy()
    T = num_frames if num_frames is not None else int(round(len(y) / sr * frame_rate))
    beats = torch.zeros(T, dtype=torch.bool)
    hop = max(1, int(round(sr / (4 * frame_rate))))
    idx = np.floor(onset_times(y, sr, hop) * frame_rate + 1e-6).astype(np.int64)  # [n_onsets] code frames
    idx = idx[(idx >= 0) & (idx < T)]
    beats[torch.from_numpy(idx)] = True
    return beats


# --------------------------------------------------------------------------------------------------- optical flow
def _as_float_frames(frames: tp.Any) -> torch.Tensor:
    """uint8 [T,H,W,3] or float [T,3,H,W] in [0,1] -> float32 [T,3,H,W] in [0,1]."""
    x = to_tensor(frames)
    if x.ndim != 4:
        raise DataError(f"video_motion: frames must be uint8 [T,H,W,3] or float [T,3,H,W], got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        if x.shape[-1] != 3:
            raise DataError(f"video_motion: uint8 frames must be [T,H,W,3] (decord layout), got {tuple(x.shape)}")
        return rearrange(x, "t h w c -> t c h w").float() / 255.0
    if not x.is_floating_point() or x.shape[1] != 3:
        raise DataError(f"video_motion: float frames must be [T,3,H,W] in [0,1], got {x.dtype} {tuple(x.shape)}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1 + 1e-3:  # 0..255 floats or ImageNet-normalised frames would give a wrong curve
        raise DataError(f"video_motion: float frames must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                        "pass the raw uint8 frames instead")
    return x.float()


def _resolve_raft_weights(flow: str, weights: str) -> tp.Tuple[tp.Any, tp.Optional[str]]:
    """Map ``weights`` to (torchvision enum or None, local path or None).

    ``"DEFAULT"`` / an enum member name (``"C_T_V2"``) / ``"Raft_Small_Weights.C_T_V2"`` -> torchvision checkpoint
    (downloaded once into the torch hub cache); an existing file -> local state dict; ``"random"`` -> neither.
    """
    from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights

    enum = Raft_Small_Weights if flow == "raft_small" else Raft_Large_Weights
    if weights == "random":
        return None, None
    if os.path.isfile(weights):
        return None, weights
    name = weights.split(".")[-1]
    if name in enum.__members__:
        return enum[name], None
    raise CheckpointError(f"RAFT weights '{weights}' for {flow}: not a file and not one of "
                          f"{', '.join(['DEFAULT', *enum.__members__])}; pass a torchvision name or a local .pth path")


@functools.lru_cache(maxsize=4)
def load_raft(flow: str = "raft_small", weights: str = "DEFAULT", device: str = "cpu") -> torch.nn.Module:
    """torchvision RAFT in eval mode, cached per (flow, weights, device).

    Args:
        flow: ``raft_small`` or ``raft_large``.
        weights: torchvision weight name (``DEFAULT``, ``C_T_V2``, ``Raft_Large_Weights.C_T_SKHT_V2``...; needs the
            internet once, then the torch hub cache), a local path to that checkpoint file (a plain state dict, the
            format torchvision publishes), or ``random`` (tests only: the motion curve is then meaningless).
    """
    from torchvision.models import optical_flow

    if flow not in ("raft_small", "raft_large"):
        raise CheckpointError(f"unknown RAFT variant '{flow}': use raft_small or raft_large")
    enum_weights, path = _resolve_raft_weights(flow, weights)
    factory = getattr(optical_flow, flow)
    if enum_weights is not None:
        try:
            model = factory(weights=enum_weights, progress=False)
        except Exception as err:  # offline, proxy, truncated download...
            raise CheckpointError(f"cannot fetch torchvision {flow} weights {enum_weights} ({type(err).__name__}); "
                                  f"download {enum_weights.url} and pass its local path as the RAFT weights") from None
    else:
        model = factory(weights=None)
        if path is not None:
            state = torch_load(path, f"RAFT {flow} checkpoint")
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            load_state_dict_strict(model, state, f"{path}: not a torchvision {flow} state dict",
                                   fix="check the variant (raft_small vs raft_large)")
        else:
            logger.warning("RAFT %s with random weights: motion curves are meaningless (tests only)", flow)
    return model.eval().to(device)


def _raft_motion(x: torch.Tensor, model: torch.nn.Module, batch_size: int, num_flow_updates: int) -> torch.Tensor:
    """x float [T,3,H,W] in [0,1] -> mean flow magnitude [T-1], in pixels of the input resolution."""
    T, _, H, W = x.shape
    # RAFT wants H, W divisible by 8 and >= 128: resize, then express flow in input pixels again.
    Hr = max(RAFT_MIN_SIZE, 8 * math.ceil(H / 8))
    Wr = max(RAFT_MIN_SIZE, 8 * math.ceil(W / 8))
    device = next(model.parameters()).device
    scale = torch.tensor([W / Wr, H / Hr], device=device).view(1, 2, 1, 1)  # (u, v) back to input pixels
    out = []  # per chunk [n], kept on the model's device: one device -> host copy at the end, not one per chunk
    with torch.inference_mode():
        for start in range(0, T - 1, batch_size):  # chunk over frame pairs to bound memory
            stop = min(start + batch_size, T - 1)
            chunk = x[start:stop + 1].to(device)  # [n+1, 3, H, W]
            if (Hr, Wr) != (H, W):
                chunk = F.interpolate(chunk, size=(Hr, Wr), mode="bilinear", align_corners=False)
            chunk = chunk * 2.0 - 1.0  # RAFT's input normalisation: [-1, 1]
            flow = model(chunk[:-1], chunk[1:], num_flow_updates=num_flow_updates)[-1]  # [n, 2, Hr, Wr]
            flow = flow.float() * scale
            out.append(flow.norm(dim=1).mean(dim=(1, 2)))  # [n]
    return torch.cat(out).cpu()  # [T-1] on the host, as the Farneback curve


FARNEBACK_PARAMS = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
"""OpenCV's reference parameters, as the AV-Align reference (MV-Align) uses them."""


def farneback_pair_motion(frames: tp.Any) -> torch.Tensor:
    """uint8 RGB frames ``[T,H,W,3]`` -> mean Farneback flow magnitude between consecutive frames ``[T-1]``.

    The one Farneback implementation: the motion the beat-weighted loss is trained on (shards, beat grids from the
    picture) and the motion MV-Align scores are the same numbers. Grayscale is OpenCV's ``COLOR_RGB2GRAY`` (the
    AV-Align reference's conversion, fixed-point BT.601 weights) and the magnitude ``cv2.magnitude``, both from the
    metric's reference.
    """
    import cv2

    frames = np.asarray(frames)
    gray = [cv2.cvtColor(np.ascontiguousarray(f, dtype=np.uint8), cv2.COLOR_RGB2GRAY) for f in frames]  # [H, W] each
    out = []
    for a, b in zip(gray[:-1], gray[1:]):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK_PARAMS)  # [H, W, 2]
        out.append(float(cv2.magnitude(flow[..., 0], flow[..., 1]).mean()))
    return torch.tensor(out, dtype=torch.float32)


def video_motion(frames: tp.Any, flow: str = "raft_small", weights: str = "DEFAULT", device: str = "cpu",
                 batch_size: int = 8, num_flow_updates: int = 12,
                 model: tp.Optional[torch.nn.Module] = None) -> torch.Tensor:
    """Mean optical-flow magnitude between consecutive frames -> float ``[F-1]`` (pixels of the input size).

    Args:
        frames: uint8 ``[F,H,W,3]`` (decord layout) or float ``[F,3,H,W]`` in [0, 1].
        flow: ``raft_small`` (default), ``raft_large`` (torchvision) or ``farneback`` (OpenCV, no weights).
        weights: RAFT weights, see :func:`load_raft`.
        device: where RAFT runs.
        batch_size: frame pairs per RAFT call (memory bound).
        num_flow_updates: RAFT refinement iterations (torchvision default 12).
        model: an already built RAFT module (overrides ``flow``'s weights; used by tests and benchmarks).
    """
    x = _as_float_frames(frames)
    if x.shape[0] < 2:
        raise DataError(f"video_motion: need at least 2 frames, got {x.shape[0]}")
    if flow not in FLOW_METHODS:
        raise DataError(f"video_motion: unknown flow method '{flow}' (choose from {', '.join(FLOW_METHODS)})")
    if flow == "farneback":  # back to the uint8 [T,H,W,3] frames OpenCV reads (exact for uint8 input)
        return farneback_pair_motion((x * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    model = model if model is not None else load_raft(flow, weights, str(device))
    return _raft_motion(x, model, batch_size, num_flow_updates)


# --------------------------------------------------------------------------------------------------- video beats
def _window_max(x: torch.Tensor, radius: int) -> torch.Tensor:
    """max of x[..., t-r : t+r+1] (clipped at the edges) for every t; x float [..., T]."""
    lead = x.shape[:-1]
    y = F.max_pool1d(x.reshape(-1, 1, x.shape[-1]), kernel_size=2 * radius + 1, stride=1, padding=radius)
    return y.reshape(*lead, x.shape[-1])


def video_beats(motion: tp.Any, num_frames: int = 500, window: int = 5, fps: tp.Optional[float] = None,
                frame_rate: float = 50.0) -> torch.Tensor:
    """Video beats on the code grid: ``bv[t] = f[t]`` is the maximum of ``f`` within ``[t-w, t+w]`` -> bool ``[T]``.

    ``f`` is ``motion`` linearly interpolated to the ``num_frames`` code frames (value ``j`` sits at ``(j+1)/fps``).
    A frame only counts if it stands above something in its window: a flat stretch (a static shot, a steady pan)
    has no beats, otherwise every frame of a still video would be a "beat".

    Args:
        motion: ``[F-1]`` mean flow magnitudes from :func:`video_motion`.
        num_frames: T, code frames of the clip.
        window: w, half-width of the local-maximum window in code frames (SPEC default 5 = 0.1 s).
        fps: video frame rate; default assumes the F video frames span the same time as the T code frames.
        frame_rate: code frames per second.
    """
    m = to_tensor(motion, torch.float64).detach().cpu()
    if m.ndim != 1 or m.numel() == 0:
        raise DataError(f"video_beats: motion must be a non-empty 1-D curve [F-1], got shape {tuple(m.shape)}")
    n_video = m.numel() + 1
    fps = fps if fps is not None else n_video * frame_rate / num_frames
    src = np.arange(1, n_video) / fps * frame_rate  # code-frame position of each motion value
    f = torch.from_numpy(np.interp(np.arange(num_frames), src, m.numpy()))  # [T]; clamped outside the samples
    hi = _window_max(f, window)
    lo = -_window_max(-f, window)
    return (f >= hi) & (f > lo)


def beat_weights(music_beats: tp.Any, video_beats: tp.Any, delta: int = 3, lam: float = 0.5) -> torch.Tensor:
    """Per-frame loss weights: ``W[t] = 1`` if ``bm[t]`` and some ``bv[t-δ..t+δ]``, else ``λ`` -> float ``[T]``.

    Args:
        music_beats: bool ``[T]`` (or ``[B, T]``) from :func:`music_beats`.
        video_beats: bool, same shape, from :func:`video_beats`.
        delta: δ, tolerance in code frames (SPEC default 3 = 60 ms).
        lam: λ, weight of frames without an aligned beat; 1.0 gives all ones (plain cross-entropy).
    """
    bm = to_tensor(music_beats).bool()
    bv = to_tensor(video_beats).bool()
    if bm.shape != bv.shape:
        raise DataError(f"beat_weights: music beats {tuple(bm.shape)} and video beats {tuple(bv.shape)} must be "
                        "on the same grid (pass num_frames=len(music_beats) to video_beats)")
    near_video = _window_max(bv.float(), delta) > 0  # max(bv[t-δ .. t+δ])
    overlap = bm & near_video.to(bm.device)
    return torch.where(overlap, torch.ones((), dtype=torch.float32), torch.full((), float(lam)))


# --------------------------------------------------------------------------------------------------- per clip
def precompute_alignment(wav: tp.Any, sr: int, frames: tp.Any, fps: float, num_music_frames: int, cfg: tp.Any = None,
                         *, frame_rate: float = 50.0, flow: tp.Optional[str] = None,
                         flow_weights: tp.Optional[str] = None, device: str = "cpu",
                         flow_model: tp.Optional[torch.nn.Module] = None) -> tp.Dict[str, torch.Tensor]:
    """Everything the beat-weighted loss needs for one clip, computed once by the data pipeline.

    Args:
        wav: mono ground-truth audio of the clip ``[N]``.
        sr: its sample rate.
        frames: the clip's video frames, uint8 ``[F,H,W,3]`` or float ``[F,3,H,W]`` in [0, 1].
        fps: video frame rate of ``frames``.
        num_music_frames: T, code frames of the clip (``round(clip_seconds * 50)``).
        cfg: a :class:`vmas.config.LossConfig` (beat_window, beat_delta, beat_lambda, motion_flow,
            motion_weights, motion_batch); None = SPEC defaults.
        flow / flow_weights: override ``cfg.motion_flow`` / ``cfg.motion_weights``.
        flow_model: a built RAFT module (reused across clips by a worker; tests pass random weights here).

    Returns:
        dict with ``music_beats`` bool [T], ``motion`` float [F-1], ``video_beats`` bool [T], ``beat_weights`` float [T].
    """
    from vmas.config import LossConfig

    cfg = cfg if cfg is not None else LossConfig()
    flow = flow or cfg.motion_flow
    weights = flow_weights or cfg.motion_weights or "DEFAULT"
    bm = music_beats(wav, sr, frame_rate=int(round(frame_rate)), num_frames=num_music_frames)
    motion = video_motion(frames, flow=flow, weights=weights, device=device, batch_size=cfg.motion_batch,
                          model=flow_model)
    bv = video_beats(motion, num_frames=num_music_frames, window=cfg.beat_window, fps=fps, frame_rate=frame_rate)
    w = beat_weights(bm, bv, delta=cfg.beat_delta, lam=cfg.beat_lambda)
    return {"music_beats": bm, "motion": motion, "video_beats": bv, "beat_weights": w}
