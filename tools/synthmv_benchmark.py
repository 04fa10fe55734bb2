"""The paper's ablation in miniature, on SynthMV where the truth is known (issue 10).

Trains (or reuses) three variants with the same seed and step budget, then ALWAYS regenerates music for held-out
SynthMV videos and re-scores it:

- ``ar_only``      plain autoregressive loss (``loss.contrastive_weight=0``, ``loss.beat_lambda=1``)
- ``contrastive``  + video-music contrastive loss (``loss.beat_lambda=1``)
- ``full``         + contrastive + beat-weighted loss (``configs/synthmv_tiny.yaml`` as is)
- ``random``       baseline: the real music of a different held-out clip (right kind of audio, wrong video)
- ``codec_ceiling``   the clip's own music encoded and decoded by the codec: the best any LM on these codes can do

Scores per variant: MV-Align (``vmas.metrics.MVAlign``, Farneback, AV-Align IoU), onset-to-event F1 (±50 ms, the
clip's labelled visual events), class accuracy (SynthMV classifier on the generated audio vs the video's class),
video->music retrieval R@1 over the held-out pairs (model's contrastive heads; ``ar_only`` has none, so it is
scored with freshly initialised heads = chance, and says so).

    python tools/synthmv_benchmark.py --json                 # train missing variants, generate, score
    python tools/synthmv_benchmark.py --json --retrain       # force training
Prerequisites (see configs/synthmv_tiny.yaml): SynthMV train/test folders, the SynthMV codec, train shards.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import typing as tp
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS: tp.Dict[str, tp.List[str]] = {
    "ar_only": ["loss.contrastive_weight=0.0", "loss.beat_lambda=1.0"],
    "contrastive": ["loss.beat_lambda=1.0"],
    "full": [],
}


def train_variants(config: str, out_root: Path, steps: int, names: tp.Sequence[str], retrain: bool,
                   extra: tp.Sequence[str]) -> tp.Dict[str, Path]:
    """Train the missing variants in parallel (one thread each), return {name: model.pt}."""
    procs, paths = {}, {}
    for name in names:
        out = out_root / name
        paths[name] = out / "model.pt"
        if paths[name].exists() and not retrain:
            continue
        if out.exists():
            shutil.rmtree(out)
        cmd = [sys.executable, str(ROOT / "tools" / "train.py"), config, f"train.out_dir={out}",
               f"optim.max_steps={steps}", *VARIANTS[name], *extra]
        env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1")
        out.parent.mkdir(parents=True, exist_ok=True)
        log = open(out_root / f"{name}.log", "w")
        print(f"training {name}: {' '.join(cmd[2:])}", file=sys.stderr)
        procs[name] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log)
    for name, (proc, log) in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"training {name} failed: see {out_root / (name + '.log')}")
        log.close()
    return paths


def load_clips(manifest: Path, limit: int) -> tp.List[dict]:
    clips = []
    for line in manifest.read_text().splitlines()[:limit]:
        row = json.loads(line)
        labels = json.loads(Path(row["labels"]).read_text())
        clips.append({"id": row["key"], "video": row["video"], "audio": row["video"], "start": 0.0,
                      "class_id": labels["class_id"], "tempo_bpm": labels["tempo_bpm"],
                      "events": [e["time"] for e in labels["events"]]})
    return clips


@torch.no_grad()
def generate(pipe, clips: tp.Sequence[dict], seed: int, cfg_scale: float, top_k: int, batch: int = 12,
             tags: tp.Optional[tp.Sequence[tp.Sequence[str]]] = None,
             negative: tp.Optional[tp.Sequence[tp.Sequence[str]]] = None, guide: str = "all",
             tag_cfg: float = 0.0, beat_from_video: bool = False) -> tp.List[np.ndarray]:
    """Music for each clip's first ``clip_seconds`` window; ``tags`` / ``negative`` are per-clip tag lists (None =
    video only: the tag slots hold the learned null token)."""
    from vmas.data import media
    from vmas.modules.rhythm import request_grids, tags_bpm, video_grids

    c = pipe.config
    frames_per_clip = round(c.data.clip_seconds * pipe.codec.frame_rate)
    gen = torch.Generator().manual_seed(seed)
    encoder = pipe.get_text_encoder() if (tags or negative) else None
    wavs = []
    for i in range(0, len(clips), batch):
        chunk = clips[i: i + batch]
        frames = torch.stack([media.read_video_frames(x["video"], fps=c.data.fps, size=c.data.image_size,
                                                      start=0.0, duration=c.data.clip_seconds)[0] for x in chunk])
        tag_emb = tag_mask = neg_emb = neg_mask = None
        if tags is not None:
            tag_emb, tag_mask = encoder(tags[i: i + batch])
        if negative is not None:
            neg_emb, neg_mask = encoder(negative[i: i + batch])
        beat = None
        if c.model.lm.beat_condition and beat_from_video:  # grids fitted to the picture, as `vmas generate` does
            bpms = [tags_bpm(t) for t in tags[i: i + batch]] if tags else None
            beat = video_grids([x["video"] for x in chunk], c.data.clip_seconds, pipe.codec.frame_rate, bpms)
        elif tags is not None and c.model.lm.beat_condition:  # "N BPM" tags -> beat grids, as `vmas generate` does
            beat = request_grids(tags[i: i + batch], pipe.codec.frame_rate)
        codes = pipe.model.generate(frames, num_frames=frames_per_clip, tag_emb=tag_emb, tag_mask=tag_mask,
                                    neg_emb=neg_emb, neg_mask=neg_mask, cfg=cfg_scale, top_k=top_k, generator=gen,
                                    guide=guide, beat=beat, tag_cfg=tag_cfg)
        wav = pipe.codec.decode(codes)[:, 0]  # [B, N]
        wavs += [w.numpy() for w in wav]
    return wavs


def score(wavs: tp.Sequence[np.ndarray], sr: int, clips: tp.Sequence[dict], classifier,
          seconds: tp.Optional[float] = None) -> tp.Dict[str, float]:
    """MV-Align, onset F1 and class accuracy of ``wavs`` against the first ``seconds`` of each clip."""
    from vmas.metrics import MVAlign
    from vmas.metrics.mv_align import read_video_frames
    from vmas.metrics.synthmv import onset_f1, onset_times

    mv = MVAlign(flow="farneback")
    f1s = []
    for wav, clip in zip(wavs, clips):
        seconds_i = seconds or len(wav) / sr
        frames, fps = read_video_frames(clip["video"], duration=seconds_i)
        mv.update_media(wav, sr, frames, fps, clip["id"])
        events = [t for t in clip["events"] if t < seconds_i]
        f1s.append(onset_f1(onset_times(wav, sr), events, tol=0.05))
    pred = classifier.predict(list(wavs), sr)
    acc = float(np.mean(pred == np.array([c["class_id"] for c in clips])))
    return {"mv_align": mv.compute(), "onset_f1": float(np.mean(f1s)), "class_acc": acc}


def mean_std(runs: tp.Sequence[tp.Dict[str, float]]) -> tp.Dict[str, tp.Any]:
    """[{metric: value}] over sampling seeds -> {metric: value} for one run, else {metric: {mean, std, runs}}."""
    if len(runs) == 1:
        return dict(runs[0])
    return {k: {"mean": float(np.mean([r[k] for r in runs])), "std": float(np.std([r[k] for r in runs])),
                "runs": [round(float(r[k]), 4) for r in runs]} for k in runs[0]}


def judge(pipe):
    """The SynthMV class classifier for ``pipe``'s music: trained on real renders of the scored window length, plus
    their reconstructions through the model's codec (see ``SynthMVClassifier.train_default``)."""
    from datasets.synthmv import SynthMVClassifier

    codec, sr = pipe.codec, pipe.codec.sample_rate

    @torch.no_grad()
    def roundtrip(wav: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(wav, dtype=torch.float32, device=pipe.device)[None, None]
        return codec.decode(codec.encode(x))[0, 0, : x.shape[-1]].cpu().numpy()

    assert sr == 32000, "SynthMV renders at 32 kHz"
    return SynthMVClassifier.train_default(seconds=pipe.config.data.clip_seconds, transform=roundtrip), roundtrip


def retrieval_r1(pipe, clips: tp.Sequence[dict]) -> tp.Tuple[float, float, str]:
    """(R@1 with the training-time music feature, R@1 with one-hot real codes, note); see
    ``model_retrieval_embeddings(music_from=...)``. The first is the reported number (decided before measuring)."""
    from vmas.losses import ContrastiveLoss
    from vmas.metrics.retrieval import model_retrieval_embeddings, recall_at_k

    note = "trained contrastive heads; music side = null-condition LM predictions of the real codes"
    if pipe.model.contrastive is None:  # ar_only: no heads were trained; fresh heads = what the model alone offers
        torch.manual_seed(0)
        c = pipe.config
        pipe.model.contrastive = ContrastiveLoss(pipe.model.encoder.out_dim, pipe.codec.codebooks().shape[-1],
                                                 c.loss.contrastive_dim, c.loss.contrastive_temperature).eval()
        note = "no contrastive heads (ar_only): freshly initialised heads, expect chance"
    r1 = {}
    for source in ("logits", "codes"):
        v, m, _ = model_retrieval_embeddings(pipe, clips, music_from=source)
        r1[source] = recall_at_k(v, m, ks=(1,))["R@1"]
    return r1["logits"], r1["codes"], note


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "synthmv_tiny.yaml"))
    p.add_argument("--test-manifest", default=str(ROOT / "data" / "synthmv" / "test" / "vmas_manifest.jsonl"))
    p.add_argument("--out", default=str(ROOT / "runs" / "synthmv" / "bench"))
    p.add_argument("--variants", default="ar_only,contrastive,full")
    p.add_argument("--steps", type=int, default=1200, help="optimiser steps per variant (same for all)")
    p.add_argument("--clips", type=int, default=36, help="held-out clips to generate for")
    p.add_argument("--seed", type=int, default=0, help="training seed of the variants and first sampling seed")
    p.add_argument("--sample-seeds", type=int, default=3,
                   help="generate with this many sampling seeds (seed, seed+1, ...) and report mean and std")
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--beat-from-video", action="store_true",
                   help="models with a beat condition: generate with the grid fitted to each video's motion peaks")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("overrides", nargs="*", help="extra config overrides for every variant")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    from vmas.hub import load_model

    out_root = Path(args.out)
    names = [n for n in args.variants.split(",") if n]
    t0 = time.time()
    paths = train_variants(args.config, out_root, args.steps, names, args.retrain, args.overrides)
    train_s = time.time() - t0
    clips = load_clips(Path(args.test_manifest), args.clips)
    results: tp.Dict[str, tp.Any] = {}
    sr = classifier = roundtrip = None
    for name in names:
        pipe = load_model(paths[name])
        sr = pipe.codec.sample_rate
        if classifier is None:  # every variant shares the codec of the config
            classifier, roundtrip = judge(pipe)
        runs = [score(generate(pipe, clips, args.seed + k, args.cfg, args.top_k, beat_from_video=args.beat_from_video),
                      sr, clips, classifier)
                for k in range(args.sample_seeds)]
        results[name] = mean_std(runs)
        r1, r1_codes, note = retrieval_r1(pipe, clips)
        results[name].update({"r_at_1": r1, "r_at_1_onehot_codes": r1_codes, "r_at_1_note": note})
        print(f"{name}: {results[name]}", file=sys.stderr)

    # random baseline: each clip gets the real music of another held-out clip (a derangement)
    from vmas.data import media

    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(clips))
    while len(clips) > 1 and np.any(perm == np.arange(len(clips))):
        perm = rng.permutation(len(clips))
    sr = sr or 32000
    seconds = load_model(paths[names[-1]]).config.data.clip_seconds if names else 10.0
    real = [media.read_audio(c["video"], sr=sr, duration=seconds).numpy() for c in clips]
    results["random"] = score([real[j] for j in perm], sr, clips, classifier)
    results["random"]["r_at_1"] = 1.0 / len(clips)
    results["random"]["r_at_1_note"] = "chance (1/N)"
    # ceiling: the clip's own music through the codec (what a perfect LM could produce)
    results["codec_ceiling"] = score([roundtrip(w) for w in real], sr, clips, classifier)
    results["meta"] = {"clips": len(clips), "steps": args.steps, "seed": args.seed, "sample_seeds": args.sample_seeds,
                       "beat_from_video": args.beat_from_video,
                       "spread": "std over sampling seeds of one trained model per variant", "cfg": args.cfg,
                       "top_k": args.top_k, "train_seconds": round(train_s, 1),
                       "total_seconds": round(time.time() - t0, 1), "config": args.config}
    (out_root / "results.json").write_text(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps(results))
    else:
        for name, r in results.items():
            print(name, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
