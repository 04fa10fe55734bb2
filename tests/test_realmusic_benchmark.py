"""The real-music testbed's measures (vmas.experiments.realmusic_scores, issue 32), checked against hand computation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vmas.experiments import realmusic_scores as rb

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")


def run(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_si_sdr_matches_hand_computation():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(8000)
    ref -= ref.mean()
    noise = rng.standard_normal(8000)
    noise -= noise.mean()
    noise -= (noise @ ref) / (ref @ ref) * ref  # orthogonal to ref: SI-SDR = 10 log10(|a ref|^2 / |noise|^2)
    est = 3.0 * ref + 0.5 * noise
    want = 10 * np.log10((9.0 * ref @ ref) / (0.25 * noise @ noise))
    assert abs(rb.si_sdr(est, ref) - want) < 1e-9
    assert abs(rb.si_sdr(-7.0 * ref + 0.5 * noise * 7 / 3, ref) - want) < 1e-9  # scale (and sign) invariant


def test_mulaw_pcm_levels_and_rate():
    """A 40 Hz tone (below every rate's Nyquist) keeps its pitch; more bits (at a lower rate) quantise finer."""
    t = np.arange(rb.SR) / rb.SR
    wav = (0.5 * np.sin(2 * np.pi * 40 * t)).astype(np.float32)
    errs = {b: float(np.mean((rb.mulaw_pcm(wav, 1600 // b, b) - wav)[4000:-4000] ** 2)) for b in (8, 4, 2)}
    assert errs[8] < errs[4] < errs[2]
    spec = np.abs(np.fft.rfft(rb.mulaw_pcm(wav, 400, 4)))
    assert abs(np.argmax(spec) - 40) <= 1  # 1 Hz bins over 1 s


def test_mismatch_always_changes_class():
    clips = [{"class_id": c} for c in (0, 0, 0, 1, 1, 2, 2, 3)]
    perm = rb.mismatch(clips, 0)
    assert sorted(perm) == list(range(8))
    assert all(clips[j]["class_id"] != clips[i]["class_id"] for i, j in enumerate(perm))
    assert (perm == rb.mismatch(clips, 0)).all()


def test_fad_by_class_prefers_the_same_class():
    """Tones of class 0 are nearer to class-0 references than to class-1 noise (mel-statistics FAD)."""
    rng = np.random.default_rng(1)
    t = np.arange(2 * rb.SR) / rb.SR

    def tone(f):
        return (0.3 * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)

    def noise():
        return (0.1 * rng.standard_normal(t.size)).astype(np.float32)

    refs = {0: [tone(f) for f in (300, 320, 340, 360)], 1: [noise() for _ in range(4)]}
    gen = [tone(f) for f in (310, 330, 350)] + [noise() for _ in range(3)]
    clips = [{"class_id": 0}] * 3 + [{"class_id": 1}] * 3
    out = rb.fad_by_class(gen, clips, refs)
    assert out["fad_same_class"] < out["fad_other_class"]


# ------------------------------------------------------------------------------ the tool, end to end at debug size
@pytest.mark.slow
def test_tool_end_to_end_reuses_runs_and_scores(tmp_path):
    """tools/realmusic_benchmark.py at debug size: RealMusic-MV folders cut from synthetic tracks with known notes
    (test_realmusic_mv's), a random codec of the preset's shape, ``codec`` then ``lm`` (2 training steps, 2 seeds);
    the rows the issue names are there, the spread is over training seeds, and a second call trains and generates
    nothing (same models, same numbers)."""
    from test_realmusic_mv import CLASSES, synth_track

    from datasets import realmusic_mv as rmv
    from vmas.builders import build_codec
    from vmas.config import load_config
    from vmas.data import media
    from vmas.models.codec import save_codec

    music = tmp_path / "music"
    for ci, name in enumerate(CLASSES):
        (music / name).mkdir(parents=True)
        for j in range(4):  # one track per split
            media.write_wav(music / name / f"track{j}.wav", synth_track(10 * ci + j), 44100)
    data = tmp_path / "rm"
    for split, seed in (("train", 0), ("select", 3), ("test", 1)):
        rmv.generate_dataset(data / split, split, per_class=1, seed=seed, seconds=5.0, size=32, music_dir=music,
                             classes=CLASSES, window=5.0 if split == "train" else None, log=lambda s: None)
    codec = tmp_path / "codec.pt"
    cfg = load_config("configs/realmusic.yaml", ["model.codec.pretrained=''"])
    torch.manual_seed(0)
    save_codec(build_codec(cfg.model.codec), codec)
    overrides = [f"model.codec.pretrained={codec}", "data.batch_size=2", "data.shuffle_buffer=2",
                 "data.clips_per_shard=4", "train.eval_every=0", "train.save_every=100", "optim.warmup_steps=0"]
    shards = tmp_path / "shards"
    run("tools/preprocess.py", "--manifest", str(data / "train" / "vmas_manifest.jsonl"), "--out", str(shards),
        "--config", "configs/realmusic.yaml", "--splits", "train", "--workers", "1", *overrides)

    rep = json.loads(run("tools/realmusic_benchmark.py", "codec", "--codec", str(codec), "--test", str(data / "test"),
                         "--json").stdout)
    assert {"codec", "bitrate_bps", "fad_note"} <= set(rep) and rep["meta"]["clips"] == len(CLASSES)
    assert rep["bitrate_bps"] == cfg.model.codec.n_q * np.log2(cfg.model.codec.bins) * 50  # 4 x 8 bit x 50 Hz
    # a second codec of the same bit rate on the same clips: its own row, the baselines read from their cache (marked
    # here, so a recomputation would show)
    (base_file,) = tmp_path.glob("codec_baselines_*.json")
    cached = json.loads(base_file.read_text())
    assert "codec" not in cached and set(cached) == set(rep) - {"codec", "bitrate_bps", "fad_note", "meta"}
    marked = next(iter(cached))
    cached[marked]["onset_f1"] = -1.0
    base_file.write_text(json.dumps(cached))
    codec2 = build_codec(cfg.model.codec)
    with torch.no_grad():  # other weights than the first codec's
        for prm in codec2.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    save_codec(codec2, tmp_path / "codec2.pt")
    rep2 = json.loads(run("tools/realmusic_benchmark.py", "codec", "--codec", str(tmp_path / "codec2.pt"), "--test",
                          str(data / "test"), "--json").stdout)
    assert rep2[marked]["onset_f1"] == -1.0 and rep2["codec"] != rep["codec"]
    assert len(list(tmp_path.glob("codec_scores_*.json"))) == 2

    out = tmp_path / "lm"
    args = ["tools/realmusic_benchmark.py", "lm", "--json", "--steps", "2", "--train-seeds", "0,1", "--jobs", "2",
            "--judge-clips", "1", "--train", str(data / "train"), "--test", str(data / "test"),
            "--reference", str(data / "select"), "--out", str(out), *overrides, f"data.train_shards={shards}/train-*.tar"]
    res = json.loads(run(*args).stdout)
    for row in ("mismatched", "codec_ceiling"):
        assert set(res[row]) >= {"onset_f1", "mv_align", "class_acc", "fad_same_class", "fad_other_class"}
    f1 = res["model"]["onset_f1"]
    assert len(f1["runs"]) == 2 and f1["mean"] == pytest.approx(sum(f1["runs"]) / 2, abs=1e-4)
    assert res["meta"]["training_seeds"] == [0, 1] and res["meta"]["commit"]
    models = sorted(out.glob("motion/seed*/model.pt"))
    mtimes = [m.stat().st_mtime for m in models]
    assert len(models) == 2
    again = json.loads(run(*args).stdout)
    assert [m.stat().st_mtime for m in models] == mtimes and again["model"] == res["model"]
