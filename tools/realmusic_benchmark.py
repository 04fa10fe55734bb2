"""Real-music testbed benchmark (issue 32): the codec's reconstruction, then motion-conditioned LMs, on held-out
tracks of RealMusic-MV (``datasets/realmusic_mv.py``; data, codec and shards: ``make realmusic-data``).

    python tools/realmusic_benchmark.py codec --json > docs/results/realmusic_codec.json
    python tools/realmusic_benchmark.py lm --train-seeds 0,1,2 --steps 800 --json > docs/results/realmusic.json
    python tools/realmusic_benchmark.py lm --train-only --train-seeds 0,1,2      # train the missing runs, stop

``codec``: every held-out test clip (10 s) through the codec and through plain baselines of the same bit rate
(``n_q * log2(card) * frame_rate`` bit/s): mu-law PCM at a low sample rate, and a quantised mel spectrogram inverted
with Griffin-Lim. Scores: log-mel L1 distance (the codec trainer's), SI-SDR (dB), onset F1 against the clip's
labelled onsets (+-50 ms) and FAD of the reconstructions against the originals with the weight-free mel-statistics
backbone (``vmas.metrics.embeddings.MelStatsEmbedder``: NOT comparable with VGGish FAD; flagged in the result).

``lm``: trains (or reuses: a run with ``model.pt`` is finished, ``vmas.experiments.runs``) one run per training
seed of ``configs/realmusic.yaml`` (motion condition), generates each test clip's first window from the picture
alone (no tags) and scores it (cached beside each model):

- ``onset_f1``: the generated music's onsets vs every onset detected in the clip's real music (+-50 ms);
- ``mv_align``: MV-Align (Farneback, AV-Align IoU) of generated music and the clip's picture;
- ``class_acc``: a kNN soundtrack classifier trained on real training-track audio (and its codec round trips, so
  codec artefacts alone do not change the class) vs the picture's soundtrack;
- ``fad_same_class`` / ``fad_other_class``: per class, mel-statistics FAD of the generated music of that class's
  clips against held-out real music (the selection split's tracks) of the same class / of the other classes,
  averaged over classes (weight-free backbone: a relative number only).

Rows: ``model`` ({mean, std} over training seeds), ``mismatched`` (each clip gets the real music of another test
clip of a different class), ``codec_ceiling`` (the clip's own music through the codec).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import typing as tp
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "realmusic"
SR = 32000


# ------------------------------------------------------------------------------------------------------ data
def load_clips(folder: tp.Union[str, Path], limit: int = 0) -> tp.List[tp.Dict[str, tp.Any]]:
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


def read_audio(clip: dict, seconds: tp.Optional[float] = None) -> np.ndarray:
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

    With ``cache_dir`` each system's scores are saved as soon as they are computed (keyed by the codec's weights and
    the clips), so a killed run keeps what it finished and a rerun computes only the rest."""
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
    real = [read_audio(c) for c in clips]
    out: tp.Dict[str, tp.Any] = {}
    cache = None
    if cache_dir is not None:
        from vmas.experiments.provenance import codec_record

        key = {"codec": codec_record(codec_path)["weights_sha256"], "clips": [c["id"] for c in clips],
               "metric": "realmusic-codec-v1"}
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        cache = Path(cache_dir) / f"codec_scores_{digest}.json"
        if cache.exists():
            out.update(json.loads(cache.read_text()))
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
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(out, indent=1))
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
            full = read_audio(c)
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
    from vmas.experiments.scoring import score

    out = score(wavs, SR, clips, judge, seconds=seconds)
    out.update(fad_by_class(wavs, clips, refs))
    return out


def lm_main(args) -> tp.Dict[str, tp.Any]:
    from vmas.config import load_config
    from vmas.evaluation import generate_windows
    from vmas.experiments import aggregate
    from vmas.experiments.provenance import codec_record
    from vmas.experiments.runs import TrainJob, cached_scores, run_dir, train_pool
    from vmas.experiments.scoring import codec_roundtrip
    from vmas.hub import load_model
    from vmas.models.codec import load_codec

    seeds = [int(x) for x in args.train_seeds.split(",") if x != ""]
    jobs = {s: TrainJob(run_dir(args.out, args.variant, s), args.config,
                        (f"optim.max_steps={args.steps}", f"train.seed={s}", *args.overrides)) for s in seeds}
    if not args.no_train and not args.baselines_only:
        train_pool(jobs.values(), args.jobs, poll_s=5.0)
    if args.train_only:
        return {}
    config = load_config(args.config, list(args.overrides))
    seconds = config.data.clip_seconds
    clips = load_clips(args.test, args.clips)
    codec = load_codec(ROOT / config.model.codec.pretrained).eval()
    roundtrip = codec_roundtrip(codec)
    train: tp.List[dict] = []
    for c in load_clips(args.train):  # the first --judge-clips of each class
        if sum(d["class_id"] == c["class_id"] for d in train) < args.judge_clips:
            train.append(c)
    judge = SoundtrackJudge.build(train, roundtrip, seconds,
                                  Path(args.out) / f"judge_{int(seconds * 1000)}ms_{args.judge_clips}.npz")
    refs: tp.Dict[int, tp.List[np.ndarray]] = {}
    for c in load_clips(args.reference):
        refs.setdefault(c["class_id"], []).append(read_audio(c))
    real = [read_audio(c, seconds) for c in clips]
    judge_real = float(np.mean(judge.predict(real, SR) == np.array([c["class_id"] for c in clips])))

    def model_scores(seed: int) -> tp.Dict[str, tp.Any]:
        path = jobs[seed].model

        def compute() -> tp.Dict[str, tp.Any]:
            pipe = load_model(path)
            runs = [score_set(generate_windows(pipe, clips, seed=args.seed + k, cfg_scale=args.cfg, top_k=args.top_k),
                              clips, judge, refs, seconds) for k in range(args.sample_seeds)]
            return aggregate.over_sampling_seeds(runs)

        key = {"clips": [c["id"] for c in clips], "seed": args.seed, "sample_seeds": args.sample_seeds,
               "cfg": args.cfg, "top_k": args.top_k, "reference": str(args.reference), "metric": "realmusic-v1"}
        return cached_scores(path, key, compute, args.rescore)

    def baselines() -> tp.Dict[str, tp.Any]:
        """``mismatched`` and ``codec_ceiling`` rows, cached in ``--out`` (they need no trained model)."""
        key = {"clips": [c["id"] for c in clips], "seed": args.seed, "reference": str(args.reference),
               "codec": codec_record(ROOT / config.model.codec.pretrained)["weights_sha256"],
               "judge": args.judge_clips, "metric": "realmusic-v1"}
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        cache = Path(args.out) / f"baselines_{digest}.json"
        if cache.exists() and not args.rescore:
            return json.loads(cache.read_text())
        perm = mismatch(clips, args.seed)
        rows = {"mismatched": score_set([real[j] for j in perm], clips, judge, refs, seconds),
                "codec_ceiling": score_set([roundtrip(w) for w in real], clips, judge, refs, seconds)}
        cache.write_text(json.dumps(rows, indent=1))
        return rows

    if args.baselines_only:
        return dict(baselines(), judge_acc_on_real_test=judge_real)
    per_model = [model_scores(s) for s in seeds]
    results: tp.Dict[str, tp.Any] = {
        "model": per_model[0] if len(seeds) == 1 else aggregate.over_training_seeds(per_model)}
    results.update(baselines())
    results["meta"] = aggregate.result_meta(
        "realmusic_benchmark", args.argv, {"codec": ROOT / config.model.codec.pretrained},
        training_seeds=seeds, steps=args.steps, config=args.config, overrides=list(args.overrides),
        test=str(args.test), clips=len(clips), window_seconds=seconds, sample_seeds=args.sample_seeds,
        cfg=args.cfg, top_k=args.top_k, judge_acc_on_real_test=judge_real, fad_reference=str(args.reference),
        fad_note=FAD_NOTE, mismatched="each clip gets the real music of a test clip of another class",
        spread="std over training seeds of each model's mean over sampling seeds")
    return results


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("codec", help="reconstruction on held-out tracks vs plain baselines of the same bit rate")
    c.add_argument("--codec", default=str(ROOT / "runs" / "realmusic" / "codec.pt"))
    c.add_argument("--test", default=str(DATA / "test"), help="RealMusic-MV folder of held-out clips")
    c.add_argument("--clips", type=int, default=0, help="first N clips (0 = all)")
    c.add_argument("--json", action="store_true")
    m = sub.add_parser("lm", help="train (or reuse) motion-conditioned LMs over training seeds and score them")
    m.add_argument("--config", default="configs/realmusic.yaml")
    m.add_argument("--variant", default="motion", help="run folder name under --out")
    m.add_argument("--out", default=str(ROOT / "runs" / "realmusic" / "lm"))
    m.add_argument("--train", default=str(DATA / "train"), help="clips the soundtrack judge is trained on")
    m.add_argument("--test", default=str(DATA / "test"))
    m.add_argument("--reference", default=str(DATA / "select"), help="held-out real music for the FAD columns")
    m.add_argument("--clips", type=int, default=0)
    m.add_argument("--steps", type=int, default=800)
    m.add_argument("--train-seeds", default="0,1,2")
    m.add_argument("--jobs", type=int, default=3, help="training processes at once (one thread each)")
    m.add_argument("--seed", type=int, default=0, help="first sampling seed (and the mismatch permutation)")
    m.add_argument("--sample-seeds", type=int, default=1)
    m.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's generation.cfg)")
    m.add_argument("--top-k", type=int, default=None)
    m.add_argument("--rescore", action="store_true")
    m.add_argument("--judge-clips", type=int, default=40, help="training clips per class the judge learns from")
    m.add_argument("--baselines-only", action="store_true",
                   help="score (and cache) the mismatched and codec-ceiling rows only; no model needed")
    m.add_argument("--train-only", action="store_true")
    m.add_argument("--no-train", action="store_true", help="score finished runs only")
    m.add_argument("--json", action="store_true")
    m.add_argument("overrides", nargs="*", help="config overrides for every run")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))
    if args.cmd == "codec":
        result = codec_report(Path(args.codec), load_clips(args.test, args.clips), Path(args.codec).parent)
        from vmas.experiments.aggregate import result_meta

        result["meta"] = result_meta("realmusic_benchmark", args.argv, {"codec": args.codec}, test=args.test,
                                     clips=len(load_clips(args.test, args.clips)), seconds_per_clip=10.0)
    else:
        result = lm_main(args)
        if args.train_only:
            return 0
    text = json.dumps(result, indent=1)
    print(text if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
