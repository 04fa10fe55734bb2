"""Data path end to end: curation -> manifest/rejects -> shards -> streaming loader (issue 6).

Source videos are tiny mp4s (H.264 + AAC) written here with PyAV: a scene whose colour changes every 0.5 s, with
white flashes at known times and a loud noise burst in the audio at exactly the same times. The flashes and bursts
let the test check alignment numerically after the whole pipeline: the flash frame times (j / fps) and the loud
code frame times (t / 50) of every loaded clip must agree with each other and with the generated event times.
"""
import dataclasses
import functools
import json
import os
import random
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vmas.config import LossConfig, load_config
from vmas.data import curation, loader, shards

ROOT = Path(__file__).resolve().parents[1]
SR_SRC = 32000
FPS_SRC = 24
FLASH = 0.125  # s: longer than one 9.6 fps sampling period, so every flash is seen by the loader
HOP = 640  # 32 kHz / 50 Hz


def write_video(path, seconds, flashes=(), size=(48, 40), static=False, silent=False, audio=True, seed=0):
    """mp4 with H.264 video (W x H = size) and AAC audio; flash/burst intervals [f, f + FLASH)."""
    rng = np.random.default_rng(seed)
    W, H = size
    palette = rng.integers(0, 160, size=(int(seconds * 2) + 2, 3))
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=FPS_SRC)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.options = {"crf": "18"}
        if audio:
            aus = out.add_stream("aac", rate=SR_SRC)
            aus.layout = "mono"
        for i in range(int(round(seconds * FPS_SRC))):
            t = i / FPS_SRC
            colour = palette[0] if static else palette[int(t * 2)]
            img = np.empty((H, W, 3), np.uint8)
            img[:] = colour
            if not static:
                img[: H // 2, : W // 2] = 255 - colour  # layout, so frames differ in more than colour
            if any(f <= t < f + FLASH for f in flashes):
                img[:] = 255
            out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(vs.encode())
        if audio:
            n = int(seconds * SR_SRC)
            t = np.arange(n) / SR_SRC
            wav = np.zeros(n, np.float32) if silent else 0.05 * np.sin(2 * np.pi * 220 * t).astype(np.float32)
            for f in flashes:
                a, b = int(f * SR_SRC), int((f + FLASH) * SR_SRC)
                wav[a:b] += 0.8 * rng.uniform(-1, 1, b - a).astype(np.float32)
            frame_len = 1024
            for k in range(0, n, frame_len):
                chunk = wav[k: k + frame_len]
                frame = av.AudioFrame.from_ndarray(chunk[None], format="flt", layout="mono")
                frame.sample_rate = SR_SRC
                frame.pts = k
                frame.time_base = Fraction(1, SR_SRC)
                out.mux(aus.encode(frame))
            out.mux(aus.encode())
    return path


def energy_encoder():
    """Stand-in codec whose codes are the per-hop loudness, so loud frames are visible in the codes [B, K, T]."""

    def encode(wav):
        B, _, N = wav.shape
        T = -(-N // HOP)
        x = torch.nn.functional.pad(wav, (0, T * HOP - N)).reshape(B, 1, T, HOP)
        level = (x.square().mean(-1).sqrt() * 100).clamp(max=63).long()  # [B, 1, T]
        return level.expand(B, 4, T) + torch.arange(4).view(1, 4, 1) * 0  # [B, K, T]

    return encode


def farneback_align(cfg):
    d = cfg.data
    return shards.alignment_fn(LossConfig(motion_flow="farneback"), d.sample_rate, d.fps, float(d.frame_rate),
                               round(d.clip_seconds * d.frame_rate))


# Good videos: (name, seconds, flash times). Debug clips are 2.5 s -> 3 clips from a 7.6 s video.
GOOD = {"alpha": (7.6, [0.5, 3.1, 5.9]), "bravo": (7.6, [1.2, 2.9, 6.6]), "charlie": (5.2, [0.8, 4.4])}


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "configs" / "debug.yaml", ["data.curation.vocal_removal=false"])


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for i, (name, (sec, flashes)) in enumerate(GOOD.items()):
        write_video(root / f"{name}.mp4", sec, flashes, seed=i)
        (root / f"{name}.tags.txt").write_text(f"synth, {name}")
    write_video(root / "static.mp4", 5.2, static=True)
    write_video(root / "silent.mp4", 5.2, silent=True, seed=7)
    write_video(root / "short.mp4", 1.5, seed=8)
    write_video(root / "mute.mp4", 5.2, audio=False, seed=9)
    (root / "corrupt.mp4").write_bytes(os.urandom(3000))
    return root


@pytest.fixture(scope="module")
def curated(cfg, sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("curated")
    items = curation.discover_inputs([sources])
    summary = curation.curate(items, out, cfg.data, split_overrides={"alpha": "train", "bravo": "train", "charlie": "val"})
    return out, summary


@pytest.fixture(scope="module")
def sharded(cfg, curated, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    summary = shards.write_shards(curated[0] / "manifest.jsonl", out, cfg.data, energy_encoder,
                                  lambda: farneback_align(cfg))
    return out, summary


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ----------------------------------------------------------------------------------------------- curation
def test_manifest_and_rejects(curated):
    out, summary = curated
    rows = _rows(out / "manifest.jsonl")
    # alpha, bravo: 3 clips each (7.6 s / 2.5 s); charlie: 2 clips; every clip is 2.5 s and starts on the grid.
    assert sorted((r["source_id"], r["start"]) for r in rows) == sorted(
        [("alpha", s) for s in (0.0, 2.5, 5.0)] + [("bravo", s) for s in (0.0, 2.5, 5.0)]
        + [("charlie", s) for s in (0.0, 2.5)])
    assert all(r["duration"] == 2.5 and r["audio"] is None for r in rows)
    assert {r["source_id"]: r["tags"] for r in rows}["bravo"] == "synth, bravo"
    # split by video: each video's clips share one split; the hand-picked one wins.
    by_video = {}
    for r in rows:
        by_video.setdefault(r["source_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_video.values()) and by_video["charlie"] == {"val"}
    reasons = {r["source_id"]: r["reason"] for r in _rows(out / "rejects.jsonl")}
    assert reasons == {"corrupt": "unreadable", "short": "too_short", "static": "low_visual_variety",
                       "mute": "no_audio", "silent": "silent_audio"}
    silent = [r for r in _rows(out / "rejects.jsonl") if r["reason"] == "silent_audio"]
    assert [r["start"] for r in silent] == [0.0, 2.5]  # silence is judged per clip
    assert summary["clips"] == 8 and summary["rejects"] == 6 and summary["videos"] == 8
    assert summary["reject_reasons"] == {"unreadable": 1, "too_short": 1, "low_visual_variety": 1, "no_audio": 1,
                                         "silent_audio": 2}


def test_clip_planning_and_split_hash():
    assert curation.clip_starts(7.6, 2.5) == [0.0, 2.5, 5.0]
    assert curation.clip_starts(10.0, 2.5) == [0.0, 2.5, 5.0, 7.5]  # exact multiple keeps the last clip
    assert curation.clip_starts(30.0, 10.0, max_clips=2) == [0.0, 10.0]
    ids = [f"vid{i}" for i in range(4000)]
    splits = [curation.assign_split(i, 0.1, 0.2, seed=3) for i in ids]
    assert splits == [curation.assign_split(i, 0.1, 0.2, seed=3) for i in ids]  # stable
    frac = {s: splits.count(s) / len(ids) for s in curation.SPLITS}
    assert abs(frac["test"] - 0.2) < 0.03 and abs(frac["val"] - 0.1) < 0.03
    assert curation.rms_db(np.full(100, 0.1)) == pytest.approx(-20.0)


def test_variety_scores_by_hand():
    # Two flat frames: red (1,0,0) and blue (0,0,1); pixel embedding centres on 0.5, so vectors are
    # (+.5,-.5,-.5) and (-.5,-.5,+.5) per pixel: cosine = (-.25 + .25 - .25) / .75 = -1/3.
    red = np.zeros((1, 16, 16, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((1, 16, 16, 3), np.uint8)
    blue[..., 2] = 255
    frames = np.concatenate([red, blue, red])
    emb = curation.pixel_embedding(frames)
    # pairs: (r,b) -1/3, (r,r) 1, (b,r) -1/3 -> mean over the 3 unordered pairs = 1/9
    assert curation.mean_pairwise_cosine(emb) == pytest.approx(1 / 9, abs=1e-6)
    # Histograms: disjoint colours -> 0, identical -> 1 (Bhattacharyya coefficient).
    h = curation.histogram_embedding(frames)
    assert curation.mean_pairwise_cosine(h) == pytest.approx(1 / 3, abs=1e-6)


def test_pretrained_embedder_loads_local_timm_weights(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = timm.create_model("test_resnet", pretrained=False, num_classes=0).eval()
    path = tmp_path / "test_resnet.safetensors"
    save_file(ref.state_dict(), str(path))
    emb = curation.build_frame_embedder("timm:test_resnet", str(path))
    frames = np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3), dtype=np.uint8)
    got = emb(frames)
    x = torch.nn.functional.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255,
                                        size=(emb.size, emb.size), mode="bilinear", antialias=True)
    x = (x - torch.tensor(emb.mean).view(1, 3, 1, 1)) / torch.tensor(emb.std).view(1, 3, 1, 1)
    with torch.no_grad():
        want = ref(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(curation.ConfigError, match="embedder_weights"):
        curation.build_frame_embedder("timm:test_resnet", str(tmp_path / "missing.pth"))


def test_pretrained_embedder_loads_local_torchvision_weights(tmp_path):
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.get_model("resnet18", weights=None).eval()
    torch.save(ref.state_dict(), tmp_path / "resnet18.pth")
    emb = curation.build_frame_embedder("torchvision:resnet18", str(tmp_path / "resnet18.pth"))
    frames = np.random.default_rng(1).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    got = emb(frames)  # pooled 512-d features: the classifier is dropped
    x = torch.nn.functional.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255, size=(224, 224),
                                        mode="bilinear", antialias=True)
    x = (x - torch.tensor(emb.mean).view(1, 3, 1, 1)) / torch.tensor(emb.std).view(1, 3, 1, 1)
    ref.fc = torch.nn.Identity()
    with torch.no_grad():
        want = ref(x)
    assert got.shape == (2, 512)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_vocal_removal_missing_package_is_one_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "demucs" else real(name, *a))
    with pytest.raises(curation.DataError, match="--no-vocal-removal"):
        curation.DemucsVocalRemover("htdemucs")


# ----------------------------------------------------------------------------------------------- shards
def test_shards_are_webdataset_tars(cfg, sharded):
    out, summary = sharded
    # train: alpha + bravo = 6 clips -> shards of 4 + a partial 2; val: charlie = 2 clips.
    index = json.loads((out / "train.index.json").read_text())
    assert [s["num_clips"] for s in index["shards"]] == [4, 2]
    assert json.loads((out / "val.index.json").read_text())["num_clips"] == 2
    assert summary["clips"] == 8 and summary["rejected"] == 0 and summary["bytes_per_clip"] > 0
    with tarfile.open(out / "train-000000.tar") as tar:
        names = tar.getnames()
    key = names[0].split(".")[0]
    assert sorted(n[len(key) + 1:] for n in names if n.startswith(key + ".")) == sorted(
        ["frames.mp4", "codes.npy", "music_beats.npy", "motion.npy", "beat_weights.npy", "tags.txt", "json"])
    import webdataset as wds  # the reference reader sees the same samples

    keys = [s["__key__"] for s in wds.WebDataset(str(out / "train-000000.tar"), shardshuffle=False)]
    assert keys == [n.split(".")[0] for n in names[::7]]


@pytest.mark.parametrize("fmt", ["mp4", "jpg"])
def test_frame_codecs_round_trip(fmt):
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 255, (6, 1, 1, 3), dtype=np.uint8), 32 * 32, axis=1).reshape(6, 32, 32, 3)
    data = shards.encode_frames(frames, fmt, quality=18 if fmt == "mp4" else 95)
    back = shards.decode_frames(data, fmt)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames).mean() < 6  # lossy, but close on flat colours


def test_resume_after_crash_skips_finished_shards(cfg, curated, tmp_path):
    manifest = curated[0] / "manifest.jsonl"
    calls = []

    def crash_after_first(res):
        calls.append(res["shard"])
        raise KeyboardInterrupt  # a kill right after shard 1 is finished

    (tmp_path / "train-000001.tar.tmp.999").write_bytes(b"half a shard")  # leftover of an older crash
    with pytest.raises(KeyboardInterrupt):
        shards.write_shards(manifest, tmp_path, cfg.data, energy_encoder, lambda: farneback_align(cfg),
                            on_shard_done=crash_after_first)
    first = tmp_path / calls[0]
    assert first.is_file() and (tmp_path / f"{calls[0]}.done").is_file()
    assert not (tmp_path / "train-000001.tar").exists()
    mtime = first.stat().st_mtime_ns
    summary = shards.write_shards(manifest, tmp_path, cfg.data, energy_encoder, lambda: farneback_align(cfg))
    assert summary["shards_skipped"] == 1 and summary["shards_written"] == 2 and summary["clips"] == 8
    assert first.stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob("*.tmp.*"))
    again = shards.write_shards(manifest, tmp_path, cfg.data, energy_encoder, lambda: farneback_align(cfg))
    assert again["shards_written"] == 0 and again["shards_skipped"] == 3


# ----------------------------------------------------------------------------------------------- loader
def test_loader_batches_are_shaped_and_aligned(cfg, sharded):
    out, _ = sharded
    d = cfg.data
    T, Ta = d.num_frames, round(d.clip_seconds * d.frame_rate)
    dl = loader.build_loader(d, str(out / "*.tar"), train=False, batch_size=3)
    batches = list(dl)
    assert [len(b["key"]) for b in batches] == [3, 3, 2]  # all 8 clips, last batch partial in eval mode
    assert loader.num_clips(str(out / "*.tar")) == 8
    assert loader.num_clips(f"{out}/train-{{000000..000001}}.tar::{out}/val-000000.tar") == 8
    assert len(loader.expand_shards(f"{out}/train-{{000000..000001}}.tar::{out}/val-*.tar")) == 3
    b = batches[0]
    assert b["frames"].dtype == torch.uint8 and b["frames"].shape == (3, T, 32, 32, 3)
    assert b["codes"].dtype == torch.long and b["codes"].shape == (3, 4, Ta)
    assert b["music_beats"].dtype == torch.bool and b["music_beats"].shape == (3, Ta)
    assert b["motion"].dtype == torch.float32 and b["motion"].shape == (3, T - 1)
    assert b["beat_weights"].shape == (3, Ta) and b["start"].shape == (3,)
    checked = 0
    for batch in batches:
        for i, key in enumerate(batch["key"]):
            source = key.rsplit("_", 1)[0]
            start = float(batch["start"][i])
            assert start == int(key.rsplit("_", 1)[1]) / 1000
            flashes = [f - start for f in GOOD[source][1] if 0 <= f - start <= d.clip_seconds - FLASH]
            bright = batch["frames"][i].float().mean((1, 2, 3)) > 200  # [T]
            loud = batch["codes"][i, 0] >= 20  # [Ta]  (noise burst ~46, background tone ~3)
            frame_t = torch.nonzero(bright)[:, 0].double() / d.fps
            code_t = torch.nonzero(loud)[:, 0].double() / d.frame_rate
            assert len(frame_t) > 0 and len(code_t) > 0 and len(flashes) == 1
            # Every loud code frame lies inside the burst [f, f + FLASH) (± one 20 ms hop), every bright frame inside
            # the flash (± one source frame), and the two centres agree within one video frame period.
            f = flashes[0]
            assert code_t.min() >= f - 0.02 and code_t.max() <= f + FLASH + 0.02
            assert frame_t.min() >= f - 1 / FPS_SRC and frame_t.max() <= f + FLASH + 1 / FPS_SRC
            assert abs(float(frame_t.mean() - code_t.mean())) < 1 / d.fps
            # The onset detector marks a music beat within 60 ms of the burst, and the weights follow SPEC §5.
            beat_t = torch.nonzero(batch["music_beats"][i])[:, 0].double() / d.frame_rate
            assert (beat_t - f).abs().min() <= 0.06
            assert set(batch["beat_weights"][i].unique().tolist()) <= {0.5, 1.0}
            checked += 1
    assert checked == 8


def _fake_shards(root, sizes):
    """Raw tars with keys only (loader splitting does not need real media)."""
    keys = []
    for s, n in enumerate(sizes):
        with tarfile.open(root / f"train-{s:06d}.tar", "w") as tar:
            for j in range(n):
                key = f"s{s}_{j:03d}"
                info = tarfile.TarInfo(f"{key}.json")
                data = json.dumps({"start": j}).encode()
                info.size = len(data)
                import io

                tar.addfile(info, io.BytesIO(data))
                keys.append(key)
    return keys


@pytest.mark.parametrize("world_size,num_workers", [(1, 0), (2, 0), (2, 2), (3, 2), (4, 0)])
def test_ranks_and_workers_cover_every_clip_once(cfg, tmp_path, world_size, num_workers):
    keys = _fake_shards(tmp_path, [3, 3, 3, 3, 1])  # 5 shards, the last one partial
    seen = []
    for rank in range(world_size):
        ds = loader.ShardStream(str(tmp_path / "train-{000000..000004}.tar"), cfg.data, rank=rank,
                                world_size=world_size, shuffle=True, decode=False)
        dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers)
        seen += [s["__key__"] for s in dl]
    assert sorted(seen) == sorted(keys)  # every clip exactly once (6 readers > 5 shards: sample-level split)


def test_stream_is_deterministic_per_seed_and_epoch(cfg, tmp_path):
    _fake_shards(tmp_path, [5, 5, 5, 2])

    def order(epoch, seed=0):
        c = load_config(ROOT / "configs" / "debug.yaml", [f"data.seed={seed}"]).data
        ds = loader.ShardStream(str(tmp_path / "*.tar"), c, shuffle=True, decode=False)
        ds.set_epoch(epoch)
        return [s["__key__"] for s in ds]

    assert order(0) == order(0) and len(order(0)) == 17
    assert order(1) != order(0) and sorted(order(1)) == sorted(order(0))
    assert order(0, seed=1) != order(0)
    unshuffled = [s["__key__"] for s in loader.ShardStream(str(tmp_path / "*.tar"), cfg.data, shuffle=False,
                                                           decode=False)]
    assert unshuffled == [f"s{s}_{j:03d}" for s, n in enumerate([5, 5, 5, 2]) for j in range(n)]
    random.seed(0)


def test_decoded_cache_replays_epochs_from_memory(cfg, sharded, tmp_path):
    out, _ = sharded
    for tar in out.glob("train-*.tar"):
        (tmp_path / tar.name).write_bytes(tar.read_bytes())
    c = dataclasses.replace(cfg.data, cache_decoded=True, shuffle_buffer=4)

    def stream():
        ds = loader.ShardStream(str(tmp_path / "train-*.tar"), c, shuffle=True, repeat=True)
        return iter(ds)

    it = stream()
    first = [next(it) for _ in range(6)]  # epoch 0: read from the tars (6 train clips)
    for tar in tmp_path.glob("*.tar"):
        tar.unlink()  # later epochs must not touch the files
    later = [next(it) for _ in range(12)]  # epochs 1 and 2 from memory
    keys0 = [s["key"] for s in first]
    assert sorted(s["key"] for s in later[:6]) == sorted(keys0) == sorted(s["key"] for s in later[6:])
    assert [s["key"] for s in later[:6]] != [s["key"] for s in later[6:]]  # reshuffled per epoch
    by_key = {s["key"]: s for s in first}
    assert all(torch.equal(s["frames"], by_key[s["key"]]["frames"]) for s in later)
    for tar in out.glob("train-*.tar"):
        (tmp_path / tar.name).write_bytes(tar.read_bytes())
    again = stream()
    assert [next(again)["key"] for _ in range(18)] == keys0 + [s["key"] for s in later]  # same order on resume


def test_damaged_shard_keeps_earlier_samples(cfg, sharded, tmp_path):
    out, _ = sharded
    data = (out / "train-000000.tar").read_bytes()
    (tmp_path / "train-000000.tar").write_bytes(data[: len(data) * 2 // 3])  # truncated mid-sample
    ds = loader.ShardStream(str(tmp_path / "train-000000.tar"), cfg.data, shuffle=False)
    got = list(ds)
    assert 1 <= len(got) < 4 and all(s["frames"].shape[0] == cfg.data.num_frames for s in got)


def test_real_codec_and_alignment_factories(cfg, curated):
    rows = _rows(curated[0] / "manifest.jsonl")[:1]
    from vmas.builders import build_codec

    encoder_factory, _ = shards.default_factories(cfg.data, cfg.loss, functools.partial(build_codec, cfg.model.codec))
    torch.manual_seed(0)
    encode = encoder_factory()
    sample = shards.make_sample(rows[0], cfg.data, encode, farneback_align(cfg))
    codes = shards.load_npy(sample["codes.npy"])
    assert codes.shape == (cfg.model.codec.n_q, 125) and 0 <= codes.min() and codes.max() < cfg.model.codec.bins
    meta = json.loads(sample["json"])
    # frame j is sampled at j / fps (nearest real frame of the 24 fps source: within half a source frame)
    want = np.arange(cfg.data.num_frames) / cfg.data.fps
    assert np.abs(np.array(meta["frame_times"]) - want).max() <= 0.5 / FPS_SRC + 1e-6


# ----------------------------------------------------------------------------------------------- SynthMV
def test_synthmv_whole_path_with_broken_files(cfg, tmp_path):
    """SynthMV clips (listed through their own manifest.jsonl) plus broken entries -> shards -> loader; the music
    beats of every loaded clip sit on SynthMV's labelled note onsets and the motion peaks on its visual events."""
    synthmv = pytest.importorskip("datasets.synthmv")
    raw = tmp_path / "raw"
    synthmv.generate_dataset(raw, num=3, seed=0, seconds=5.0, size=32, workers=1)
    data = (raw / "synthmv_0000_00000.mp4").read_bytes()
    (raw / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (raw / "garbage.mp4").write_bytes(b"not a video at all" * 50)
    lines = (raw / "manifest.jsonl").read_text().splitlines()
    lines += [json.dumps({"video": n, "id": Path(n).stem}) for n in ("truncated.mp4", "garbage.mp4", "gone.mp4")]
    (raw / "list.jsonl").write_text("\n".join(lines) + "\n")
    c = load_config(ROOT / "configs" / "debug.yaml", ["data.curation.vocal_removal=false",
                                                      "data.curation.variety_threshold=1.01"])  # one-scene videos
    items = curation.discover_inputs([raw / "list.jsonl"])
    summary = curation.curate(items, tmp_path / "cur", c.data, split_overrides={i.source_id: "train" for i in items})
    assert summary["clips"] == 6 and summary["videos_kept"] == 3
    assert {r["source_id"]: r["reason"] for r in _rows(tmp_path / "cur" / "rejects.jsonl")} == {
        "truncated": "unreadable", "garbage": "unreadable", "gone": "unreadable"}
    sh = shards.write_shards(tmp_path / "cur" / "manifest.jsonl", tmp_path / "sh", c.data, energy_encoder,
                             lambda: farneback_align(c))
    assert sh["clips"] == 6 and sh["shards"] == 2
    seen = 0
    for batch in loader.build_loader(c.data, str(tmp_path / "sh" / "train-*.tar"), train=False, batch_size=4):
        for i, key in enumerate(batch["key"]):
            source, start = key.rsplit("_", 1)[0], int(key.rsplit("_", 1)[1]) / 1000
            labels = json.loads((raw / f"{source}.json").read_text())
            assert batch["tags"][i] == labels["tags"]
            onsets = torch.tensor([o - start for o in labels["onsets"] if 0 <= o - start < c.data.clip_seconds])
            beats = torch.nonzero(batch["music_beats"][i])[:, 0].double() / c.data.frame_rate  # [n] s
            # every labelled onset is found within 40 ms (two code frames) ...
            assert (onsets[:, None] - beats[None]).abs().min(1).values.max() <= 0.04
            # ... and the three strongest motion values sit between the frames around an event
            for j in torch.topk(batch["motion"][i], 3).indices.tolist():
                lo, hi = j / c.data.fps - 0.04, (j + 1) / c.data.fps + 0.04
                assert ((onsets >= lo) & (onsets <= hi)).any(), (key, j, onsets.tolist())
            seen += 1
    assert seen == 6


# ----------------------------------------------------------------------------------------------- vocal removal
def test_vocal_remover_output_feeds_the_manifest(cfg, sources, tmp_path):
    from vmas.data import media

    item = curation.VideoItem(str(sources / "alpha.mp4"), "alpha")
    res = curation.curate_video(item, cfg.data.curation, cfg.data.clip_seconds, cfg.data.sample_rate,
                                curation.pixel_embedding, lambda wav, sr: 0.5 * wav, tmp_path)
    assert len(res.clips) == 3 and {c["audio"] for c in res.clips} == {str(tmp_path / "alpha.wav")}
    orig = media.read_audio(item.path, sr=cfg.data.sample_rate)
    acc = media.read_audio(tmp_path / "alpha.wav", sr=cfg.data.sample_rate)
    assert acc.shape == orig.shape
    torch.testing.assert_close(acc, 0.5 * orig, atol=2e-4, rtol=0)  # 16-bit wav quantisation
    # an accompaniment that is silence rejects every clip as silent, never the run
    res = curation.curate_video(item, cfg.data.curation, cfg.data.clip_seconds, cfg.data.sample_rate,
                                curation.pixel_embedding, lambda wav, sr: 0 * wav, tmp_path)
    assert res.clips == [] and [r["reason"] for r in res.rejects] == ["silent_audio"] * 3


def test_demucs_wrapper_keeps_the_non_vocal_stems(monkeypatch):
    """The wrapper against a stand-in with Demucs' API (get_model / apply_model / sources / samplerate)."""
    import importlib.util
    import sys
    import types

    class FakeDemucs(torch.nn.Module):
        sources, samplerate, audio_channels = ["drums", "bass", "other", "vocals"], 44100, 2

    def apply_model(model, mix, device="cpu", progress=False):
        B, C, N = mix.shape  # stems: drums = 0.1 mix, bass = 0.2 mix, other = 0.3 mix, vocals = 0.4 mix
        return torch.stack([w * mix for w in (0.1, 0.2, 0.3, 0.4)], 1)  # [B, S, C, N]

    pkg = types.ModuleType("demucs")
    pkg.pretrained = types.SimpleNamespace(get_model=lambda name, repo=None: FakeDemucs())
    pkg.apply = types.SimpleNamespace(apply_model=apply_model)
    monkeypatch.setitem(sys.modules, "demucs", pkg)
    monkeypatch.setitem(sys.modules, "demucs.pretrained", pkg.pretrained)
    monkeypatch.setitem(sys.modules, "demucs.apply", pkg.apply)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: pkg if n == "demucs" else real(n, *a))
    remover = curation.DemucsVocalRemover("htdemucs")
    t = np.arange(32000) / 32000
    wav = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = remover(wav, 32000)  # resampled to 44.1 kHz and back: accompaniment = (0.1 + 0.2 + 0.3) * wav
    assert out.shape == wav.shape
    np.testing.assert_allclose(out[2000:-2000], 0.6 * wav[2000:-2000], atol=2e-3)


# ----------------------------------------------------------------------------------------------- CLIs
def preprocess_main(argv) -> int:
    """``tools/preprocess.py`` as a user runs it (a subprocess); returns its exit status."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(ROOT / "tools" / "preprocess.py"), *argv], capture_output=True,
                          text=True).returncode


def test_clis_end_to_end_and_clear_errors(sources, tmp_path, capsys, monkeypatch):
    import importlib.util

    from datasets import disco_mv

    debug = str(ROOT / "configs" / "debug.yaml")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "demucs" else real(n, *a))
    assert disco_mv.main([str(sources / "alpha.mp4"), "--out", str(tmp_path / "c"), "--config", debug]) == 2
    assert "--no-vocal-removal" in capsys.readouterr().err  # one line, before any video is read
    assert disco_mv.main([str(sources / "alpha.mp4"), str(sources / "corrupt.mp4"), "--out", str(tmp_path / "c"),
                          "--config", debug, "--no-vocal-removal", "data.curation.val_fraction=0",
                          "data.curation.test_fraction=0"]) == 0
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["clips"] == 3
    args = ["--manifest", str(tmp_path / "c" / "manifest.jsonl"), "--out", str(tmp_path / "s"), "--config", debug,
            "loss.motion_flow=farneback"]
    assert preprocess_main(args) == 0
    summary = json.loads((tmp_path / "s" / "preprocess_summary.json").read_text())
    assert summary["clips"] == 3 and summary["shards"] == 1 and summary["bytes_per_clip"] > 1000
    assert preprocess_main(args) == 0  # re-run: nothing to do
    assert json.loads((tmp_path / "s" / "preprocess_summary.json").read_text())["shards_skipped"] == 1


def test_train_loader_shuffles_decoded_batches_deterministically(cfg, sharded):
    out, _ = sharded

    def keys(epoch):
        dl = loader.build_loader(cfg.data, str(out / "*.tar"), train=True, batch_size=3, epoch=epoch)
        batches = list(dl)
        assert [b["frames"].shape[0] for b in batches] == [3, 3]  # 8 clips: the partial batch is dropped
        return [k for b in batches for k in b["key"]]

    first = keys(0)
    assert first == keys(0) and len(set(first)) == 6
    assert keys(1) != first


@pytest.mark.slow
def test_sigkill_midway_then_rerun_keeps_finished_shards(curated, tmp_path):
    """A real kill: tools/preprocess.py in a subprocess, SIGKILL once the first shard is done, then re-run."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "shards"
    cmd = [sys.executable, str(ROOT / "tools" / "preprocess.py"), "--manifest", str(curated[0] / "manifest.jsonl"),
           "--out", str(out), "--config", str(ROOT / "configs" / "debug.yaml"), "loss.motion_flow=farneback",
           "data.clips_per_shard=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not list(out.glob("*.done")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = {p.name: p.with_suffix("").stat().st_mtime_ns for p in out.glob("*.done")}
    assert 1 <= len(done) < 8, "the kill should land after the first shard and before the last"
    rerun_args = cmd[2:]
    assert preprocess_main(rerun_args) == 0
    summary = json.loads((out / "preprocess_summary.json").read_text())
    assert summary["clips"] == 8 and summary["shards_skipped"] == len(done)
    assert {n: (out / n).with_suffix("").stat().st_mtime_ns for n in done} == done
    assert not list(out.glob("*.tmp.*"))
