"""Train a small EnCodec (same architecture as MusicGen's, small widths) on a folder of audio, on the CPU.

``tools/train_codec.py`` is the command line; this module is the library behind it (and what tests import).

Losses: multi-scale log-mel L1 + waveform L1 + RVQ commitment; codebooks are EMA-updated with k-means init and
dead-code replacement (the ``encodec`` quantizer). No adversarial terms: on simple synthetic music the
reconstruction losses suffice and they keep a CPU run short. Training uses random crops of ``data.clip_seconds``.
The learning rate is the project's one schedule (:func:`vmas.solvers.optim.lr_factor`): linear warm-up, then a half
cosine to ``optim.min_lr_ratio`` at the end of the step budget. ``min_lr_ratio: 1.0`` keeps it constant (the shipped
SynthMV codec was trained so); a decay lets the last weights settle, so the codec's quality does not depend
on where in the loss's noise the budget happens to end.
At the end the held-out files are encoded/decoded whole and scored: log-mel distance and onset F1
(:func:`vmas.metrics.onsets.onset_f1`, ±50 ms) of reconstructions vs originals. The output file (kwargs + state
dict + config + metrics) loads with ``vmas.models.codec.load_codec(path)`` or as ``model.codec.pretrained``.
"""
from __future__ import annotations

import time
import typing as tp
from pathlib import Path

import numpy as np
import torch
import torchaudio
from torch import nn

from vmas.alignment import onset_times
from vmas.builders import build_codec_to_train
from vmas.config import Config, config_to_dict
from vmas.data import media
from vmas.errors import DataError
from vmas.metrics.onsets import onset_f1
from vmas.models.codec import Codec, save_codec
from vmas.solvers.optim import lr_factor
from vmas.utils import seed_everything

AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".mp4", ".m4a", ".mkv", ".webm")


# ------------------------------------------------------------------------------------------------------ data
def synth_clip(rng: np.random.Generator, seconds: float, sample_rate: int) -> np.ndarray:
    """Procedural 'music': a tempo grid of percussive clicks/noise bursts plus enveloped harmonic notes."""
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    out = np.zeros(n, np.float32)
    bpm = rng.uniform(80, 160)
    beat = 60.0 / bpm
    base = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    onset = rng.uniform(0, beat)
    while onset < seconds:
        i = int(onset * sample_rate)
        if rng.random() < 0.5:  # drum: decaying noise burst
            m = min(n - i, int(0.08 * sample_rate))
            out[i:i + m] += 0.5 * rng.standard_normal(m) * np.exp(-np.arange(m) / (0.015 * sample_rate))
        f0 = base * 2 ** (rng.choice(scale) / 12) * rng.choice([1, 2])
        m = min(n - i, int(beat * sample_rate))
        env = np.exp(-np.arange(m) / (0.25 * beat * sample_rate))
        tt = t[:m]
        note = sum(np.sin(2 * np.pi * f0 * h * tt) / h for h in (1, 2, 3))
        out[i:i + m] += 0.3 * env * note
        onset += beat * rng.choice([0.5, 1.0, 1.0, 2.0])
    return (out / max(1.0, np.abs(out).max() / 0.9)).astype(np.float32)


def load_dataset(audio_dir: tp.Optional[str], synthetic: int, sample_rate: int, seed: int,
                 max_files: int) -> tp.Tuple[tp.List[np.ndarray], tp.List[str]]:
    if synthetic:
        rng = np.random.default_rng(seed)
        return [synth_clip(rng, 5.0, sample_rate) for _ in range(synthetic)], [f"synth_{i}" for i in range(synthetic)]
    root = Path(audio_dir)
    if not root.is_dir():
        raise DataError(f"--audio-dir {root} is not a folder (generate SynthMV with `python -m datasets.synthmv`)")
    by_stem: tp.Dict[Path, Path] = {}
    for p in sorted(root.rglob("*")):  # clip.wav beside clip.mp4 (SynthMV --wav): read the wav only
        if p.suffix.lower() in AUDIO_EXTS:
            prev = by_stem.get(p.with_suffix(""))
            if prev is None or AUDIO_EXTS.index(p.suffix.lower()) < AUDIO_EXTS.index(prev.suffix.lower()):
                by_stem[p.with_suffix("")] = p
    files = sorted(by_stem.values())[:max_files]
    if not files:
        raise DataError(f"{root}: no audio files ({', '.join(AUDIO_EXTS)})")
    clips, names = [], []
    for p in files:
        wav = media.read_audio(p, sr=sample_rate).numpy()  # mono float32 [N]
        if wav.size and np.abs(wav).max() > 1e-4:
            clips.append(wav)
            names.append(str(p.relative_to(root)))
    if not clips:
        raise DataError(f"{root}: every audio file is empty or silent")
    return clips, names


def random_crops(clips: tp.Sequence[np.ndarray], batch: int, length: int, rng: np.random.Generator) -> torch.Tensor:
    """[B, 1, length] random crops (short clips are zero-padded); silent crops are re-drawn a few times."""
    out = np.zeros((batch, 1, length), np.float32)
    for b in range(batch):
        for _ in range(4):
            wav = clips[rng.integers(len(clips))]
            start = rng.integers(0, max(1, wav.size - length + 1))
            crop = wav[start:start + length]
            if np.abs(crop).max() > 1e-3:
                break
        out[b, 0, :crop.size] = crop
    return torch.from_numpy(out)


# ---------------------------------------------------------------------------------------------------- losses
class MultiScaleMelLoss(nn.Module):
    """Mean L1 between log-mel spectrograms at several STFT sizes (audiocraft's ``mel`` / ``msspec`` idea)."""

    def __init__(self, sample_rate: int, n_ffts: tp.Sequence[int] = (256, 512, 1024, 2048), n_mels: int = 64):
        super().__init__()
        self.mels = nn.ModuleList(
            torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n, hop_length=n // 4, n_mels=min(n_mels, n // 8),
                                                 f_min=0.0, power=1.0, center=True) for n in n_ffts)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # [B, 1, N] each
        total = x.new_zeros(())
        for mel in self.mels:
            mx, my = mel(x), mel(y)  # [B, 1, n_mels, frames]
            total = total + (torch.log10(mx.clamp_min(1e-5)) - torch.log10(my.clamp_min(1e-5))).abs().mean()
        return total / len(self.mels)


def log_mel(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    import librosa

    mel = librosa.feature.melspectrogram(y=wav, sr=sample_rate, n_fft=1024, hop_length=256, n_mels=64)
    return np.log10(np.maximum(mel, 1e-5))


@torch.no_grad()
def evaluate_codec(codec: Codec, clips: tp.Sequence[np.ndarray], max_seconds: float = 5.0) -> tp.Dict[str, float]:
    """Encode/decode each held-out clip (first ``max_seconds``); log-mel L1 distance and onset F1 vs original."""
    codec.eval()
    sr = codec.sample_rate
    mel_d, f1s, used = [], [], [set() for _ in range(codec.n_q)]
    for wav in clips:
        wav = wav[: int(max_seconds * sr)]
        codes = codec.encode(torch.from_numpy(wav)[None, None])  # [1, K, T]
        for k in range(codec.n_q):
            used[k].update(codes[0, k].tolist())
        rec = codec.decode(codes)[0, 0, : wav.size].numpy()  # [N]
        mel_d.append(float(np.abs(log_mel(wav, sr) - log_mel(rec, sr)).mean()))
        f1s.append(onset_f1(onset_times(rec, sr), onset_times(wav, sr), tol=0.05))  # librosa's default hop 512
    return {"mel_distance": float(np.mean(mel_d)), "onset_f1": float(np.mean(f1s)),
            "codebook_usage": float(np.mean([len(u) / codec.card for u in used]))}


# ----------------------------------------------------------------------------------------------------- train
def train_codec(cfg: Config, clips: tp.List[np.ndarray], names: tp.List[str], out: Path, steps: int,
          minutes: tp.Optional[float],
          eval_count: int, log: tp.Callable[[str], None] = print) -> tp.Dict[str, tp.Any]:
    seed_everything(cfg.train.seed)
    rng = np.random.default_rng(cfg.train.seed)
    c = cfg.model.codec
    codec = build_codec_to_train(c)
    n_eval = min(eval_count, max(1, len(clips) // 10)) if len(clips) > 1 else 0
    train_clips, eval_clips = clips[n_eval:], (clips[:n_eval] or clips[:1])
    crop = int(round(cfg.data.clip_seconds * c.sample_rate))
    crop -= crop % codec.hop_length
    mel_loss = MultiScaleMelLoss(c.sample_rate)
    opt = torch.optim.AdamW(codec.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                            weight_decay=cfg.optim.weight_decay)
    warm, floor = max(1, cfg.optim.warmup_steps), cfg.optim.min_lr_ratio
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warm, steps, floor))  # decays over the budget
    log(f"codec: {sum(p.numel() for p in codec.parameters()) / 1e6:.2f} M params, {c.n_q} x {c.bins} codes, "
        f"{len(train_clips)} train / {len(eval_clips)} eval clips, crops of {crop / c.sample_rate:.2f} s")
    before = evaluate_codec(codec, eval_clips)
    codec.train()
    history: tp.List[float] = []
    t0 = time.time()
    step, lr_last = 0, None  # lr_last: the rate of the last update (None: no update ran)
    # A wall-clock cap (``minutes``) makes the codec, and every number downstream of it, depend on the machine's
    # load (issue 36: 700 steps instead of 1650 on a loaded box); it is a debugging aid, never a published budget.
    while step < steps and (minutes is None or (time.time() - t0) < minutes * 60):
        wav = random_crops(train_clips, cfg.data.batch_size, crop, rng)  # [B, 1, N]
        o = codec(wav)
        l_mel = mel_loss(o.recon, wav)
        l_wav = (o.recon - wav).abs().mean()
        loss = l_mel + l_wav + c.commitment_weight * o.commit_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(codec.parameters(), cfg.optim.grad_clip)
        lr_last = opt.param_groups[0]["lr"]  # the rate this update used
        opt.step()
        sched.step()
        history.append(loss.item())
        step += 1
        if step % max(1, cfg.train.log_every) == 0 or step == 1:
            log(f"step {step:5d}  {time.time() - t0:6.0f}s  loss {loss.item():.4f}  mel {l_mel.item():.4f}  "
                f"wav {l_wav.item():.4f}  commit {o.commit_loss.item():.4f}")
    after = evaluate_codec(codec, eval_clips)
    k = max(1, min(20, len(history) // 5))
    result = {"steps": step, "budget": "steps" if step >= steps else "minutes", "seconds": round(time.time() - t0, 1),
              "lr_last": lr_last, "loss_first": float(np.mean(history[:k])),
              "loss_last": float(np.mean(history[-k:])), "before": before, "after": after,
              "eval_clips": names[:n_eval] if n_eval else names[:1]}
    save_codec(codec, out, config=config_to_dict(cfg), codec_config=config_to_dict(c), metrics=result)
    log(f"saved {out}: mel distance {before['mel_distance']:.3f} -> {after['mel_distance']:.3f}, onset F1 "
        f"{before['onset_f1']:.3f} -> {after['onset_f1']:.3f}, codebook usage {after['codebook_usage']:.2f}")
    return result
