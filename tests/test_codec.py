"""Codec: shapes and numbers vs a hand-written RVQ, reference parity with transformers' EncodecModel, checkpoint
formats (HF folder, audiocraft compression_state_dict.bin, our own file), errors, and a train_codec smoke run."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vmas.builders import build_codec
from vmas.config import CodecConfig, load_config
from vmas.errors import CheckpointError, ConfigError
from vmas.models.codec import Codec, convert_state_dict, load_codec, save_codec

ROOT = Path(__file__).resolve().parent.parent


def debug_cfg() -> CodecConfig:
    return load_config(ROOT / "configs" / "debug.yaml").model.codec


@pytest.fixture(scope="module")
def debug_codec() -> Codec:
    torch.manual_seed(0)
    return build_codec(debug_cfg()).eval()


# --------------------------------------------------------------------------------------------- shapes/numbers
def test_encode_decode_match_hand_written_rvq(debug_codec):
    c = debug_codec
    assert (c.sample_rate, c.hop_length, c.frame_rate, c.n_q, c.card, c.dim) == (32000, 640, 50, 4, 64, 16)
    wav = torch.randn(2, 1, 2000) * 0.3  # 2000 samples -> padded to 2560 = 4 frames
    codes = c.encode(wav)
    assert codes.dtype == torch.long and codes.shape == (2, 4, 4)
    # hand RVQ: nearest codebook entry (Euclidean) of the residual, codebook after codebook
    books = c.codebooks()  # [K, card, D]
    with torch.no_grad():
        residual = c.encoder(torch.nn.functional.pad(wav, (0, 560))).transpose(1, 2)  # [B, T, D]
        quantized = torch.zeros_like(residual)
        for k in range(c.n_q):
            idx = torch.cdist(residual, books[k][None].expand(2, -1, -1)).argmin(-1)  # [B, T]
            assert torch.equal(idx, codes[:, k])
            residual = residual - books[k][idx]
            quantized = quantized + books[k][idx]
        expected = c.decoder(quantized.transpose(1, 2))
    out = c.decode(codes)
    assert out.shape == (2, 1, 4 * 640)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert codes.unique().numel() > 4, "a random codec must still give varied codes"


def test_padding_equals_explicit_zeros(debug_codec):
    wav = torch.randn(1, 1, 700)
    assert torch.equal(debug_codec.encode(wav), debug_codec.encode(torch.nn.functional.pad(wav, (0, 580))))


def test_codebooks_are_the_quantizer_embeddings_and_detached(debug_codec):
    books = debug_codec.codebooks()
    assert books.shape == (4, 64, 16) and not books.requires_grad
    for k, layer in enumerate(debug_codec.quantizer.vq.layers):
        assert torch.equal(books[k], layer._codebook.embed)
    books.zero_()  # a copy: the model is untouched
    assert debug_codec.quantizer.vq.layers[0]._codebook.embed.abs().sum() > 0


def test_training_forward_is_straight_through():
    c = Codec(n_filters=4, dimension=8, lstm=0, n_q=2, bins=16, kmeans_init=True, kmeans_iters=2).train()
    wav = torch.randn(2, 1, 1280)
    out = c(wav)
    assert out.recon.shape == wav.shape and out.codes.shape == (2, 2, 2)
    (out.recon.abs().mean() + out.commit_loss).backward()
    assert c.encoder.model[0].conv.conv.weight_v.grad.abs().sum() > 0  # gradient reaches the encoder


# ------------------------------------------------------------------------------------------- HF / audiocraft
@pytest.fixture(scope="module")
def hf_encodec(tmp_path_factory):
    """transformers EncodecModel with the 32 kHz MusicGen config, random weights + random codebooks, saved."""
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    config = EncodecConfig(sampling_rate=32000, upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[2.2],
                           num_filters=64, codebook_size=2048, use_causal_conv=False, normalize=False,
                           use_conv_shortcut=False)
    hf = EncodecModel(config).eval()
    wav = torch.randn(2, 1, 6400) * 0.1
    with torch.no_grad():
        # HF initialises codebooks to zeros: draw them at the scale of each stage's residual so codes vary
        residual = hf.encoder(wav).transpose(1, 2).reshape(-1, 128)  # [B*T, D]
        for layer in hf.quantizer.layers:
            layer.codebook.embed.copy_(torch.randn(2048, 128) * residual.std(0) + residual.mean(0))
            residual = residual - layer.codebook.embed[torch.cdist(residual, layer.codebook.embed).argmin(-1)]
    folder = tmp_path_factory.mktemp("hf_encodec")
    hf.save_pretrained(folder)
    with torch.no_grad():
        codes = hf.encode(wav).audio_codes[0]  # [B, K, T]
        audio = hf.decode(codes[None], [None]).audio_values  # [B, 1, N]
    return folder, wav, codes, audio


def test_hf_parity(hf_encodec):
    folder, wav, codes, audio = hf_encodec
    ours = build_codec(CodecConfig(pretrained=str(folder)))
    assert (ours.sample_rate, ours.frame_rate, ours.hop_length, ours.n_q, ours.card, ours.dim) == \
        (32000, 50, 640, 4, 2048, 128)
    got = ours.encode(wav)
    assert all(codes[:, k].unique().numel() > 5 for k in range(4)), "codes must vary for the test to mean much"
    assert torch.equal(got, codes)
    torch.testing.assert_close(ours.decode(got), audio, rtol=0, atol=1e-5)


def _write_audiocraft(codec: Codec, path: Path, parametrized: bool = False) -> None:
    """audiocraft's export_encodec layout: best_state = model state dict, xp.cfg = YAML of the solver config."""
    kw = codec.kwargs
    state = codec.state_dict()
    if parametrized:  # newer torch weight-norm names
        state = {k.replace("weight_g", "parametrizations.weight.original0")
                  .replace("weight_v", "parametrizations.weight.original1"): v for k, v in state.items()}
    xp_cfg = {
        "sample_rate": kw["sample_rate"], "channels": kw["channels"],
        "encodec": {"autoencoder": "seanet", "quantizer": "rvq", "renormalize": False},
        "seanet": {"dimension": kw["dimension"], "channels": kw["channels"], "causal": kw["causal"],
                   "n_filters": kw["n_filters"], "n_residual_layers": kw["n_residual_layers"], "ratios": kw["ratios"],
                   "activation": "ELU", "activation_params": {"alpha": 1.0}, "norm": "weight_norm",
                   "kernel_size": 7, "residual_kernel_size": 3, "last_kernel_size": 7, "dilation_base": 2,
                   "pad_mode": kw["pad_mode"], "true_skip": kw["true_skip"], "compress": 2, "lstm": kw["lstm"],
                   "disable_norm_outer_blocks": 0},
        "rvq": {"n_q": kw["n_q"], "bins": kw["bins"], "decay": 0.99, "kmeans_init": True, "kmeans_iters": 50,
                "threshold_ema_dead_code": 2, "q_dropout": False},
    }
    torch.save({"best_state": state, "xp.cfg": yaml.safe_dump(xp_cfg), "version": "1.0.0", "exported": True}, path)


@pytest.mark.parametrize("parametrized", [False, True])
def test_audiocraft_format_round_trip(hf_encodec, tmp_path, parametrized):
    folder, wav, codes, audio = hf_encodec
    from_hf = build_codec(CodecConfig(pretrained=str(folder)))
    ckpt = tmp_path / "compression_state_dict.bin"
    _write_audiocraft(from_hf, ckpt, parametrized)
    for source in (ckpt, tmp_path)[: 1 if parametrized else 2]:  # the file, or the folder that holds it
        ours = build_codec(CodecConfig(pretrained=str(source)))
        assert torch.equal(ours.encode(wav), codes)
        torch.testing.assert_close(ours.decode(codes), audio, rtol=0, atol=1e-5)


def test_audiocraft_pretrained_pointer(hf_encodec, tmp_path):
    """export_pretrained_compression_model writes only {'pretrained': name}: we follow the name."""
    folder, wav, codes, _ = hf_encodec
    torch.save({"pretrained": str(folder)}, tmp_path / "compression_state_dict.bin")
    assert torch.equal(build_codec(CodecConfig(pretrained=str(tmp_path))).encode(wav), codes)


def test_convert_state_dict_hf_names():
    ours = Codec(n_filters=4, dimension=8, lstm=1, n_q=2, bins=16)
    hf_keys = {"encoder.layers.0.conv.parametrizations.weight.original0": "encoder.model.0.conv.conv.weight_g",
               "encoder.layers.1.block.1.conv.bias": "encoder.model.1.block.1.conv.conv.bias",
               "encoder.layers.13.lstm.weight_hh_l0": "encoder.model.13.lstm.weight_hh_l0",
               "decoder.layers.3.conv.parametrizations.weight.original1": "decoder.model.3.convtr.convtr.weight_v",
               "decoder.layers.0.conv.bias": "decoder.model.0.conv.conv.bias",
               "quantizer.layers.1.codebook.embed_avg": "quantizer.vq.layers.1._codebook.embed_avg"}
    mapped = convert_state_dict({k: torch.zeros(1) for k in hf_keys}, "hf", ours.state_dict().keys())
    assert sorted(mapped) == sorted(hf_keys.values())
    assert set(mapped) <= set(ours.state_dict())


# ------------------------------------------------------------------------------------------------ own format
def test_own_format_round_trip(debug_codec, tmp_path):
    path = tmp_path / "codec.pt"
    save_codec(debug_codec, path, metrics={"x": 1})
    wav = torch.randn(1, 1, 3200)
    for loaded in (load_codec(path), build_codec(dataclasses.replace(debug_cfg(), pretrained=str(path)))):
        assert torch.equal(loaded.encode(wav), debug_codec.encode(wav))
        assert torch.equal(loaded.codebooks(), debug_codec.codebooks())


def test_errors(debug_codec, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        build_codec(CodecConfig(pretrained=str(tmp_path / "nope" / "compression_state_dict.bin")))
    with pytest.raises(CheckpointError, match="huggingface-cli download facebook/encodec_32khz"):
        build_codec(CodecConfig(pretrained="facebook/encodec_32khz"))  # not cached, hub offline
    bad = tmp_path / "bad.bin"
    torch.save({"something": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="unknown codec checkpoint"):
        build_codec(CodecConfig(pretrained=str(bad)))
    with pytest.raises(CheckpointError, match="not a vmas codec file"):
        load_codec(bad)
    path = tmp_path / "codec.pt"
    save_codec(debug_codec, path)
    with pytest.raises(ConfigError, match="model.codec.n_q/bins"):  # debug codec has 64 bins, defaults say 2048
        build_codec(CodecConfig(pretrained=str(path)))


# ------------------------------------------------------------------------------------------------ train_codec
def test_onset_f1_by_hand():
    from vmas.metrics.onsets import onset_f1

    # 0.10~0.12 and 1.00~1.04 match within 50 ms, 0.50 vs 0.58 does not: F1 = 2*2 / (3 + 4)
    assert onset_f1(np.array([0.1, 0.5, 1.0]), np.array([0.12, 0.58, 1.04, 2.0])) == pytest.approx(4 / 7)
    assert onset_f1(np.array([]), np.array([])) == 1.0
    # one estimate cannot match two references
    assert onset_f1(np.array([0.10, 0.11]), np.array([0.105])) == pytest.approx(2 / 3)


def test_train_codec_smoke(tmp_path):
    import soundfile as sf

    from vmas.codec_training import synth_clip

    def main(argv):  # the script as a user runs it
        return subprocess.run([sys.executable, str(ROOT / "tools" / "train_codec.py"), *argv],
                              capture_output=True, text=True).returncode

    rng = np.random.default_rng(0)
    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(4):
        sf.write(audio / f"clip{i}.wav", synth_clip(rng, 1.5, 16000), 16000)  # resampled to 32 kHz on read
    out = tmp_path / "codec.pt"
    rc = main(["--config", str(ROOT / "configs" / "codec_synthmv.yaml"), "--audio-dir", str(audio), "--out", str(out),
               "--steps", "25", "model.codec.n_filters=4", "model.codec.lstm=0", "model.codec.bins=32",
               "data.batch_size=2", "data.clip_seconds=0.4", "optim.warmup_steps=1", "train.log_every=100"])
    assert rc == 0
    pkg = torch.load(out, weights_only=True)
    m = pkg["metrics"]
    assert m["steps"] == 25 and m["loss_last"] < m["loss_first"]
    assert 0.0 <= m["after"]["onset_f1"] <= 1.0 and m["after"]["mel_distance"] > 0
    codec = load_codec(out)
    assert (codec.n_q, codec.card) == (4, 32)
    cfg = dataclasses.replace(debug_cfg(), pretrained=str(out), bins=32)
    assert torch.equal(build_codec(cfg).codebooks(), codec.codebooks())
