"""Known-answer tests for the benchmark metrics (FAD, KL, MV-Align, retrieval, CLAP score) and their scripts."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vmas.errors import CheckpointError, VmasError
from vmas.metrics import (
    FrechetAudioDistance,
    KLDivergence,
    MVAlign,
    VideoMusicRetrieval,
    av_align_iou,
    frechet_distance,
    kl_divergence,
    match_peaks,
    recall_at_k,
    video_peaks,
)
from vmas.metrics.embeddings import VGGish, load_vggish, vggish_examples, vggish_log_mel, vggish_mel_matrix
from vmas.metrics.kl import AudioClassifier, label_distribution
from vmas.metrics.mv_align import audio_peaks, farneback_motion

ROOT = Path(__file__).resolve().parents[1]

FPS = 9.6


# ---------------------------------------------------------------------------------------------------------- FAD
def test_fad_diagonal_gaussians_match_closed_form():
    rng = np.random.default_rng(0)
    d = 12
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    # diagonal covariances: (S1 S2)^(1/2) = diag(sqrt(a b)) so FD = |mu1-mu2|^2 + sum (sqrt a - sqrt b)^2
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    for method in ("eigh", "sqrtm"):
        got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method)
        assert abs(got - expected) < 1e-6, (method, got, expected)


def test_fad_rotated_gaussians_match_closed_form():
    # a common rotation R keeps the covariances commuting: FD is the diagonal formula in the rotated basis
    rng = np.random.default_rng(1)
    d = 8
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.1, 2.0, d), rng.uniform(0.1, 2.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert abs(got - expected) < 1e-6


def test_fad_self_is_zero_and_streaming_equals_batch():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16))
    y = rng.normal(size=(200, 16)) + 0.5
    fad = FrechetAudioDistance()
    for clip in np.split(x, 30):  # 30 clips of 10 embeddings
        fad.update(clip, real=True)
        fad.update(torch.from_numpy(clip), real=False)
    assert abs(fad.compute()) < 1e-8
    assert fad.meta()["clips_reference"] == 30 and fad.meta()["embeddings_generated"] == 300
    # accumulated statistics == np.mean / np.cov of all samples
    fad.reset()
    fad.update(x, real=True, clips=3)
    fad.update(y, real=False, clips=2)
    expected = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False),
                                method="sqrtm")
    assert abs(fad.compute() - expected) < 1e-6 * max(1.0, expected)


def test_fad_singular_covariances_stay_real_and_nonnegative():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 32))  # rank-4 covariance in 32 dims: sqrtm of the product has complex round-off
    y = rng.normal(size=(6, 32))
    fad = FrechetAudioDistance()
    fad.update(x, real=True)
    fad.update(y, real=False)
    value = fad.compute()
    assert isinstance(value, float) and math.isfinite(value) and value > 0
    ref = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False), method="sqrtm")
    assert abs(value - ref) < 1e-5 * ref


def test_fad_needs_two_embeddings():
    fad = FrechetAudioDistance()
    fad.update(np.zeros((1, 4)), real=True)
    fad.update(np.zeros((3, 4)), real=False)
    with pytest.raises(VmasError, match="at least 2 embeddings"):
        fad.compute()


# ------------------------------------------------------------------------------------------------------- VGGish
TORCHVGGISH_KEYS = [f"features.{i}.{p}" for i in (0, 3, 6, 8, 11, 13) for p in ("weight", "bias")] + \
    [f"embeddings.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")]


@pytest.mark.slow  # writes and reads the real-size 288 MB state dict
def test_vggish_loads_torchvggish_layout(tmp_path):
    torch.manual_seed(0)
    src = VGGish()
    state = src.state_dict()
    assert sorted(state) == sorted(TORCHVGGISH_KEYS)
    assert state["embeddings.0.weight"].shape == (4096, 12288)
    path = tmp_path / "vggish-10086976.pth"
    torch.save(state, path)
    model = load_vggish(str(path))
    from vmas.metrics.embeddings import VGGishEmbedder

    emb = VGGishEmbedder(model)
    wav = np.random.default_rng(0).normal(size=32000).astype(np.float32) * 0.1  # 2 s at 16 kHz
    got = emb.embed(wav, 16000)
    assert got.shape == (2, 128)  # 2 s -> two 0.96 s examples
    x = torch.from_numpy(vggish_examples(wav)).float()[:, None]
    with torch.no_grad():
        feats = src.features(x).permute(0, 2, 3, 1).reshape(2, -1)  # TF channels-last flatten, by hand
        ref = src.embeddings(feats)
    np.testing.assert_allclose(got, ref.double().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_vggish(str(tmp_path / "missing.pth"))


def test_vggish_frontend_puts_a_tone_in_its_mel_band():
    sr = 16000
    t = np.arange(sr) / sr
    mel = vggish_log_mel(np.sin(2 * np.pi * 1000 * t).astype(np.float32))
    assert mel.shape == (98, 64)  # 1 + (16000 - 400) // 160
    # band i's centre is edge i+1 of 66 mel-spaced edges between 125 and 7500 Hz (HTK mel)
    hz2mel = lambda f: 1127.0 * math.log(1 + f / 700.0)  # noqa: E731
    centres = np.linspace(hz2mel(125), hz2mel(7500), 66)[1:-1]
    assert int(mel.mean(0).argmax()) == int(np.abs(centres - hz2mel(1000)).argmin())
    w = vggish_mel_matrix()
    assert w.shape == (257, 64) and w[0].sum() == 0 and w.max() <= 1.0


# ----------------------------------------------------------------------------------------------------------- KL
def test_kl_identical_and_hand_case():
    p = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    # AudioCraft adds eps to the generated probabilities: identical distributions give -sum p log(1 + eps/p)
    eps = 1e-6
    np.testing.assert_allclose(kl_divergence(p, p, eps), [-(0.2 * math.log1p(eps / 0.2) + 0.3 * math.log1p(eps / 0.3)
                                                            + 0.5 * math.log1p(eps / 0.5)), -math.log1p(eps)],
                               rtol=1e-9)
    # KL([.5,.5] || [.25,.75]) = .5 ln(.5/.25) + .5 ln(.5/.75) = .5 ln(4/3) (eps moves it by ~1e-6)
    assert abs(kl_divergence([0.5, 0.5], [0.25, 0.75], eps=0.0) - 0.5 * math.log(4 / 3)) < 1e-12
    # a label the generated clip never predicts costs log(p / eps), not infinity
    assert abs(kl_divergence([0.5, 0.5], [1.0, 0.0], eps=1e-6)
               - (0.5 * math.log(0.5 / (1 + 1e-6)) + 0.5 * math.log(0.5 / 1e-6))) < 1e-9


def test_kl_metric_pairs_by_clip_id():
    kl = KLDivergence(eps=0.0)
    kl.update(["b", "a"], [[0.5, 0.5], [0.1, 0.9]], [[0.25, 0.75], [0.1, 0.9]])
    assert kl.per_clip() == {"a": 0.0, "b": pytest.approx(0.5 * math.log(4 / 3))}
    assert kl.compute() == pytest.approx(0.25 * math.log(4 / 3))


class _LevelClassifier(AudioClassifier):
    """Stub: 2 labels, logits [mean(x), 0] -> softmax; 100 Hz so 10 s chunks are 1000 samples."""

    sample_rate = 100
    num_labels = 2

    def logits(self, x):
        return torch.stack([x.double().mean(1), torch.zeros(len(x), dtype=torch.double)], 1)


def test_label_distribution_averages_10s_chunks():
    # segments of 10 s, unpadded; 0.1 s <= 0.15 s is dropped, the 0.5 s tail is kept at its own length
    wav = np.concatenate([np.ones(1000), np.zeros(1000), np.full(50, 9.0)]).astype(np.float32)
    got = label_distribution(_LevelClassifier(), wav, 100)
    s1, s9 = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-9))  # softmax([m, 0])[0]
    np.testing.assert_allclose(got, [(s1 + 0.5 + s9) / 3, ((1 - s1) + 0.5 + (1 - s9)) / 3], atol=1e-12)
    short = np.concatenate([np.ones(1000), np.full(10, 9.0)]).astype(np.float32)
    np.testing.assert_allclose(label_distribution(_LevelClassifier(), short, 100), [s1, 1 - s1], atol=1e-12)


# ----------------------------------------------------------------------------------------------------- MV-Align
def test_match_is_one_to_one_with_hand_counts():
    fps = 10.0  # tolerance 0.1 s
    a, v = [1.0, 1.05, 3.0, 5.0], [1.02, 3.2, 7.0]
    # 1.0<->1.02 matches; 1.05 would reuse 1.02 (the reference counts it twice); 3.0 vs 3.2 is too far
    assert match_peaks(a, v, 0.1) == 1
    assert av_align_iou(a, v, fps) == pytest.approx(1 / (4 + 3 - 1))
    assert match_peaks([0.95, 1.04], [1.0, 1.12], 0.1) == 2  # greedy sweep still finds the full matching
    assert match_peaks([1.0], [1.1], 0.1) == 0  # strictly inside ±1 frame, as the reference
    assert av_align_iou([], [], fps) == 0.0 and av_align_iou([1.0], [], fps) == 0.0


def test_video_peaks_are_strict_local_maxima():
    m = np.array([0, 1, 0, 2, 2, 0, 3, 1, 5])
    np.testing.assert_allclose(video_peaks(m, 2.0), [0.5, 3.0])  # plateau and last frame do not count


def _event_clip(events, clicks, seconds=5.0, sr=22050):
    """A textured square that jumps 4 px at frames `events` (static otherwise) and noise clicks at `clicks` s."""
    rng = np.random.default_rng(0)
    tex = (rng.random((16, 16)) * 255).astype(np.uint8)
    T = int(seconds * FPS)
    frames, pos = np.zeros((T, 64, 64, 3), np.uint8), 8
    for j in range(T):
        pos += 4 if j in events else 0
        frames[j, 20:36, pos: pos + 16] = tex[..., None]
    wav = np.zeros(int(seconds * sr), np.float32)
    n = int(0.01 * sr)
    for c in clicks:
        i = int(c * sr)
        wav[i: i + n] += rng.standard_normal(n).astype(np.float32) * np.exp(-np.arange(n) / 50)
    return frames, wav, sr


def test_mv_align_constructed_clip_equals_hand_count():
    events = [10, 25, 40]
    clicks = [10 / FPS, 25 / FPS, 3.5]  # two clicks on motion events, one on nothing
    frames, wav, sr = _event_clip(events, clicks)
    motion = farneback_motion(frames)
    np.testing.assert_allclose(video_peaks(motion, FPS) * FPS, events)
    a = audio_peaks(wav, sr)
    assert len(a) == 3 and np.abs(a - np.array(clicks)).max() < 0.05
    mv = MVAlign()
    score = mv.update_media(wav, sr, frames, FPS, clip_id="c0")
    assert score == pytest.approx(2 / (3 + 3 - 2))  # 2 matches, 3 audio + 3 video peaks
    assert mv.compute() == pytest.approx(0.5) and mv.meta()["clips"] == 1


# ---------------------------------------------------------------------------------------------------- retrieval
def test_retrieval_planted_and_hand_case():
    g = torch.Generator().manual_seed(0)
    video = torch.randn(64, 16, generator=g)
    music = video + 0.01 * torch.randn(64, 16, generator=g)
    r = VideoMusicRetrieval()
    r.update(video[:40], music[:40])
    r.update(video[40:], music[40:])
    assert r.compute() == {"R@1": 1.0, "R@10": 1.0} and r.num_pairs == 64
    # hand case: ranks 0 (v0 best matches m0), 1 (m2 beats m1 for v1), 2 (m0 and m1 beat m2 for v2)
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    m = torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0]])
    assert recall_at_k(v, m, ks=(1, 2, 3)) == pytest.approx({"R@1": 1 / 3, "R@2": 2 / 3, "R@3": 1.0})
    # ties count against the query: constant embeddings are not a perfect retriever
    assert recall_at_k(torch.ones(5, 3), torch.ones(5, 3), ks=(1,))["R@1"] == 0.0


# ----------------------------------------------------------------------------------------------------- CLAP score
def test_clap_score_matches_manual_cosine(tiny_clap):
    from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

    from vmas.metrics import ClapScore

    score = ClapScore(str(tiny_clap))
    sr = 48000
    rng = np.random.default_rng(0)
    wavs = [rng.normal(size=15 * sr).astype(np.float32) * 0.1, rng.normal(size=3 * sr).astype(np.float32) * 0.1]
    texts = ["piano, jazz", "drums"]
    got = score.update(wavs, sr, texts, ids=["a", "b"])

    model = ClapModel.from_pretrained(str(tiny_clap)).eval()
    fe = ClapFeatureExtractor.from_pretrained(str(tiny_clap))
    tok = AutoTokenizer.from_pretrained(str(tiny_clap))

    def unwrap(o):
        return o if isinstance(o, torch.Tensor) else o.pooler_output

    with torch.no_grad():
        # clip "a" is 15 s: two CLAP windows [0, 10) and [10, 15) s, embeddings averaged
        win = [wavs[0][: 10 * sr], wavs[0][10 * sr:]]
        feats = fe(win, sampling_rate=sr, return_tensors="pt", truncation="rand_trunc")
        a0 = unwrap(model.get_audio_features(input_features=feats["input_features"])).mean(0)
        feats = fe([wavs[1]], sampling_rate=sr, return_tensors="pt", truncation="rand_trunc")
        a1 = unwrap(model.get_audio_features(input_features=feats["input_features"]))[0]
        t = unwrap(model.get_text_features(**tok(texts, padding=True, return_tensors="pt")))
    ref = torch.stack([torch.dot(a0, t[0]) / (a0.norm() * t[0].norm()), torch.dot(a1, t[1]) / (a1.norm() * t[1].norm())])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    assert score.compute() == pytest.approx(float(ref.mean()), abs=1e-5)


def test_missing_clap_is_one_line():
    from vmas.metrics import ClapScore

    with pytest.raises(CheckpointError, match="not available offline"):
        ClapScore("/nonexistent/clap")


# ---------------------------------------------------------------------------- vmas.evaluation, tools/evaluate.py
def _write_wav(path, wav, sr):
    import soundfile as sf

    sf.write(str(path), wav, sr)


def test_evaluate_reference_folders_fad_only(tmp_path):
    def main(argv):  # the script as a user runs it
        return subprocess.run([sys.executable, str(ROOT / "tools" / "evaluate.py"), *argv], capture_output=True,
                              text=True, cwd=tmp_path).returncode

    rng = np.random.default_rng(0)
    for d in ("ref", "gen"):
        (tmp_path / d).mkdir()
        for i in range(3):
            _write_wav(tmp_path / d / f"c{i}.wav", (rng.normal(size=32000) * (0.1 if d == "ref" else 0.3)), 16000)
    out = tmp_path / "r" / "report.json"
    assert main(["--reference", str(tmp_path / "ref"), "--generated", str(tmp_path / "gen"), "--fad-backbone",
                 "mel", "--out", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"fad", "coverage", "meta"} and report["fad"] > 0
    assert report["meta"]["clips"]["fad"] == {"reference": 3, "generated": 3, "embeddings_reference": 6,
                                              "embeddings_generated": 6}
    assert "not comparable" in report["meta"]["backbones"]["fad"]["name"] and report["meta"]["fallbacks"]
    assert "| fad |" in out.with_suffix(".md").read_text()
    # the same folders against themselves: FAD 0
    main(["--reference", str(tmp_path / "ref"), "--generated", str(tmp_path / "ref"), "--fad-backbone", "mel",
          "--out", str(out), "--no-progress"])
    assert abs(json.loads(out.read_text())["fad"]) < 1e-8


def test_evaluate_manifest_all_metrics_and_missing_weights(tmp_path):
    import cv2

    from vmas.evaluation import evaluate

    events, clicks = [10, 25, 40], [10 / FPS, 25 / FPS, 3.5]
    frames, wav, sr = _event_clip(events, clicks)
    writer = cv2.VideoWriter(str(tmp_path / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (64, 64))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    (tmp_path / "gen").mkdir()
    lines = []
    for i in range(2):
        _write_wav(tmp_path / f"ref{i}.wav", wav, sr)
        _write_wav(tmp_path / "gen" / f"clip{i}.wav", wav if i == 0 else np.zeros_like(wav), sr)
        lines.append(json.dumps({"id": f"clip{i}", "video": "v.avi", "audio": f"ref{i}.wav", "tags": ["piano"]}))
    (tmp_path / "gen" / "clip2.wav").write_bytes(b"not audio at all")  # a corrupt output skips only its clip
    lines.append(json.dumps({"id": "clip2", "video": "v.avi", "audio": "ref0.wav"}))
    (tmp_path / "test.jsonl").write_text("\n".join(lines) + "\n")
    emb = tmp_path / "emb.npz"
    np.savez(emb, video=np.eye(3), music=np.eye(3)[[0, 2, 1]])
    report = evaluate(tmp_path / "gen", tmp_path / "test.jsonl", metrics=["fad", "kl", "mv_align", "retrieval",
                                                                          "clap"],
                      fad_backbone="vggish:/nonexistent/vggish.pth", kl_classifier="mel", clap_model="/nonexistent",
                      retrieval_embeddings=str(emb), progress=False, min_coverage=0.0)  # clip2 is corrupt
    meta = report["meta"]
    assert report["coverage"]["kl"] == report["coverage"]["mv_align"] == {"clips": 2, "of": 3, "fraction": 0.6667}
    assert "fad" not in report and "VGGish" in meta["skipped"]["fad"]  # missing weights: omitted, never faked
    assert "clap" not in report and "not available offline" in meta["skipped"]["clap"]
    # clip0 is identical to its reference (KL 0, MV-Align 0.5); clip1 is silent (no onsets: MV-Align 0, not NaN)
    assert report["mv_align"] == pytest.approx((0.5 + 0.0) / 2) and meta["mv_align_reference"] == pytest.approx(0.5)
    assert report["av_align_reference"] == pytest.approx((0.5 + 0.0) / 2)  # no shared peak here: the same count
    assert meta["clips"]["kl"] == 2 and report["kl"] > 0 and meta["clips"]["manifest"] == 3
    assert len(meta["clip_errors"]["kl"]) == 1 and len(meta["clip_errors"]["mv_align"]) == 1
    assert report["retrieval"] == {"R@1": pytest.approx(1 / 3), "R@10": 1.0}
    assert any("kl" in f for f in meta["fallbacks"])


# --------------------------------------------------------------------------- vmas.evaluation, tools/benchmark.py
def test_benchmark_resumes_per_clip(tmp_path):
    from vmas.evaluation import run_generation

    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"c{i}", "video": f"v{i}.mp4"}) + "\n" for i in range(3)))
    calls = []

    def stub(clip, out_wav):
        calls.append(clip["id"])
        if clip["id"] == "c2" and len(calls) == 3:
            raise VmasError("stub failure")
        _write_wav(out_wav, np.zeros(1600, np.float32), 16000)

    out = tmp_path / "gen"
    stats = run_generation(manifest, out, stub, progress=False)
    assert calls == ["c0", "c1", "c2"] and stats == {"generated": 2, "skipped": 0, "failed": 1}
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".wav") == ["c0.wav", "c1.wav"]
    calls.clear()
    stats = run_generation(manifest, out, stub, progress=False)  # resume: only the failed clip runs again
    assert calls == ["c2"] and stats == {"generated": 1, "skipped": 2, "failed": 0}
    (out / "c1.wav").unlink()
    calls.clear()
    run_generation(manifest, out, stub, progress=False)
    assert calls == ["c1"]


def test_retrieval_embeddings_from_a_model(tmp_path):
    import cv2

    from vmas.config import load_config
    from vmas.data import media
    from vmas.hub import load_pretrained
    from vmas.metrics.retrieval import model_retrieval_embeddings

    pipe = load_pretrained(None, config=load_config("configs/debug.yaml"))  # random weights: plumbing + numbers
    rng = np.random.default_rng(0)
    clips = []
    for i in range(2):
        writer = cv2.VideoWriter(str(tmp_path / f"v{i}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (48, 48))
        for _ in range(30):
            writer.write((rng.random((48, 48, 3)) * 255).astype(np.uint8))
        writer.release()
        _write_wav(tmp_path / f"a{i}.wav", rng.normal(size=32000 * 3).astype(np.float32) * 0.1, 32000)
        clips.append({"id": f"c{i}", "video": str(tmp_path / f"v{i}.avi"), "audio": str(tmp_path / f"a{i}.wav")})
    video, music, ids = model_retrieval_embeddings(pipe, clips, batch_size=2)
    assert ids == ["c0", "c1"] and video.shape == music.shape == (2, 16)
    # clip 1 by hand: same window through encoder -> video head, and wav -> codes -> music head
    cfg, model = pipe.config, pipe.model
    frames = media.read_video_frames(clips[1]["video"], fps=cfg.data.fps, size=cfg.data.image_size,
                                     duration=cfg.data.clip_seconds)[0]
    wav = media.read_audio(clips[1]["audio"], sr=32000, duration=cfg.data.clip_seconds)
    with torch.no_grad():
        v = model.contrastive.embed_video(model.encode_video(frames[None]))
        codes = pipe.codec.encode(wav[None, None])
        m = model.contrastive.embed_music(codes=codes, codebooks=pipe.codec.codebooks())
    torch.testing.assert_close(video[1:], v, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(music[1:], m, atol=1e-5, rtol=1e-4)
    # music_from="logits": the LM's null-condition predictions of the same codes, through the same head
    _, soft, _ = model_retrieval_embeddings(pipe, clips, batch_size=2, music_from="logits")
    with torch.no_grad():
        seq, valid = model.pattern.build(codes, model.card)
        null, null_mask = model.fuser(None, batch_size=1)
        logits = model.lm(seq, null, null_mask)
        m_soft = model.contrastive.embed_music(logits=logits, codebooks=pipe.codec.codebooks(), valid=valid)
    torch.testing.assert_close(soft[1:], m_soft, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(soft, music, atol=1e-3)  # a different feature
    assert recall_at_k(video, music, ks=(2,))["R@2"] == 1.0


@pytest.mark.slow
def test_benchmark_with_the_real_generator_adapter(tmp_path):
    import cv2

    from vmas.config import load_config
    from vmas.evaluation import evaluate, run_generation, vmas_generator
    from vmas.hub import load_pretrained

    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(tmp_path / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (48, 48))
    for _ in range(20):  # ~2.1 s
        writer.write((rng.random((48, 48, 3)) * 255).astype(np.uint8))
    writer.release()
    _write_wav(tmp_path / "ref.wav", rng.normal(size=32000 * 2).astype(np.float32) * 0.1, 32000)
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "c0", "video": "v.avi", "audio": "ref.wav"}) + "\n")
    pipe = load_pretrained(None, config=load_config("configs/debug.yaml"))
    gen_dir = tmp_path / "out" / "generated"
    stats = run_generation(tmp_path / "m.jsonl", gen_dir, vmas_generator(pipe, top_k=10), progress=False)
    assert stats == {"generated": 1, "skipped": 0, "failed": 0}
    assert (gen_dir / "c0.wav").is_file() and (gen_dir / "c0.mp4").is_file() and not (gen_dir / ".partial").exists()
    from vmas.metrics.embeddings import load_audio

    wav, sr = load_audio(gen_dir / "c0.wav")
    assert sr == 32000 and abs(len(wav) / sr - 20 / FPS) < 0.05  # music as long as the video
    muxed, _ = load_audio(gen_dir / "c0.mp4", 32000)  # container path (PyAV): same music, AAC-coded
    assert abs(len(muxed) - len(wav)) < 0.05 * sr
    report = evaluate(gen_dir, tmp_path / "m.jsonl", metrics=["kl", "mv_align"], kl_classifier="mel", progress=False)
    assert report["meta"]["clips"] == {"manifest": 1, "missing_generated": 0, "kl": 1, "mv_align": 1,
                                       "av_align_reference": 1, "av_align_2023": 1}
    assert 0.0 <= report["mv_align"] <= 1.0 and report["kl"] >= 0.0


def test_encodec_embedder_averages_latents_per_second():
    from vmas.builders import build_codec
    from vmas.config import load_config
    from vmas.metrics.embeddings import EncodecEmbedder

    codec = build_codec(load_config("configs/debug.yaml").model.codec)
    emb = EncodecEmbedder(codec, "debug codec")
    sr = codec.sample_rate
    wav = np.random.default_rng(0).normal(size=int(2.5 * sr)).astype(np.float32) * 0.1
    got = emb.embed(wav, sr)
    with torch.no_grad():
        z = codec.encoder(torch.from_numpy(wav)[None, None])[0].T.double()  # [T, D]
    fr = round(codec.frame_rate)
    assert got.shape == (2, z.shape[1])  # 2.5 s -> two whole seconds
    np.testing.assert_allclose(got, torch.stack([z[:fr].mean(0), z[fr: 2 * fr].mean(0)]).numpy(), rtol=1e-5, atol=1e-6)
    assert "not comparable" in emb.name


def test_ast_classifier_from_tiny_local_checkpoint(tmp_path):
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    from vmas.metrics.kl import build_classifier

    cfg = ASTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                    max_length=100, num_mel_bins=128, num_labels=5)
    torch.manual_seed(0)
    model = ASTForAudioClassification(cfg).eval()
    model.save_pretrained(tmp_path)
    fe = ASTFeatureExtractor(max_length=100)
    fe.save_pretrained(tmp_path)
    clf = build_classifier(f"ast:{tmp_path}")
    assert clf.num_labels == 5 and clf.sample_rate == 16000
    wav = np.random.default_rng(0).normal(size=16000 * 12).astype(np.float32) * 0.1  # 10 s + 2 s chunks
    got = label_distribution(clf, wav, 16000)
    chunks = [wav[: 160000], np.pad(wav[160000:], (0, 160000 - 32000))]
    with torch.no_grad():
        logits = model(**fe(chunks, sampling_rate=16000, return_tensors="pt")).logits
    np.testing.assert_allclose(got, logits.double().softmax(-1).mean(0).numpy(), rtol=1e-5, atol=1e-7)
    assert abs(got.sum() - 1) < 1e-9
    with pytest.raises(CheckpointError, match="not available offline"):
        build_classifier("ast:/nonexistent/ast")


def test_passt_stft_shim_restores_the_real_layout():
    from vmas.metrics.kl import _real_stft

    x = torch.randn(2, 400, dtype=torch.float64)
    window = torch.hann_window(64, dtype=torch.float64)
    ref = torch.view_as_real(torch.stft(x, 64, 16, window=window, return_complex=True))
    orig = torch.stft
    with _real_stft():
        got = torch.stft(x, 64, 16, window=window)  # hear21passt's call: no return_complex
        kept = torch.stft(x, 64, 16, window=window, return_complex=True)  # explicit callers are untouched
    assert torch.stft is orig and got.shape == (2, 33, 26, 2) and kept.is_complex()
    torch.testing.assert_close(got, ref)


def test_evaluate_curation_manifest_uses_clip_spans_and_split(tmp_path):
    from vmas.evaluation import evaluate

    sr = 16000
    rng = np.random.default_rng(0)
    # a 10 s source whose two halves differ (noise, then a tone): a reference read whole would not match
    source = np.concatenate([rng.normal(size=5 * sr) * 0.2, np.sin(np.arange(5 * sr) * 0.3) * 0.5]).astype(np.float32)
    _write_wav(tmp_path / "src.wav", source, sr)
    (tmp_path / "gen").mkdir()
    rows = []
    for k, start in enumerate((0.0, 5.0)):
        key = f"src-{k}"
        _write_wav(tmp_path / "gen" / f"{key}.wav", source[int(start * sr): int((start + 5) * sr)], sr)
        rows.append({"key": key, "video": "src.mp4", "audio": "src.wav", "start": start, "duration": 5.0,
                     "split": "test"})
    rows.append({"key": "train-0", "video": "src.mp4", "audio": "src.wav", "start": 0.0, "duration": 5.0,
                 "split": "train"})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = evaluate(tmp_path / "gen", tmp_path / "manifest.jsonl", metrics=["fad", "kl"], fad_backbone="mel",
                      kl_classifier="mel", split="test", progress=False)
    assert report["meta"]["clips"]["manifest"] == 2 and report["meta"]["clips"]["missing_generated"] == 0
    # generated == the reference spans exactly: FAD 0, KL at AudioCraft's eps floor (-sum_c p_c log(1 + eps/p_c),
    # at most 64 labels x 1e-6 in size)
    assert abs(report["fad"]) < 1e-8 and -64e-6 <= report["kl"] <= 0.0


def test_cut_clip_keeps_the_requested_frames(tmp_path):
    import cv2

    from vmas.evaluation import cut_clip
    from vmas.metrics.mv_align import read_video_frames

    writer = cv2.VideoWriter(str(tmp_path / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (32, 32))
    for j in range(30):
        writer.write(np.full((32, 32, 3), j * 8, np.uint8))  # frame j has grey level 8 j
    writer.release()
    out = cut_clip(tmp_path / "v.avi", 1.0, 1.0, tmp_path / "c.mp4")
    frames, fps = read_video_frames(str(out))
    assert fps == pytest.approx(FPS, abs=0.01) and len(frames) == round(1.0 * FPS)
    first = int(round(1.0 * FPS))  # the first frame at or after 1.0 s
    np.testing.assert_allclose(frames.reshape(len(frames), -1).mean(1), 8 * np.arange(first, first + len(frames)),
                               atol=4)


# ------------------------------------------------------------------------------------------- V2M-bench layout
def _v2m_stand_in(root, n=3, seconds=2.0, fps=10.0):
    """A small folder laid out like VidMuse's V2M-bench: video/<id>.mp4 + audio/<id>.wav, paired by name; the last
    video has no music, and one stray music file has no video."""
    import cv2

    rng = np.random.default_rng(0)
    (root / "video").mkdir(parents=True)
    (root / "audio").mkdir()
    ids = [f"yt{i:02d}" for i in range(n)]
    for k, cid in enumerate(ids):
        writer = cv2.VideoWriter(str(root / "video" / f"{cid}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (64, 64))
        for j in range(int(seconds * fps)):
            frame = np.full((64, 64, 3), 30, np.uint8)
            x = 8 + (j % 5) * 8 + k
            frame[20:36, x: x + 16] = 200
            writer.write(frame)
        writer.release()
        if k < n - 1:
            t = np.arange(int(seconds * 32000)) / 32000
            _write_wav(root / "audio" / f"{cid}.wav", (0.3 * np.sin(2 * np.pi * (220 + 110 * k) * t)
                                                         + 0.02 * rng.normal(size=t.size)).astype(np.float32), 32000)
    _write_wav(root / "audio" / "no_video.wav", np.zeros(32000, np.float32), 32000)
    return ids


def test_read_v2m_bench_pairs_by_name_and_reads_its_data_jsonl(tmp_path):
    from vmas.evaluation import load_clips, read_v2m_bench

    ids = _v2m_stand_in(tmp_path / "bench")
    clips = read_v2m_bench(tmp_path / "bench")
    assert [c["id"] for c in clips] == ids  # one clip per video; the stray music file is ignored
    assert [Path(c["audio"]).name if c["audio"] else None for c in clips] == ["yt00.wav", "yt01.wav", None]
    assert all(Path(c["video"]).stem == c["id"] and c["start"] == 0.0 for c in clips)
    # VidMuse's data.jsonl (egs/V2M/build_data_jsonl.py fields), relative paths resolved against the folder
    rows = [{"path": f"audio/{i}.wav", "video_path": f"video/{i}.mp4", "duration": 2.0, "sample_rate": 32000}
            for i in ids[:2]]
    (tmp_path / "bench" / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    clips = load_clips(tmp_path / "bench", "v2m-bench")
    assert [c["id"] for c in clips] == ids[:2] and clips[0]["duration"] == 2.0
    assert Path(clips[1]["audio"]) == tmp_path / "bench" / "audio" / "yt01.wav"
    with pytest.raises(VmasError, match="video/"):
        read_v2m_bench(tmp_path / "bench" / "audio")
    with pytest.raises(VmasError, match="layout"):
        load_clips(tmp_path / "bench", "v2m")


def test_benchmark_v2m_bench_layout_prints_the_papers_table(tmp_path):
    """tools/benchmark.py --layout v2m-bench on the stand-in: generation for every video, paired metrics on the
    clips with music, the table in the papers' column order, missing backbones listed with their reason."""
    ids = _v2m_stand_in(tmp_path / "bench")
    out = tmp_path / "run"
    env = dict(__import__("os").environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), "--layout", "v2m-bench",
                           "--manifest", str(tmp_path / "bench"), "--model", str(ROOT / "vmas/assets/vmas-synthmv-demo.pt"),
                           "--out", str(out), "--metrics", "fad,kl,fd,imagebind,mv_align", "--fad-backbone", "mel",
                           "--kl-classifier", "mel", "--top-k", "10", "--no-progress"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.stem for p in (out / "generated").glob("*.wav")) == ids
    report = json.loads((out / "report.json").read_text())
    meta = report["meta"]
    assert meta["layout"] == {"name": "v2m-bench", "clips": 3, "without_music": ["yt02"]}
    assert meta["clips"]["kl"] == 2 and meta["clips"]["fad"]["reference"] == 2 and meta["clips"]["fad"]["generated"] == 3
    assert meta["clips"]["mv_align"] == 3 and 0.0 <= report["av_align_reference"]
    assert "fd" not in report and "hear21passt" in meta["skipped"]["fd"]  # PaSST embeddings missing: never faked
    assert "imagebind" not in report and "pytorchvideo" in meta["skipped"]["imagebind"]
    md = (out / "report.md").read_text()
    head = "| method | FAD ↓ | KL ↓ | FD ↓ | IB ↑ | AV-Align (ref.) ↑ | MV-Align (1:1) ↑ |"
    assert head in md
    row = next(line for line in md.splitlines() if line.startswith("| vmas |")).split("|")[2:-1]
    assert [c.strip() for c in row] == [f"{report['fad']:.3f}", f"{report['kl']:.3f}", "—", "—",
                                        f"{report['av_align_reference']:.3f}", f"{report['mv_align']:.3f}"]
    assert "- FD: PaSST embeddings need" in md and "- ImageBind score: no maintained PyPI package" in md
    assert md.count("PaSST embeddings need") == 1  # listed once, under the papers' table


def test_passt_embedder_windows_and_missing_package():
    from vmas.metrics.embeddings import PasstEmbedder, build_embedder

    class _Stub(torch.nn.Module):  # stands in for hear21passt's model: [1, N] -> [1, 768] (mean and length)
        def forward(self, x):
            return torch.cat([x.mean(1, keepdim=True), torch.full((1, 1), float(x.shape[1])),
                              torch.zeros(1, 766)], 1)

    emb = PasstEmbedder(model=_Stub())
    wav = np.concatenate([np.full(320000, 0.5), np.full(320000, -0.25), np.full(3000, 1.0)]).astype(np.float32)
    out = emb.embed(wav, 32000)  # two 10 s windows; the 0.09 s tail (<= 0.15 s) is dropped
    np.testing.assert_allclose(out[:, :2], [[0.5, 320000], [-0.25, 320000]], rtol=1e-6)
    np.testing.assert_allclose(emb.embed(wav[:480000], 32000)[:, :2], [[0.5, 320000], [-0.25, 160000]], rtol=1e-6)
    try:
        import hear21passt  # noqa: F401
    except ImportError:
        with pytest.raises(CheckpointError, match="hear21passt"):
            build_embedder("passt")


def test_fd_is_the_frechet_distance_on_its_own_backbone(tmp_path):
    from vmas.evaluation import evaluate

    rng = np.random.default_rng(1)
    for d, scale in (("ref", 0.1), ("gen", 0.3)):
        (tmp_path / d).mkdir()
        for i in range(2):
            _write_wav(tmp_path / d / f"c{i}.wav", rng.normal(size=32000) * scale, 16000)
    report = evaluate(tmp_path / "gen", reference=tmp_path / "ref", metrics=["fad", "fd", "kl"], fad_backbone="mel",
                      fd_backbone="mel", progress=False)
    assert report["fd"] == pytest.approx(report["fad"]) and report["fd"] > 0  # folders are enough for both
    assert "needs --manifest" in report["meta"]["skipped"]["kl"] and "fd: mel-stats" in report["meta"]["fallbacks"][1]
