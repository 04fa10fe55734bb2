"""Scores of the real-music testbed (issue 32; ``tools/realmusic_benchmark.py`` declares the runs around them).

RealMusic-MV clips (``datasets/realmusic_mv.py``) carry their truth in their labels: every onset detected in the
clip's real music (the picture's events sit there) and the soundtrack (class). Here: reading those clips, the codec's
reconstruction report against plain baselines of its bit rate (mu-law PCM, quantised mel + Griffin-Lim), the
soundtrack judge, the mismatched-music permutation and the per-class FAD columns. FAD uses the weight-free
mel-statistics backbone (``FAD_NOTE``): a relative number inside this benchmark only.
"""
from __future__ import annotations

import json
import sys
import typing as tp
from pathlib import Path

import numpy as np

SR = 32000  # every clip, codec and measure here runs at the codec's 32 kHz


# ------------------------------------------------------------------------------------------------------ data
def realmusic_clips(folder: tp.Union[str, Path], limit: int = 0) -> tp.List[tp.Dict[str, tp.Any]]:
    """One row per clip of a RealMusic-MV folder (``manifest.jsonl``): ``id``, ``video``, ``class_id`` and
    ``events`` = every labelled onset (s), the truth the onset F1 compares with."""
    folder = Path(folder)
    rows = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
    clips = []
    for row in rows[: limit or None]:
        labels = json.loads((folder / row["labels"]).read_text())
        clips.append({"id": row["id"], "video": str((folder / row["path"]).resolve()), "class_id": labels["class_id"],
                      "events": list(labels["onsets"]), "tempo_bpm": labels["tempo_bpm"], "track": labels["track"]})
    return clips


def clip_audio(clip: dict, seconds: tp.Optional[float] = None) -> np.ndarray:
    """The clip's real music at 32 kHz, mono [N] (its first ``seconds`` if given)."""
    from vmas.data import media

    return media.read_audio(clip["video"], sr=SR, duration=seconds).numpy()


# ------------------------------------------------------------------------------------------------- measures
def si_sdr(est: np.ndarray, ref: np.ndarray) -> float:
    """Scale-invariant SDR (dB) of ``est`` against ``ref`` (Le Roux et al. 2019), both [N], means removed."""
    ref = np.asarray(ref, np.float64) - np.mean(ref)
    est = np.asarray(est, np.float64)[: ref.size] - np.mean(est[: ref.size])
    target = (est @ ref) / max(ref @ ref, 1e-12) * ref
    noise = est - target
    return float(10 * np.log10(max(target @ target, 1e-12) / max(noise @ noise, 1e-12)))


def mulaw_pcm(wav: np.ndarray, rate: int, bits: int) -> np.ndarray:
    """Plain PCM baseline: resample to ``rate`` Hz, mu-law quantise to ``bits`` bits, back to 32 kHz."""
    import librosa

    x = np.clip(librosa.resample(np.asarray(wav, np.float32), orig_sr=SR, target_sr=rate), -1, 1)
    mu = 255.0
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)  # [-1, 1]
    levels = 2 ** bits
    q = np.round((y + 1) / 2 * (levels - 1)) / (levels - 1) * 2 - 1
    x = np.sign(q) * ((1 + mu) ** np.abs(q) - 1) / mu
    return librosa.resample(x.astype(np.float32), orig_sr=rate, target_sr=SR)[: wav.size]


def mel_griffin_lim(wav: np.ndarray, bands: int, bits: int, frame_rate: int = 50) -> np.ndarray:
    """Plain transform baseline: ``bands`` log-mel bands at ``frame_rate`` Hz, each value quantised to ``bits`` bits
    over the clip's top 60 dB (two floats of side information per clip), inverted with Griffin-Lim (32 iterations)."""
    import librosa

    hop = SR // frame_rate
    mel = librosa.feature.melspectrogram(y=np.asarray(wav, np.float32), sr=SR, n_fft=4 * hop, hop_length=hop,
                                         n_mels=bands)
    db = 10 * np.log10(np.maximum(mel, 1e-10))
    top = db.max()
    levels = 2 ** bits
    q = np.round(np.clip((db - (top - 60)) / 60, 0, 1) * (levels - 1)) / (levels - 1) * 60 + top - 60
    out = librosa.feature.inverse.mel_to_audio(10 ** (q / 10), sr=SR, n_fft=4 * hop, hop_length=hop, n_iter=32)
    return np.pad(out, (0, max(0, wav.size - out.size)))[: wav.size].astype(np.float32)


def fad(generated: tp.Sequence[np.ndarray], reference: tp.Sequence[np.ndarray]) -> float:
    """Mel-statistics FAD (weight-free backbone) between two sets of 32 kHz clips."""
    from vmas.metrics.embeddings import MelStatsEmbedder
    from vmas.metrics.fad import FrechetAudioDistance

    m = FrechetAudioDistance(MelStatsEmbedder())
    for w in reference:
        m.update_audio(w, SR, real=True)
    for w in generated:
        m.update_audio(w, SR, real=False)
    return float(m.compute())


FAD_NOTE = ("FAD with the weight-free mel-statistics backbone (mean/std of 64 VGGish log-mel bands per 0.96 s); "
            "a relative number inside this benchmark only, not comparable with VGGish FAD")


# ----------------------------------------------------------------------------------------------------- codec
def codec_report(codec_path: Path, clips: tp.Sequence[dict], cache_dir: tp.Optional[Path] = None
                 ) -> tp.Dict[str, tp.Any]:
    """Reconstruction scores of the codec and of plain baselines of its bit rate on ``clips`` (10 s each).

    With ``cache_dir`` each system's scores are saved as soon as they are computed, so a killed run keeps what it
    finished and a rerun computes only the rest. The codec's row is keyed by its weights and the clips; the baselines'
    rows by the bit rate, frame rate and clips only (they never touch the codec's weights), so comparing several codecs
    of one bit rate on the same clips computes the baselines once (Griffin-Lim is most of the cost)."""
    from vmas.codec_training import log_mel
    from vmas.experiments.scoring import codec_roundtrip
    from vmas.metrics.onsets import onset_f1, onset_times_10ms
    from vmas.models.codec import load_codec

    codec = load_codec(codec_path).eval()
    bitrate = codec.n_q * np.log2(codec.card) * codec.frame_rate
    rt = codec_roundtrip(codec)
    systems: tp.Dict[str, tp.Callable[[np.ndarray], np.ndarray]] = {"codec": rt}
    # plain baselines at the same bit rate (1600 bit/s for 4 x 256 codes at 50 Hz)
    for bits in (8, 4, 2):
        systems[f"mulaw_pcm_{int(bitrate // bits)}hz_{bits}bit"] = (
            lambda w, r=int(bitrate // bits), b=bits: mulaw_pcm(w, r, b))
    bands = 16
    gl_bits = int(bitrate // (bands * codec.frame_rate))
    systems[f"mel{bands}_{gl_bits}bit_griffinlim"] = lambda w: mel_griffin_lim(w, bands, gl_bits, codec.frame_rate)
    real = [clip_audio(c) for c in clips]
    out: tp.Dict[str, tp.Any] = {}
    caches: tp.Dict[str, tp.Optional[Path]] = {name: None for name in systems}
    if cache_dir is not None:
        from vmas.experiments.provenance import codec_record
        from vmas.experiments.runs import key_digest

        ids = [c["id"] for c in clips]
        codec_key = {"codec": codec_record(codec_path)["weights_sha256"], "clips": ids, "metric": "realmusic-codec-v1"}
        base_key = {"bitrate": float(bitrate), "frame_rate": float(codec.frame_rate), "clips": ids,
                    "metric": "realmusic-codec-baselines-v1"}
        codec_file = Path(cache_dir) / f"codec_scores_{key_digest(codec_key)}.json"
        base_file = Path(cache_dir) / f"codec_baselines_{key_digest(base_key)}.json"
        caches = {name: codec_file if name == "codec" else base_file for name in systems}
        for f in {codec_file, base_file}:
            if f.exists():
                out.update({k: v for k, v in json.loads(f.read_text()).items() if caches.get(k) == f})
    for name, fn in systems.items():
        if name in out:
            continue
        rec = [fn(w) for w in real]
        out[name] = {
            "mel_distance": float(np.mean([np.abs(log_mel(w, SR) - log_mel(r, SR)).mean() for w, r in zip(real, rec)])),
            "si_sdr_db": float(np.mean([si_sdr(r, w) for w, r in zip(real, rec)])),
            "onset_f1": float(np.mean([onset_f1(onset_times_10ms(r, SR), c["events"], tol=0.05)
                                       for r, c in zip(rec, clips)])),
            "fad_mel_vs_originals": fad(rec, real)}
        print(f"{name}: {out[name]}", file=sys.stderr)
        cache = caches[name]
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({k: v for k, v in out.items() if caches[k] == cache}, indent=1))
    out["bitrate_bps"] = float(bitrate)
    out["fad_note"] = FAD_NOTE
    return out


# -------------------------------------------------------------------------------------------------------- lm
class SoundtrackJudge:
    """kNN on ``vmas.synthmv.audio_features`` of real training-track audio: which soundtrack does music sound like?

    Trained on 5 s windows of the training split's clips plus their codec round trips (a model can only produce
    what its codec represents; the SynthMV judge does the same), saved as ``.npz`` for reuse."""

    @staticmethod
    def build(train: tp.Sequence[dict], roundtrip, window: float, cache: Path):
        from vmas.synthmv import SynthMVClassifier

        if cache.exists():
            return SynthMVClassifier.load(cache)
        n = round(window * SR)
        wavs, labels = [], []
        for c in train:
            full = clip_audio(c)
            for s in range(0, full.size - n + 1, n):
                piece = full[s: s + n]
                wavs += [piece, np.asarray(roundtrip(piece), np.float32)]
                labels += [c["class_id"]] * 2
        judge = SynthMVClassifier().fit(wavs, labels)
        cache.parent.mkdir(parents=True, exist_ok=True)
        judge.save(cache)
        return judge


def mismatch(clips: tp.Sequence[dict], seed: int) -> np.ndarray:
    """A permutation giving every clip the music of a test clip of another class (deterministic by ``seed``)."""
    rng = np.random.default_rng(seed)
    classes = np.array([c["class_id"] for c in clips])
    while True:
        perm = rng.permutation(len(clips))
        if np.all(classes[perm] != classes):
            return perm


def fad_by_class(wavs: tp.Sequence[np.ndarray], clips: tp.Sequence[dict],
                 refs: tp.Dict[int, tp.List[np.ndarray]]) -> tp.Dict[str, float]:
    """Mean over classes of FAD(music of the clips of class c, references of c) and of (.., references of the
    other classes pooled)."""
    same, other = [], []
    for c in sorted(refs):
        mine = [w for w, clip in zip(wavs, clips) if clip["class_id"] == c]
        same.append(fad(mine, refs[c]))
        other.append(fad(mine, [w for k, ws in refs.items() if k != c for w in ws]))
    return {"fad_same_class": float(np.mean(same)), "fad_other_class": float(np.mean(other))}


def score_set(wavs: tp.Sequence[np.ndarray], clips: tp.Sequence[dict], judge, refs, seconds: float
              ) -> tp.Dict[str, float]:
    """SynthMV's scores (onset F1, MV-Align, class accuracy) plus the per-class FAD columns of one set of music."""
    from vmas.experiments.scoring import score

    out = score(wavs, SR, clips, judge, seconds=seconds)
    out.update(fad_by_class(wavs, clips, refs))
    return out
