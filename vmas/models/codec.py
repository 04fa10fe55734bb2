"""EnCodec tokenizer: wav [B, 1, N] at 32 kHz <-> codes [B, K, T] at 50 Hz, plus the RVQ codebooks (SPEC §2).

The network is built from the ``encodec`` package's modules (SEANet encoder/decoder + residual vector quantizer),
whose parameter names are those of audiocraft's EnCodec, so audiocraft's ``compression_state_dict.bin`` loads with
almost no renaming. HF transformers' ``EncodecModel`` (``facebook/encodec_32khz``) has the same layers under other
names; :func:`convert_state_dict` is the ONE place that maps either layout onto ours.

Checkpoints accepted by :func:`load_pretrained_codec` (``model.codec.pretrained``):

- an HF hub name (``facebook/encodec_32khz``) or a local folder saved by ``EncodecModel.save_pretrained``;
- audiocraft's ``compression_state_dict.bin`` (``{'best_state': state_dict, 'xp.cfg': yaml}``), or a hub repo
  holding one (``facebook/musicgen-medium``);
- our own codec file written by ``tools/train_codec.py`` (:func:`save_codec` / :func:`load_codec`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import typing as tp
import warnings
from pathlib import Path

import torch
import yaml
from einops import rearrange
from torch import nn

from vmas.errors import CheckpointError

CODEC_FORMAT = "vmas-codec"
"""Marker of files written by :func:`save_codec`."""


@contextlib.contextmanager
def _quiet_weight_norm():
    """The ``encodec`` package calls the deprecated ``torch.nn.utils.weight_norm``; its parameter names
    (``weight_g``/``weight_v``) are the ones audiocraft checkpoints use, so we keep it and hide the warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        yield


@dataclasses.dataclass
class CodecOutput:
    """Training forward of :class:`Codec`."""

    recon: torch.Tensor  # [B, C, N] reconstruction, same length as the input
    codes: torch.Tensor  # [B, K, T]
    commit_loss: torch.Tensor  # [] mean commitment loss over codebooks


class Codec(nn.Module):
    """SEANet encoder + RVQ + SEANet decoder (EnCodec, as used by MusicGen).

    Args:
        sample_rate: audio rate in Hz (32000 for MusicGen's codec).
        channels: audio channels (1).
        n_filters: base width of SEANet (64 for the 32 kHz model).
        ratios: decoder upsampling ratios; their product is the hop (8*5*4*4 = 640 -> 50 Hz at 32 kHz).
        dimension: latent / codebook dimension D (128).
        n_residual_layers: residual blocks per SEANet stage.
        lstm: LSTM layers at the bottleneck (2; 0 drops them, for tiny debug models).
        n_q: number of codebooks K.
        bins: entries per codebook (card).
        causal, pad_mode, true_skip, compress, kernel_size, last_kernel_size, residual_kernel_size, dilation_base:
            SEANet details; the defaults are audiocraft's (MusicGen's ``encodec_32khz``).
        decay, kmeans_init, kmeans_iters, threshold_ema_dead_code: RVQ training (EMA codebooks, k-means init on
            the first batch, dead-code replacement). ``kmeans_init=False`` starts from random codebooks, which is
            what an untrained (debug) codec needs to give varied codes.
    """

    def __init__(self, sample_rate: int = 32000, channels: int = 1, n_filters: int = 64,
                 ratios: tp.Sequence[int] = (8, 5, 4, 4), dimension: int = 128, n_residual_layers: int = 1,
                 lstm: int = 2, n_q: int = 4, bins: int = 2048, causal: bool = False, pad_mode: str = "constant",
                 true_skip: bool = True, compress: int = 2, kernel_size: int = 7, last_kernel_size: int = 7,
                 residual_kernel_size: int = 3, dilation_base: int = 2, decay: float = 0.99,
                 kmeans_init: bool = False, kmeans_iters: int = 50, threshold_ema_dead_code: int = 2):
        super().__init__()
        from encodec.modules import SEANetDecoder, SEANetEncoder
        from encodec.quantization import ResidualVectorQuantizer

        self.kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in locals().items()
                       if k not in ("self", "__class__", "SEANetDecoder", "SEANetEncoder", "ResidualVectorQuantizer")}
        """Constructor arguments (plain data), saved with the weights so a file rebuilds its own architecture."""
        seanet = dict(channels=channels, dimension=dimension, n_filters=n_filters,
                      n_residual_layers=n_residual_layers, ratios=list(ratios), norm="weight_norm",
                      kernel_size=kernel_size, last_kernel_size=last_kernel_size,
                      residual_kernel_size=residual_kernel_size, dilation_base=dilation_base, causal=causal,
                      pad_mode=pad_mode, true_skip=true_skip, compress=compress, lstm=lstm)
        with _quiet_weight_norm():
            self.encoder = SEANetEncoder(**seanet)
            self.decoder = SEANetDecoder(**seanet)
        self.quantizer = ResidualVectorQuantizer(dimension=dimension, n_q=n_q, bins=bins, decay=decay,
                                                 kmeans_init=kmeans_init, kmeans_iters=kmeans_iters,
                                                 threshold_ema_dead_code=threshold_ema_dead_code)
        self.sample_rate = sample_rate
        self.channels = channels
        self.hop_length = math.prod(ratios)
        fr = sample_rate / self.hop_length
        self.frame_rate: tp.Union[int, float] = int(fr) if fr == int(fr) else fr
        self.n_q = n_q
        self.card = bins
        self.dim = dimension

    # ----------------------------------------------------------------------------------------------- helpers
    def _pad(self, wav: torch.Tensor) -> torch.Tensor:
        """Zero-pad N up to a multiple of the hop so that T = ceil(N / hop) frames cover the whole input."""
        assert wav.dim() == 3 and wav.shape[1] == self.channels, f"expected wav [B, {self.channels}, N], got {tuple(wav.shape)}"
        extra = (-wav.shape[-1]) % self.hop_length
        return nn.functional.pad(wav, (0, extra)) if extra else wav

    # -------------------------------------------------------------------------------------------- public API
    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav float [B, 1, N] -> codes long [B, K, T], T = ceil(N / hop)."""
        wav = self._pad(wav)
        emb = self.encoder(wav)  # [B, D, T]
        codes = self.quantizer.vq.encode(emb, n_q=self.n_q)  # [K, B, T]
        return rearrange(codes, "k b t -> b k t").long()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes long [B, K, T] -> wav [B, 1, T * hop]."""
        B, K, T = codes.shape
        assert K == self.n_q, f"expected {self.n_q} codebooks, got {K}"
        emb = self.quantizer.vq.decode(rearrange(codes, "b k t -> k b t"))  # [B, D, T]
        return self.decoder(emb)[..., : T * self.hop_length]  # [B, 1, T*hop]

    def codebooks(self) -> torch.Tensor:
        """RVQ codebooks float [K, card, D], detached (the contrastive loss reads them, never trains them)."""
        return torch.stack([layer._codebook.embed for layer in self.quantizer.vq.layers]).detach().clone()

    def forward(self, wav: torch.Tensor) -> CodecOutput:
        """Training pass (straight-through RVQ, EMA codebook updates in train mode). wav [B, 1, N]."""
        N = wav.shape[-1]
        emb = self.encoder(self._pad(wav))  # [B, D, T]
        q = self.quantizer(emb, self.frame_rate)  # quantized [B, D, T], codes [K, B, T]
        recon = self.decoder(q.quantized)[..., :N]  # [B, 1, N]
        return CodecOutput(recon=recon, codes=rearrange(q.codes, "k b t -> b k t"), commit_loss=q.penalty.mean())


# ----------------------------------------------------------------------------------------------- key mapping
_WN = {"original0": "weight_g", "original1": "weight_v"}


def convert_state_dict(state: tp.Mapping[str, torch.Tensor], source: str,
                       target_keys: tp.Collection[str]) -> tp.Dict[str, torch.Tensor]:
    """Map an HF (``source="hf"``) or audiocraft (``"audiocraft"``) EnCodec state dict onto :class:`Codec` names.

    Both layouts index SEANet layers identically (conv, [resblock, ELU, conv] per stage, LSTM, ELU, conv), so
    only the wrapper names differ:

    ====================================================  =====================================================
    HF transformers                                       ours (= audiocraft = ``encodec`` package)
    ====================================================  =====================================================
    ``encoder.layers.{i}.conv.weight_g``                  ``encoder.model.{i}.conv.conv.weight_g``
    ``decoder.layers.{i}.conv.*`` (transposed conv)       ``decoder.model.{i}.convtr.convtr.*``
    ``*.block.{j}.conv.*`` / ``*.shortcut.conv.*``        ``*.block.{j}.conv.conv.*`` / ``*.shortcut.conv.conv.*``
    ``encoder.layers.{i}.lstm.*``                         ``encoder.model.{i}.lstm.*``
    ``quantizer.layers.{k}.codebook.embed``               ``quantizer.vq.layers.{k}._codebook.embed``
    ====================================================  =====================================================

    Weight norm saved through ``torch.nn.utils.parametrizations`` (``conv.parametrizations.weight.original0/1``)
    is renamed to the legacy ``weight_g`` / ``weight_v`` in either source. ``target_keys`` (our model's keys)
    settles the one ambiguity of the HF layout: whether ``conv`` is a plain or a transposed convolution.
    """
    if source not in ("hf", "audiocraft"):
        raise ValueError(f"unknown codec checkpoint layout {source!r}")
    target = set(target_keys)
    out: tp.Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = re.sub(r"parametrizations\.weight\.(original[01])$", lambda m: _WN[m.group(1)], key)
        if source == "hf":
            k = re.sub(r"^(encoder|decoder)\.layers\.", r"\1.model.", k)
            k = re.sub(r"^quantizer\.layers\.(\d+)\.codebook\.", r"quantizer.vq.layers.\1._codebook.", k)
            if not k.startswith("quantizer.") and ".lstm." not in k:
                plain = re.sub(r"\.conv\.(?=[^.]+$)", ".conv.conv.", k)
                k = plain if plain in target else re.sub(r"\.conv\.(?=[^.]+$)", ".convtr.convtr.", k)
        out[k] = value
    return out


def _load_mapped(codec: Codec, state: tp.Mapping[str, torch.Tensor], source: str, where: str) -> Codec:
    from vmas.loading import load_state_dict_strict

    mapped = convert_state_dict(state, source, codec.state_dict().keys())
    return load_state_dict_strict(codec, mapped, f"{where}: codec weights do not fit the architecture in its own "
                                  "config", fix="the file is corrupt or not an EnCodec checkpoint").eval()


# --------------------------------------------------------------------------------------------- HF transformers
def hf_config_to_kwargs(config: tp.Any) -> tp.Dict[str, tp.Any]:
    """transformers ``EncodecConfig`` -> :class:`Codec` kwargs (the 32 kHz model uses all codebooks: 2.2 kbps)."""
    if config.normalize or config.chunk_length_s or config.norm_type != "weight_norm":
        raise CheckpointError(f"HF EnCodec with normalize={config.normalize}, chunk_length_s={config.chunk_length_s},"
                              f" norm_type={config.norm_type} is not supported: use the 32 kHz MusicGen codec")
    if (config.codebook_dim or config.hidden_size) != config.hidden_size:
        raise CheckpointError("HF EnCodec with codebook_dim != hidden_size is not supported")
    return dict(sample_rate=config.sampling_rate, channels=config.audio_channels, n_filters=config.num_filters,
                ratios=list(config.upsampling_ratios), dimension=config.hidden_size,
                n_residual_layers=config.num_residual_layers, lstm=config.num_lstm_layers, n_q=config.num_quantizers,
                bins=config.codebook_size, causal=config.use_causal_conv, pad_mode=config.pad_mode,
                true_skip=not config.use_conv_shortcut, compress=config.compress, kernel_size=config.kernel_size,
                last_kernel_size=config.last_kernel_size, residual_kernel_size=config.residual_kernel_size,
                dilation_base=config.dilation_growth_rate)


def load_hf_codec(name_or_folder: str) -> Codec:
    """transformers ``EncodecModel`` (hub name in the local cache, or a folder) -> :class:`Codec`."""
    from transformers import EncodecModel

    from vmas.loading import hf_pretrained

    hf = hf_pretrained(EncodecModel, name_or_folder, "codec",
                       fix=f"download it with `huggingface-cli download {name_or_folder}` (or save_pretrained to a "
                           "folder) and set model.codec.pretrained to it")
    codec = Codec(**hf_config_to_kwargs(hf.config))
    return _load_mapped(codec, hf.state_dict(), "hf", name_or_folder)


# ------------------------------------------------------------------------------------------------- audiocraft
def audiocraft_cfg_to_kwargs(xp_cfg: tp.Any, where: str) -> tp.Dict[str, tp.Any]:
    """audiocraft ``xp.cfg`` (YAML string or dict; sections ``seanet``, ``rvq``, ``encodec``) -> Codec kwargs."""
    cfg = yaml.safe_load(xp_cfg) if isinstance(xp_cfg, str) else dict(xp_cfg)
    try:
        seanet, rvq = dict(cfg["seanet"]), dict(cfg["rvq"])
        sample_rate, channels = int(cfg["sample_rate"]), int(cfg["channels"])
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{where}: 'xp.cfg' lacks {err} (seanet/rvq/sample_rate/channels): not an audiocraft "
                              f"EnCodec export") from None
    encodec = dict(cfg.get("encodec") or {})
    if encodec.get("renormalize") or seanet.get("norm", "weight_norm") != "weight_norm" \
            or seanet.get("disable_norm_outer_blocks", 0) or seanet.get("activation", "ELU") != "ELU":
        raise CheckpointError(f"{where}: only weight-norm ELU SEANet without renormalisation is supported "
                              f"(MusicGen's encodec_32khz)")
    return dict(sample_rate=sample_rate, channels=channels, n_filters=seanet["n_filters"],
                ratios=list(seanet["ratios"]), dimension=seanet["dimension"],
                n_residual_layers=seanet["n_residual_layers"], lstm=seanet["lstm"], n_q=rvq["n_q"], bins=rvq["bins"],
                causal=seanet.get("causal", False), pad_mode=seanet.get("pad_mode", "constant"),
                true_skip=seanet.get("true_skip", True), compress=seanet.get("compress", 2),
                kernel_size=seanet.get("kernel_size", 7), last_kernel_size=seanet.get("last_kernel_size", 7),
                residual_kernel_size=seanet.get("residual_kernel_size", 3),
                dilation_base=seanet.get("dilation_base", 2), decay=rvq.get("decay", 0.99),
                threshold_ema_dead_code=rvq.get("threshold_ema_dead_code", 2))


def load_audiocraft_codec(pkg: tp.Mapping[str, tp.Any], where: str) -> Codec:
    """audiocraft ``compression_state_dict.bin`` content -> :class:`Codec`.

    Exported files hold ``best_state`` = the model state dict; raw solver checkpoints hold ``{'model': ...}``
    there. A file exported with ``export_pretrained_compression_model`` only names a pretrained codec
    (``{'pretrained': 'facebook/encodec_32khz'}``), which we follow.
    """
    if "pretrained" in pkg and "best_state" not in pkg:
        return load_pretrained_codec(str(pkg["pretrained"]))
    if "xp.cfg" not in pkg:
        raise CheckpointError(f"{where}: audiocraft codec file without 'xp.cfg': re-export it with "
                              f"audiocraft.utils.export.export_encodec")
    state = pkg["best_state"]
    if "model" in state and isinstance(state["model"], tp.Mapping):
        state = state["model"]
    codec = Codec(**audiocraft_cfg_to_kwargs(pkg["xp.cfg"], where))
    return _load_mapped(codec, state, "audiocraft", where)


# ----------------------------------------------------------------------------------------------- our own files
def save_codec(codec: Codec, path: tp.Union[str, os.PathLike], **extra: tp.Any) -> None:
    """Inference-ready codec file: constructor kwargs + state dict (+ metrics/config in ``extra``)."""
    from vmas.utils import atomic_save

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"format": CODEC_FORMAT, "version": 1, "kwargs": dict(codec.kwargs, kmeans_init=False),
                 "state_dict": codec.state_dict(), **extra}, path)


def load_codec(path: tp.Union[str, os.PathLike]) -> Codec:
    """Load a file written by :func:`save_codec` (``tools/train_codec.py --out``)."""
    pkg = _torch_load(Path(path))
    if pkg.get("format") != CODEC_FORMAT:
        raise CheckpointError(f"{path}: not a vmas codec file (no format={CODEC_FORMAT!r}); write one with "
                              f"tools/train_codec.py or pass it as model.codec.pretrained to auto-detect")
    return _load_own(pkg, str(path))


def _load_own(pkg: tp.Mapping[str, tp.Any], where: str) -> Codec:
    from vmas.loading import load_state_dict_strict

    codec = Codec(**pkg["kwargs"])
    return load_state_dict_strict(codec, pkg["state_dict"], f"{where}: codec weights do not match their saved "
                                  "kwargs").eval()


def _torch_load(path: Path) -> tp.Dict[str, tp.Any]:
    from vmas.loading import torch_load

    pkg = torch_load(path, "codec checkpoint")
    if not isinstance(pkg, dict):
        raise CheckpointError(f"{path}: codec checkpoint must be a dict, got {type(pkg).__name__}")
    return pkg


# ------------------------------------------------------------------------------------------------- dispatcher
def load_pretrained_codec(source: str) -> Codec:
    """Load a codec from a hub name, an HF folder, an audiocraft file/folder, or our own codec file."""
    path = Path(source).expanduser()
    if path.is_dir():
        if _is_hf_encodec_config(path / "config.json"):
            return load_hf_codec(str(path))
        if (path / "compression_state_dict.bin").is_file():
            path = path / "compression_state_dict.bin"
        else:
            raise CheckpointError(f"{path}: folder has neither an EncodecModel config.json (HF) nor "
                                  f"compression_state_dict.bin (audiocraft)")
    if path.is_file():
        pkg = _torch_load(path)
        if pkg.get("format") == CODEC_FORMAT:
            return _load_own(pkg, str(path))
        if "best_state" in pkg or "pretrained" in pkg:
            return load_audiocraft_codec(pkg, str(path))
        raise CheckpointError(f"{path}: unknown codec checkpoint (expected audiocraft 'best_state'/'xp.cfg' or a "
                              f"vmas codec file)")
    if looks_like_local_path(source):
        raise CheckpointError(f"codec checkpoint '{source}' does not exist: train one with tools/train_codec.py "
                              f"or point model.codec.pretrained at an existing file")
    return _load_hub(source)


def _is_hf_encodec_config(path: Path) -> bool:
    """A transformers ``config.json`` of an EncodecModel (a MusicGen repo's config.json is not one)."""
    import json

    try:
        return json.loads(path.read_text()).get("model_type") == "encodec"
    except (OSError, ValueError):
        return False


def looks_like_local_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.endswith((".bin", ".pt", ".th", ".ckpt")) \
        or source.count("/") != 1


def _load_hub(name: str) -> Codec:
    """Hub repo: an HF EncodecModel (``facebook/encodec_32khz``) or an audiocraft repo with
    ``compression_state_dict.bin`` (``facebook/musicgen-medium``); both must already be in the local HF cache."""
    from huggingface_hub import hf_hub_download

    from vmas.loading import offline_if_unreachable

    offline_if_unreachable()  # an unreachable hub would be retried for ~25 s per file below
    for filename in ("config.json", "compression_state_dict.bin"):
        try:
            found = hf_hub_download(name, filename)
        except Exception:  # noqa: BLE001 - offline / missing file / unknown repo all mean "try the next layout"
            continue
        if filename == "config.json":
            if _is_hf_encodec_config(Path(found)):
                return load_hf_codec(name)
            continue
        return load_audiocraft_codec(_torch_load(Path(found)), f"{name}/{filename}")
    raise CheckpointError(f"codec '{name}' is not in the local Hugging Face cache and the hub is unreachable: run "
                          f"`huggingface-cli download {name}` on a machine with network (cache: ~/.cache/huggingface) "
                          f"or set model.codec.pretrained to a local folder / compression_state_dict.bin")
