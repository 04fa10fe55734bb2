"""Unpaired music (issue 25): music-only clips (no video) train the tag branch beside paired clips.

Checked: audio files + tags -> clips -> shards without frames (tags from sidecars, captions and embedded metadata,
rejects with reasons, resumable shards); music-only beat weights are 1 at the music's own onsets and λ elsewhere;
the loader interleaves paired and music-only clips at the exact configured ratio and resumes mid-stream; a
music-only clip trains with the learned null video condition, never lends its blank picture and has no contrastive
pair; ``data.unpaired_fraction=0`` reproduces paired-only training bitwise; real recorded music goes through the
whole path to training steps.
"""
from __future__ import annotations

import functools
import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from vmas.config import load_config
from vmas.data import loader, shards
from vmas.data.loader import is_unpaired
from vmas.data.music_only import curate_music_folder, discover_music, embedded_tags

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"
SR = 32000


def debug_cfg(tmp_path, *overrides):
    return load_config(DEBUG, [f"train.out_dir={tmp_path}", "train.engine=torch", "train.progress=false",
                               "data.curation.vocal_removal=false", *overrides])


def clicks(seconds: float, times, sr: int = SR) -> np.ndarray:
    """Quiet noise floor with short decaying 1 kHz bursts at ``times`` (s): onsets a detector cannot miss."""
    rng = np.random.default_rng(0)
    wav = 0.01 * rng.standard_normal(int(seconds * sr)).astype(np.float32)
    n = int(0.05 * sr)
    burst = (np.sin(2 * np.pi * 1000 * np.arange(n) / sr) * np.exp(-np.arange(n) / (0.01 * sr))).astype(np.float32)
    for t in times:
        i = int(t * sr)
        wav[i: i + n] += 0.8 * burst[: len(wav) - i]
    return wav


def write_audio(path: Path, wav: np.ndarray, sr: int = SR, metadata=None) -> Path:
    """Mono float wav -> an audio file in the format of ``path``'s suffix (PyAV), with container metadata."""
    import av

    codec = {".flac": "flac", ".wav": "pcm_s16le"}[path.suffix]
    with av.open(str(path), "w") as c:
        for k, v in (metadata or {}).items():
            c.metadata[k] = v
        s = c.add_stream(codec, rate=sr)
        s.layout = "mono"
        pcm = (np.clip(wav, -1, 1) * 32767).astype(np.int16)[None]  # [1, N]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = sr
        for packet in s.encode(frame):
            c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
    return path


def fake_encoder():
    """EncodeFn stand-in (the codec is tested elsewhere): codes from the clip's loudness, deterministic."""
    def encode(wav):  # [1, 1, N] -> [1, 4, N // 640]
        frames = wav[..., : wav.shape[-1] // 640 * 640].reshape(1, 1, -1, 640).abs().mean(-1)  # [1, 1, T]
        return (frames * 1000).long().clamp(0, 63).expand(1, 4, -1)
    return encode


# --------------------------------------------------------------------------------------------------- interleave
def test_interleave_is_exact():
    assert [is_unpaired(i, 1 / 3) for i in range(6)] == [False, False, True, False, False, True]
    assert [is_unpaired(i, 0.5) for i in range(4)] == [False, True, False, True]
    for f in (0.1, 0.25, 1 / 3, 0.7):
        for n in (1, 7, 30, 200):  # after n clips exactly floor(n f) are music-only
            assert sum(is_unpaired(i, f) for i in range(n)) == math.floor(n * f + 1e-9)


# ------------------------------------------------------------------------------------------- folder -> shards
@pytest.fixture(scope="module")
def music_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("music")
    write_audio(root / "a.wav", clicks(5.0, [0.5, 1.5, 3.0, 4.0]))  # 2 debug clips of 2.5 s
    (root / "a.tags.txt").write_text("Piano, Calm, 90 bpm")
    write_audio(root / "b.flac", clicks(2.6, [1.0]), metadata={"genre": "Ambient; Chill", "title": "Night Rain"})
    write_audio(root / "c.wav", clicks(6.0, [0.7, 2.0]))
    (root / "c.caption.txt").write_text("A mellow guitar tune. Relaxed")
    sil = clicks(5.0, [0.5])
    sil[int(2.5 * SR):] = 0.0  # second clip silent
    write_audio(root / "d.wav", sil)
    write_audio(root / "short.wav", clicks(1.0, [0.2]))
    (root / "broken.mp3").write_bytes(b"not audio at all")
    return root


def test_tags_from_sidecars_captions_and_metadata(music_folder):
    items = {Path(i.path).name: i for i in discover_music([music_folder], extra_tags=["instrumental"])}
    assert set(items) == {"a.wav", "b.flac", "c.wav", "d.wav", "short.wav", "broken.mp3"}
    assert items["a.wav"].tags == "piano, calm, 90 BPM, instrumental"  # sidecar, through the cleaner
    assert embedded_tags(music_folder / "b.flac") == ["ambient", "chill", "night", "rain"]
    assert items["b.flac"].tags == "ambient, chill, night, rain, instrumental"
    assert items["c.wav"].tags == "a mellow guitar tune. relaxed, instrumental"  # caption, cleaner alone
    llm = {"A mellow guitar tune. Relaxed": ["guitar", "relaxed"]}
    got = discover_music([music_folder / "c.wav"], caption_to_tags=lambda text: llm[text])
    assert got[0].tags == "guitar, relaxed"


def test_music_folder_to_shards_without_frames(music_folder, tmp_path):
    cfg = debug_cfg(tmp_path, "data.curation.val_fraction=0", "data.curation.test_fraction=0")
    out = tmp_path / "music"
    summary = curate_music_folder(discover_music([music_folder]), out, cfg.data)
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    rejects = {(Path(r["audio"]).name, r["reason"]) for r in map(json.loads, (out / "rejects.jsonl").open())}
    assert rejects == {("short.wav", "too_short"), ("broken.mp3", "unreadable"), ("d.wav", "silent_audio")}
    # 5 s -> 2 clips, 2.6 s -> 1, 6 s -> 2, d: 1 of 2 (silent second)
    assert [(Path(r["audio"]).stem, r["start"]) for r in rows] == [
        ("a", 0.0), ("a", 2.5), ("b", 0.0), ("c", 0.0), ("c", 2.5), ("d", 0.0)]
    assert all(r["video"] is None for r in rows) and summary["clips"] == 6 and summary["rejects"] == 3

    _, align = shards.default_factories(cfg.data, cfg.loss, make_codec=None)  # the real music-only alignment
    enc = fake_encoder  # an encoder factory, as write_shards wants
    written = shards.write_shards(out / "manifest.jsonl", out / "shards", cfg.data, enc, align, splits=["train"])
    assert written["clips"] == 6 and written["rejected"] == 0
    again = shards.write_shards(out / "manifest.jsonl", out / "shards", cfg.data, enc, align, splits=["train"])
    assert again["shards_skipped"] == again["shards"]  # resumable: finished shards are kept

    with tarfile.open(out / "shards" / "train-000000.tar") as tar:
        names = tar.getnames()
    assert "a_000000000.codes.npy" in names and not any("frames" in n for n in names)
    raw = next(loader.iter_tar_samples(str(out / "shards" / "train-000000.tar")))
    sample = loader.decode_sample(raw, cfg.data)
    d = cfg.data
    assert not sample["has_video"] and sample["frames"].shape == (d.num_frames, d.image_size, d.image_size, 3)
    assert int(sample["frames"].abs().sum()) == 0 and int(sample["motion"].abs().sum()) == 0
    assert sample["tags"] == "piano, calm, 90 BPM"
    # W = 1 exactly at the music's own onsets (among them the bursts at 0.5 s and 1.5 s = frames 25 and 75), λ
    # elsewhere; the onsets are those of vmas.alignment.music_beats on the clip's audio
    from vmas.alignment import music_beats
    from vmas.data import media

    beats = sample["music_beats"]
    wav = media.read_audio(music_folder / "a.wav", sr=SR, duration=d.clip_seconds)
    assert torch.equal(beats, music_beats(wav, SR, 50, round(d.clip_seconds * 50)))
    on = torch.nonzero(beats).flatten().tolist()
    assert any(abs(t - 25) <= 2 for t in on) and any(abs(t - 75) <= 2 for t in on) and len(on) <= 4
    lam = cfg.loss.beat_lambda
    assert torch.equal(sample["beat_weights"], torch.where(beats, torch.tensor(1.0), torch.tensor(lam)))


# ------------------------------------------------------------------------------------------------ mixed loader
def _tiny_shards(root: Path, cfg, n: int, music: bool, prefix: str):
    """One shard of ``n`` decodable debug-size clips; music-only ones have no frames and ``has_video`` false."""
    d = cfg.data
    T, Ta, H = d.num_frames, round(d.clip_seconds * d.frame_rate), d.image_size
    rng = np.random.default_rng(1 if music else 0)
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "train-000000.tar", "w") as tar:
        for j in range(n):
            members = {
                "codes.npy": shards._npy(rng.integers(0, 64, (4, Ta)).astype(np.int16)),
                "music_beats.npy": shards._npy(rng.random(Ta) < 0.1),
                "beat_weights.npy": shards._npy(np.ones(Ta, np.float32)),
                "tags.txt": b"bells, bright" if music else b"piano",
                "json": json.dumps({"start": float(j), "has_video": not music}).encode(),
            }
            if not music:
                members["frames.jpgs"] = shards.encode_frames(rng.integers(0, 255, (T, H, H, 3), dtype=np.uint8),
                                                              "jpg", 50)
                members["motion.npy"] = shards._npy(rng.random(T - 1).astype(np.float32))
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{prefix}{j:03d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(root / "train-*.tar")


@pytest.fixture(scope="module")
def mixed_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    cfg = load_config(DEBUG)
    return _tiny_shards(root / "paired", cfg, 10, False, "p"), _tiny_shards(root / "music", cfg, 4, True, "m")


def _mixed_cfg(tmp_path, mixed_shards, *overrides):
    paired, music = mixed_shards
    return debug_cfg(tmp_path, "train.synthetic=false", f"data.train_shards={paired}", "data.shuffle_buffer=4",
                     f"data.unpaired_shards={music}", *overrides)


def test_mixed_loader_ratio_and_resume(tmp_path, mixed_shards):
    cfg = _mixed_cfg(tmp_path, mixed_shards, "data.unpaired_fraction=0.3333333333333333", "data.batch_size=3")
    it = iter(loader.build_loader(cfg.data, train=True, repeat=True, track_position=True))
    batches = [next(it) for _ in range(8)]  # 24 clips: several epochs of the 4 music-only ones
    flags = [bool(v) for b in batches for v in b["has_video"]]
    assert flags == [not is_unpaired(i, 1 / 3) for i in range(24)]
    for b in batches:  # music-only clips are the music shard's, with zero frames; paired ones keep theirs
        for key, has, fr in zip(b["key"], b["has_video"], b["frames"]):
            assert key.startswith("p" if has else "m") and (int(fr.sum()) > 0) == bool(has)
    # resume after batch 3 from its position: the same later batches
    dl = loader.build_loader(cfg.data, train=True, repeat=True, track_position=True)
    pos = batches[2]["__pos__"]
    dl.dataset.resume_from({pos["reader"]: pos})
    resumed = iter(dl)
    assert [next(resumed)["key"] for _ in range(5)] == [b["key"] for b in batches[3:]]


def test_fraction_zero_is_the_paired_loader(tmp_path, mixed_shards):
    cfg0 = _mixed_cfg(tmp_path, mixed_shards, "data.unpaired_fraction=0", "data.batch_size=2")
    ds = loader.build_loader(cfg0.data, train=True, repeat=True).dataset
    assert type(ds) is loader.ShardStream  # no wrapper at all
    with pytest.raises(Exception, match="unpaired_shards is empty"):
        loader.build_loader(debug_cfg(tmp_path, f"data.train_shards={mixed_shards[0]}",
                                      "data.unpaired_fraction=0.5").data, train=True)
    from vmas.errors import ConfigError
    from vmas.solvers.checks import check_config

    base = ("train.synthetic=false", f"data.train_shards={mixed_shards[0]}")
    with pytest.raises(ConfigError, match=r"data.unpaired_shards: 1 of 1 shards do not exist"):
        check_config(debug_cfg(tmp_path, *base, "data.unpaired_fraction=0.5",
                               f"data.unpaired_shards={tmp_path}/nope-000000.tar"), 1)
    with pytest.raises(ConfigError, match=r"data.unpaired_fraction must be in \[0, 1\)"):
        check_config(debug_cfg(tmp_path, *base, "data.unpaired_fraction=1.0"), 1)


# ------------------------------------------------------------------------------------------------- model, loss
def _model(cfg):
    from vmas.builders import build_model

    torch.manual_seed(0)
    return build_model(cfg)


def test_music_only_clip_sees_the_null_video_and_no_contrastive_pair(tmp_path):
    cfg = debug_cfg(tmp_path, "model.lm.video_swap_prob=1.0")
    model = _model(cfg)
    d = cfg.data
    B, T, Ta = 3, d.num_frames, round(d.clip_seconds * d.frame_rate)
    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 255, (B, T, d.image_size, d.image_size, 3), generator=g, dtype=torch.uint8)
    codes = torch.randint(0, model.card, (B, model.n_q, Ta), generator=g)
    no_video = torch.tensor([False, True, False])
    other = frames.clone()
    other[1] = 255 - other[1]  # a different picture for the music-only clip
    model.eval()
    with torch.no_grad():
        a = model(frames, codes, no_video=no_video)
        b = model(other, codes, no_video=no_video)
        forced = model(frames, codes, drop_video=no_video)
    assert torch.equal(a.logits, b.logits)  # its picture is never seen
    assert torch.equal(a.logits, forced.logits)  # = the learned null video condition
    assert a.video_kept.tolist() == [True, False, True]  # no contrastive pair
    model.train()  # training draws: swaps never lend the blank picture; all-paired no_video changes nothing
    with torch.no_grad():
        torch.manual_seed(3)
        none = model(frames, codes)
        torch.manual_seed(3)
        paired = model(frames, codes, no_video=torch.zeros(B, dtype=torch.bool))
        torch.manual_seed(3)
        mixed = model(frames, codes, no_video=no_video)
        torch.manual_seed(3)
        mixed_other = model(other, codes, no_video=no_video)
    assert torch.equal(none.logits, paired.logits) and torch.equal(none.video_kept, paired.video_kept)
    assert not mixed.video_kept[1] and torch.equal(mixed.logits, mixed_other.logits)  # clip 2 would borrow clip 1's


def test_beat_weights_of_music_only_clips_come_from_their_onsets():
    from vmas.alignment import beat_weights, video_beats
    from vmas.config import DataConfig, LossConfig
    from vmas.solvers.inputs import run_beat_weights

    data, loss = DataConfig(clip_seconds=2.0, num_frames=19), LossConfig(beat_lambda=0.25)
    bm = torch.zeros(2, 100, dtype=torch.bool)
    bm[:, [10, 40, 70]] = True
    motion = torch.zeros(2, 18)
    motion[:, 4] = 5.0  # one video beat near frame 4 / 9.6 s * 50 = ~21: not near any onset
    batch = {"music_beats": bm, "motion": motion, "has_video": torch.tensor([True, False]),
             "beat_weights": torch.ones(2, 100)}
    w = run_beat_weights(batch, loss, data)
    vb = video_beats(motion[0], num_frames=100, window=loss.beat_window, fps=data.fps, frame_rate=data.frame_rate)
    assert torch.equal(w[0], beat_weights(bm[0], vb, delta=loss.beat_delta, lam=0.25))  # paired: overlap rule
    want = torch.full((100,), 0.25)
    want[[10, 40, 70]] = 1.0
    assert torch.equal(w[1], want)  # music-only: 1 at its own onsets, λ elsewhere


# ------------------------------------------------------------------------------------------------------ training
def _fit(cfg):
    from vmas.solvers.solver import Solver

    return Solver(cfg).fit()


def test_fraction_zero_reproduces_paired_training_bitwise(tmp_path, mixed_shards):
    common = ("optim.max_steps=3", "train.save_every=100", "data.batch_size=3")
    paired, music = mixed_shards
    today = _fit(debug_cfg(tmp_path / "a", "train.synthetic=false", f"data.train_shards={paired}",
                           "data.shuffle_buffer=4", *common))
    off = _fit(_mixed_cfg(tmp_path / "b", mixed_shards, "data.unpaired_fraction=0", *common))
    assert off["loss_curve"] == today["loss_curve"]  # bitwise
    mixed = _fit(_mixed_cfg(tmp_path / "c", mixed_shards, "data.unpaired_fraction=0.3333333333333333", *common))
    assert all(math.isfinite(x) for x in mixed["loss_curve"]) and mixed["loss_curve"] != today["loss_curve"]


def test_real_music_trains_through_the_music_only_path(tmp_path, real_music):
    from vmas.builders import build_codec

    cfg = debug_cfg(tmp_path, "data.curation.max_clips_per_video=2", "data.curation.val_fraction=0",
                    "data.curation.test_fraction=0")
    out = tmp_path / "music"
    summary = curate_music_folder(discover_music(real_music[:2], extra_tags=["game soundtrack"]), out, cfg.data)
    assert summary["clips"] >= 2
    enc, align = shards.default_factories(cfg.data, cfg.loss, functools.partial(build_codec, cfg.model.codec))
    written = shards.write_shards(out / "manifest.jsonl", out / "shards", cfg.data, enc, align, splits=["train"])
    assert written["clips"] == summary["clips"]
    raw = next(loader.iter_tar_samples(str(out / "shards" / "train-000000.tar")))
    sample = loader.decode_sample(raw, cfg.data)
    assert not sample["has_video"] and "game soundtrack" in sample["tags"] and sample["music_beats"].any()
    # a user with only a music corpus: every clip music-only
    result = _fit(debug_cfg(tmp_path / "run", "train.synthetic=false", f"data.train_shards={out}/shards/train-*.tar",
                            "optim.max_steps=2", "train.save_every=100", "data.shuffle_buffer=2"))
    assert len(result["loss_curve"]) == 2 and all(math.isfinite(x) for x in result["loss_curve"])
