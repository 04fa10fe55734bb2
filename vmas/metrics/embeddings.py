"""Audio I/O and pluggable audio embedding backbones for the distribution metrics (FAD, CLAP score).

Every backbone is an ``AudioEmbedder``: ``embed(wav float [N], sr) -> float [n, D]`` (``n`` embeddings per clip:
one per VGGish 0.96 s example, one per CLAP 10 s window, ...), plus a ``name`` that goes into the report so a
number is never separated from the embedding that produced it. ``paper_setting`` says whether the backbone is the
one the paper used (VGGish for FAD); weight-free fallbacks say loudly that their numbers are not comparable.

Specs accepted by :func:`build_embedder`:
    ``vggish``                 torchvggish checkpoint ``vggish-10086976.pth`` from the torch hub cache
    ``vggish:/path/file.pth``  same key layout from a local file
    ``clap:<hf name|folder>``  ``transformers.ClapModel`` audio tower (e.g. ``laion/clap-htsat-unfused``)
    ``encodec:<source>``       EnCodec encoder latents through :func:`vmas.models.codec.load_pretrained_codec`
    ``mel``                    weight-free fallback: per-example mean/std of VGGish log-mel bands (128-d)
    ``passt``                  PaSST-S scene embeddings via hear21passt (FD of the V2M-bench papers)
"""
from __future__ import annotations

import os
import typing as tp
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch import nn

from vmas.errors import CheckpointError, ConfigError, MediaError, VmasError
from vmas.loading import load_clap, load_state_dict_strict, torch_load

VGGISH_FILE = "vggish-10086976.pth"


def module_device(model: tp.Any) -> torch.device:
    """Where ``model``'s weights live (the CPU for a module without any): audio arrives from NumPy on the host and
    is moved there, and embeddings come back to the host (``.cpu()``) before they become NumPy arrays, so every
    embedder runs on a GPU model as on a CPU one."""
    param = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    return param.device if param is not None else torch.device("cpu")

VGGISH_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"


# ------------------------------------------------------------------------------------------------------ audio I/O
def load_audio(path: tp.Union[str, os.PathLike], sample_rate: tp.Optional[int] = None) -> tp.Tuple[np.ndarray, int]:
    """Read any audio (wav/flac/mp3) or the audio stream of a video as mono float32 ``[N]``.

    ``sample_rate=None`` keeps the file's rate (32 kHz for containers). soundfile first (fast, exact), then
    :func:`vmas.data.media.read_audio` (PyAV) for containers (mp4, mkv).
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: audio file not found; check the manifest/--generated/--reference paths")
    wav, sr = None, None
    try:
        import soundfile as sf

        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [N, C]
        wav = data.mean(axis=1)
    except Exception:  # noqa: BLE001 - not a soundfile format, try a container decoder
        wav = None
    if wav is None:  # containers (mp4, mkv, ...): the project's PyAV reader (handles planar/packed/int formats)
        from vmas.data import media

        sr = sample_rate or 32000
        wav = media.read_audio(path, sr=sr).numpy()
    if sample_rate is not None and sr != sample_rate:
        wav, sr = resample(wav, sr, sample_rate), sample_rate
    return np.ascontiguousarray(wav, dtype=np.float32), int(sr)


RESAMPLERS = ("poly", "kaiser_best", "soxr_hq")


def resample(wav: np.ndarray, sr_in: int, sr_out: int, method: str = "poly") -> np.ndarray:
    """Resample mono ``wav`` [N] -> float32 [N * sr_out / sr_in].

    A metric resamples the way its reference implementation does, because the resampler alone moves the numbers
    (VGGish log-mel examples of real music differ by up to 0.45, mean 0.005, between scipy's polyphase filter and
    resampy; docs/metrics.md):

    * ``poly``: scipy ``resample_poly`` (deterministic, dependency-light; KL, CLAP and our MV-Align);
    * ``kaiser_best``: resampy's default filter, what torchvggish's ``waveform_to_examples`` and the
      ``frechet_audio_distance`` loader call (VGGish front end);
    * ``soxr_hq``: what ``librosa.load(path)`` does by default (the AV-Align reference reads its audio that way).
    """
    if method not in RESAMPLERS:
        raise VmasError(f"unknown resampler '{method}'; use one of {', '.join(RESAMPLERS)}")
    if sr_in == sr_out:
        return np.asarray(wav, dtype=np.float32)
    if method == "kaiser_best":
        try:
            import resampy
        except ImportError as err:
            raise VmasError("the VGGish front end resamples with resampy (as torchvggish does): "
                            "pip install resampy") from err
        return resampy.resample(np.asarray(wav, dtype=np.float32), sr_in, sr_out, filter="kaiser_best",
                                axis=-1).astype(np.float32)
    if method == "soxr_hq":
        import librosa

        return librosa.resample(np.asarray(wav, dtype=np.float32), orig_sr=sr_in, target_sr=sr_out,
                                res_type="soxr_hq").astype(np.float32)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(int(sr_in), int(sr_out))
    return resample_poly(wav, sr_out // g, sr_in // g).astype(np.float32)


# ------------------------------------------------------------------------------------------------ embedder API
class AudioEmbedder:
    """Base class: ``embed(wav [N], sr) -> [n, D]`` float64 numpy."""

    name: str = "embedder"
    sample_rate: int = 16000
    dim: int = 0
    paper_setting: bool = False
    """True only for the backbone the paper used (VGGish for FAD)."""
    note: str = ""

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> tp.Dict[str, tp.Any]:
        return {"name": self.name, "dim": self.dim, "sample_rate": self.sample_rate,
                "paper_setting": self.paper_setting, "note": self.note}


# ------------------------------------------------------------------------------------------- VGGish front end
def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """HTK mel scale, as VGGish's ``mel_features``."""
    return 1127.0 * np.log(1.0 + hz / 700.0)


def vggish_mel_matrix(num_mel_bins: int = 64, num_spectrogram_bins: int = 257, sample_rate: int = 16000,
                      lower_hz: float = 125.0, upper_hz: float = 7500.0) -> np.ndarray:
    """[num_spectrogram_bins, num_mel_bins] triangles that are linear *in mel* (VGGish's definition, which differs
    slightly from librosa's Hz-linear triangles), unnormalised, DC bin zeroed."""
    nyquist = sample_rate / 2.0
    spec_mel = _hz_to_mel(np.linspace(0.0, nyquist, num_spectrogram_bins))
    edges = np.linspace(_hz_to_mel(np.array(lower_hz)), _hz_to_mel(np.array(upper_hz)), num_mel_bins + 2)
    weights = np.zeros((num_spectrogram_bins, num_mel_bins))
    for i in range(num_mel_bins):
        lo, center, hi = edges[i: i + 3]
        lower = (spec_mel - lo) / (center - lo)
        upper = (hi - spec_mel) / (hi - center)
        weights[:, i] = np.maximum(0.0, np.minimum(lower, upper))
    weights[0, :] = 0.0
    return weights


def vggish_log_mel(wav16k: np.ndarray) -> np.ndarray:
    """16 kHz mono -> log-mel frames [F, 64]: 25 ms periodic-Hann window, 10 ms hop, |FFT 512|, log(mel + 0.01)."""
    win, hop, nfft = 400, 160, 512
    if len(wav16k) < win:
        wav16k = np.pad(wav16k, (0, win - len(wav16k)))
    n_frames = 1 + (len(wav16k) - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n_frames)[:, None]  # [F, win]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    spec = np.abs(np.fft.rfft(wav16k[idx] * window, nfft))  # [F, 257]
    return np.log(spec @ vggish_mel_matrix() + 0.01)  # [F, 64]


def vggish_examples(wav16k: np.ndarray) -> np.ndarray:
    """Non-overlapping 0.96 s examples [n, 96, 64]; a clip shorter than one example is zero-padded to one."""
    mel = vggish_log_mel(wav16k)
    if mel.shape[0] < 96:
        mel = np.pad(mel, ((0, 96 - mel.shape[0]), (0, 0)), constant_values=np.log(0.01))
    n = mel.shape[0] // 96
    return rearrange(mel[: n * 96], "(n t) f -> n t f", t=96)


def vggish_input(wav: np.ndarray, sr: int) -> np.ndarray:
    """Mono audio at any rate -> VGGish examples [n, 96, 64]: resampy ``kaiser_best`` to 16 kHz, then
    :func:`vggish_examples`. The same numbers as torchvggish's ``vggish_input.waveform_to_examples`` (checked on
    real music to 1e-5 in tests/test_metric_parity.py); only a clip shorter than 0.96 s differs (the reference
    returns no example, this pads to one)."""
    return vggish_examples(resample(wav, sr, 16000, method="kaiser_best"))


class VGGish(nn.Module):
    """VGGish (Hershey et al. 2017): VGG-like conv net on [B, 1, 96, 64] log-mel patches -> [B, 128].

    Module names follow torchvggish (``features.{0,3,6,8,11,13}``, ``embeddings.{0,2,4}``) so the published
    ``vggish-10086976.pth`` state dict loads with ``strict=True``. The flatten is channels-last
    (``b c h w -> b (h w c)``) because the weights were converted from TensorFlow.

    Args:
        final_relu (bool): apply ReLU after the 128-d layer. Off by default: TF's current ``vggish_slim`` and the
            FAD reference use the pre-activation embedding.
    """

    def __init__(self, final_relu: bool = False):
        super().__init__()
        layers: tp.List[nn.Module] = []
        c_in = 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, int(v), 3, 1, 1), nn.ReLU(inplace=True)]
                c_in = int(v)
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 128),
        )
        self.final_relu = final_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: log-mel [B, 1, 96, 64] -> [B, 128]."""
        x = self.features(x)  # [B, 512, 6, 4]
        x = rearrange(x, "b c h w -> b (h w c)")  # TF (channels-last) flatten order
        x = self.embeddings(x)
        return torch.relu(x) if self.final_relu else x


def resolve_vggish_path(source: str = "vggish") -> Path:
    """``vggish`` -> ``$TORCH_HOME/hub/checkpoints/vggish-10086976.pth``; anything else is a local file."""
    if source in ("", "vggish"):
        path = Path(torch.hub.get_dir()) / "checkpoints" / VGGISH_FILE
        if not path.is_file():
            raise CheckpointError(f"VGGish weights not found at {path}; download {VGGISH_URL} there or pass "
                                  f"--fad-backbone vggish:/path/to/{VGGISH_FILE}")
        return path
    path = Path(source).expanduser()
    if not path.is_file():
        raise CheckpointError(f"VGGish checkpoint '{source}' does not exist; pass the path of {VGGISH_FILE}")
    return path


def load_vggish(source: str = "vggish", final_relu: bool = False) -> VGGish:
    """Load torchvggish weights (plain state dict, or wrapped under ``state_dict``/``model``)."""
    path = resolve_vggish_path(source)
    state = torch_load(path, "VGGish checkpoint")
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
    model = VGGish(final_relu=final_relu)
    load_state_dict_strict(model, state, f"{path}: not a torchvggish state dict", fix=f"use {VGGISH_FILE}")
    return model.eval()


class VGGishEmbedder(AudioEmbedder):
    """The paper's FAD backbone: one 128-d embedding per 0.96 s example at 16 kHz."""

    sample_rate = 16000
    dim = 128

    def __init__(self, model: VGGish, name: str = "vggish", paper_setting: bool = True, batch: int = 64):
        self.model = model.eval()
        self.name = name
        self.paper_setting = paper_setting
        self.batch = batch
        self.note = "VGGish (torchvggish weights), 0.96 s examples at 16 kHz, raw 128-d embedding (no PCA)"

    @torch.no_grad()
    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        x = torch.from_numpy(vggish_input(wav, sr)).float()[:, None]  # [n, 1, 96, 64] on the host
        x = x.to(module_device(self.model))
        out = [self.model(x[i: i + self.batch]) for i in range(0, len(x), self.batch)]
        return torch.cat(out).double().cpu().numpy()  # [n, 128]


class MelStatsEmbedder(AudioEmbedder):
    """Weight-free fallback: per 0.96 s example, mean and std of the 64 VGGish log-mel bands -> 128-d.

    Useful for smoke runs and relative comparisons inside this repo only; NOT comparable with the paper's FAD."""

    name = "mel-stats (weight-free fallback, not comparable with the paper)"
    sample_rate = 16000
    dim = 128
    note = "weight-free fallback: mean/std of 64 log-mel bands per 0.96 s example"

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        ex = vggish_input(wav, sr)  # [n, 96, 64]
        return np.concatenate([ex.mean(axis=1), ex.std(axis=1)], axis=1).astype(np.float64)  # [n, 128]


class EncodecEmbedder(AudioEmbedder):
    """EnCodec encoder latents (pre-quantisation), one per 1 s (mean of 50 frames), dim = codec latent dim."""

    def __init__(self, codec: nn.Module, name: str):
        self.codec = codec.eval()
        self.sample_rate = int(codec.sample_rate)
        self.name = f"encodec-latents ({name}; not comparable with the paper's VGGish FAD)"
        self.note = "EnCodec encoder latents averaged per second"
        self.dim = 0

    @torch.no_grad()
    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        x = torch.from_numpy(resample(wav, sr, self.sample_rate)).float()[None, None]  # [1, 1, N]
        z = self.codec.encoder(x.to(module_device(self.codec)))[0].T.cpu()  # [T, D]
        fps = max(1, round(getattr(self.codec, "frame_rate", 50)))
        n = max(1, z.shape[0] // fps)
        z = z[: n * fps] if z.shape[0] >= fps else z
        out = rearrange(z, "(n t) d -> n t d", n=n).mean(1)  # [n, D]
        self.dim = out.shape[1]
        return out.double().numpy()


def _clap_output(out: tp.Any) -> torch.Tensor:
    """transformers 5 may wrap projected features in a model output; unwrap to a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClapAudioEmbedder(AudioEmbedder):
    """CLAP audio tower: one projected embedding per 10 s window at 48 kHz (windows cut here so the feature
    extractor's random truncation never triggers)."""

    def __init__(self, source: str, model=None, feature_extractor=None):
        if model is None:
            model, feature_extractor, _ = load_clap(source)
        self.model, self.fe = model, feature_extractor
        self.sample_rate = int(getattr(feature_extractor, "sampling_rate", 48000))
        self.dim = int(model.config.projection_dim)
        self.name = f"clap:{source}"
        self.note = "CLAP audio embedding per 10 s window (transformers ClapModel)"

    def windows(self, wav: np.ndarray, sr: int, seconds: float = 10.0) -> tp.List[np.ndarray]:
        wav = resample(wav, sr, self.sample_rate)
        n = int(seconds * self.sample_rate)
        return [wav[i: i + n] for i in range(0, max(len(wav), 1), n)] or [wav]

    @torch.no_grad()
    def embed_windows(self, windows: tp.Sequence[np.ndarray]) -> torch.Tensor:
        # windows are <= 10 s, so "rand_trunc" only pads (deterministic); fused checkpoints want their 4-crop input
        fused = bool(getattr(self.model.config.audio_config, "enable_fusion", False))
        inputs = self.fe(list(windows), sampling_rate=self.sample_rate, return_tensors="pt",
                         truncation="fusion" if fused else "rand_trunc")
        device = module_device(self.model)
        inputs = {k: v.to(device) for k, v in inputs.items() if k in ("input_features", "is_longer")}
        return _clap_output(self.model.get_audio_features(**inputs)).float().cpu()  # [n, D] on the host

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        return self.embed_windows(self.windows(wav, sr)).double().numpy()


class PasstEmbedder(AudioEmbedder):
    """PaSST-S scene embedding (``hear21passt``, ``mode="embed_only"``, 768-d) per 10 s window at 32 kHz: the FD
    backbone of the V2M-bench papers. ``model`` injects an already-built module (tests); otherwise hear21passt
    builds it and downloads its AudioSet weights on first use (not possible offline: CheckpointError)."""

    sample_rate = 32000
    name = "passt (hear21passt passt_s_swa_p16_128_ap476, embed_only)"
    paper_setting = True
    note = "PaSST-S scene embedding per 10 s window at 32 kHz"

    def __init__(self, model: tp.Optional[nn.Module] = None, window_seconds: float = 10.0):
        if model is None:
            try:
                from hear21passt.base import get_basic_model
            except ImportError as err:
                raise CheckpointError("PaSST embeddings need the hear21passt package and its weights: pip install "
                                      "hear21passt (weights download on first use), or pass --fd-backbone "
                                      "clap:<name|folder> / vggish") from err
            try:
                model = get_basic_model(mode="embed_only")
            except Exception as err:  # noqa: BLE001 - the weight download is the usual failure offline
                raise CheckpointError(f"PaSST weights could not be loaded ({err}); run once online to fill the "
                                      f"torch hub cache, or pass another --fd-backbone") from err
        self.model = model.eval()
        self.window = int(window_seconds * self.sample_rate)
        self.dim = 768

    @torch.no_grad()
    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        x = resample(wav, sr, self.sample_rate)
        windows = [x[i: i + self.window] for i in range(0, max(len(x), 1), self.window)]
        windows = [w for w in windows if len(w) > int(0.15 * self.sample_rate)] or windows[:1]
        with _real_stft():
            device = module_device(self.model)
            out = [self.model(torch.from_numpy(np.ascontiguousarray(w))[None].float().to(device)) for w in windows]
        return torch.cat(out).double().cpu().numpy()  # [n_windows, 768]


def build_embedder(spec: str) -> AudioEmbedder:
    """Turn a backbone spec (see module docstring) into an embedder. Missing weights raise CheckpointError."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "vggish":
        return VGGishEmbedder(load_vggish(arg or "vggish"), name=f"vggish:{arg}" if arg else "vggish")
    if kind == "clap":
        return ClapAudioEmbedder(arg or "laion/clap-htsat-unfused")
    if kind == "encodec":
        from vmas.models.codec import load_pretrained_codec

        return EncodecEmbedder(load_pretrained_codec(arg or "facebook/encodec_32khz"), arg or "facebook/encodec_32khz")
    if kind == "mel":
        return MelStatsEmbedder()
    if kind == "passt":
        return PasstEmbedder()
    raise ConfigError(f"unknown embedding backbone '{spec}'; use vggish[:path], clap:<name|folder>, "
                    f"encodec:<source>, passt or mel")


class _real_stft:
    """hear21passt's mel front end calls ``torch.stft`` without ``return_complex`` (an error in torch 2): serve it
    the old real-valued layout [..., freq, time, 2] via ``view_as_real`` while PaSST runs (AudioCraft does the same)."""

    def __enter__(self):
        self.orig = torch.stft

        def stft(*args, **kwargs):
            if kwargs.get("return_complex") is None:
                kwargs["return_complex"] = True
                return torch.view_as_real(self.orig(*args, **kwargs))
            return self.orig(*args, **kwargs)

        torch.stft = stft
        return self

    def __exit__(self, *exc):
        torch.stft = self.orig
        return False
