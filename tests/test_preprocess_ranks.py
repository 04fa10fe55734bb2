"""Preprocessing and curation across ranks, with device batching (issue 20).

- rank / world size / local rank from explicit flags, torchrun, SLURM tasks and SLURM arrays (hand-written envs);
- batched EnCodec (an LSTM codec) gives the codes of one clip at a time; batched RAFT the per-clip motion;
- ``torchrun --nproc_per_node 2 tools/preprocess.py`` writes the same bytes as one process (decode workers on);
- one rank SIGKILLed mid-run: the index waits, ``--merge`` shows the partial run, the re-run writes only the
  missing shards, a re-run of the finished job writes nothing;
- curation parts over two ranks give the one-rank manifest; a killed part is redone, finished ones are not.

Source videos: the flash/burst mp4s of tests/test_data_pipeline.py (8 debug clips of 2.5 s).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_data_pipeline import GOOD, write_video

from vmas.config import LossConfig, load_config
from vmas.data import curation, ranks, shards
from vmas.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEBUG = str(ROOT / "configs" / "debug.yaml")
PRE = [sys.executable, str(ROOT / "tools" / "preprocess.py")]
OVR = ["loss.motion_flow=farneback", "data.clips_per_shard=1"]  # 8 shards: 4 per rank


# ------------------------------------------------------------------------------------------------ ranks
@pytest.mark.parametrize("env, explicit, want", [
    ({}, None, (0, 1, 0, "single")),
    ({"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "1"}, None, (5, 16, 1, "torchrun")),
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "3"}, None, (3, 8, 3, "slurm")),
    # srun torchrun: torchrun's numbers win over the SLURM task's
    ({"RANK": "9", "WORLD_SIZE": "32", "LOCAL_RANK": "1", "SLURM_PROCID": "1", "SLURM_NTASKS": "4"}, None,
     (9, 32, 1, "torchrun")),
    # sbatch --array=1-8 (one task each): task id 6 is the 6th of 8 -> rank 5
    ({"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_PROCID": "0",
      "SLURM_NTASKS": "1"}, None, (5, 8, 0, "slurm_array")),
    # --array=0-20:10 -> ids 0, 10, 20
    ({"SLURM_ARRAY_TASK_ID": "20", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "10",
      "SLURM_ARRAY_TASK_COUNT": "3"}, None, (2, 3, 0, "slurm_array")),
    # array task 2 of 4, each running 8 tasks (one per GPU): task 5 of array task 2 -> 2*8 + 5
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_PROCID": "5", "SLURM_NTASKS": "8",
      "SLURM_LOCALID": "5"}, None, (21, 32, 5, "slurm_array+tasks")),
    ({"RANK": "1", "WORLD_SIZE": "2"}, (3, 4), (3, 4, 0, "explicit")),
])
def test_rank_from_launcher_environments(env, explicit, want):
    r, w = explicit or (None, None)
    info = ranks.detect_rank(r, w, env=env)
    assert (info.rank, info.world_size, info.local_rank, info.source) == want


@pytest.mark.parametrize("env, explicit, words", [
    ({}, (4, 4), "out of range"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, None, "RANK='x'"),
    ({"SLURM_ARRAY_TASK_ID": "3"}, None, "SLURM_ARRAY_TASK_COUNT"),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "4"}, None, "grid"),
    ({}, (1, None), "go together"),
])
def test_bad_rank_settings_are_one_line(env, explicit, words):
    with pytest.raises(ConfigError, match=words):
        ranks.detect_rank(*explicit, env=env) if explicit else ranks.detect_rank(env=env)


def test_ownership_is_disjoint_and_covers_every_unit():
    units = list(range(23))
    for world in (1, 2, 3, 8, 30):
        owned = [ranks.RankInfo(r, world).mine(units) for r in range(world)]
        assert sorted(u for o in owned for u in o) == units
        assert all(o == units[r::world] for r, o in enumerate(owned))


def test_pin_device_cpu_and_missing_cuda():
    assert ranks.pin_device("cpu", ranks.RankInfo(1, 2, 1)) == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            ranks.pin_device("cuda", ranks.RankInfo(1, 2, 1))


# ------------------------------------------------------------------------------------------------ batching
def test_batched_codec_gives_the_codes_of_one_clip_at_a_time():
    """The paper's codec shape (SEANet + 2-layer LSTM + RVQ) at a small width: a batch of 5 clips -> same codes."""
    from vmas.models.codec import Codec

    torch.manual_seed(0)
    codec = Codec(n_filters=8, ratios=[8, 5, 4, 4], dimension=32, lstm=2, n_q=4, bins=64).eval()
    g = torch.Generator().manual_seed(1)
    wav = torch.randn(5, 1, 32000, generator=g) * torch.linspace(0.02, 0.5, 5).view(5, 1, 1)  # [B, 1, N]
    with torch.no_grad():  # codebooks on the encoder's scale (as k-means init would), so codes are not all one entry
        scale = codec.encoder(wav).std()
        for layer in codec.quantizer.vq.layers:
            layer._codebook.embed.copy_(torch.randn(layer._codebook.embed.shape, generator=g) * scale)
    batched = codec.encode(wav)  # [B, K, T]
    single = torch.cat([codec.encode(w[None]) for w in wav])
    assert batched.shape == (5, 4, 50)
    assert torch.equal(batched, single)
    assert len({tuple(c.flatten().tolist()) for c in batched}) == 5  # distinct clips, distinct codes


def test_batched_raft_gives_the_motion_of_one_clip_at_a_time():
    """RAFT over the pairs of 3 clips at once (chunks of 2 pairs crossing clip boundaries) == clip by clip."""
    from vmas.alignment import load_raft

    cfg = LossConfig(motion_flow="raft_small", motion_weights="random", motion_batch=2)
    load_raft("raft_small", "random", "cpu")  # cached per (flow, weights, device): both paths use this model
    align = shards.Aligner(cfg, 32000, 9.6, 50.0, 50)
    g = torch.Generator().manual_seed(0)
    frames = [torch.randint(0, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8) for n in (4, 2, 3)]
    wavs = [torch.randn(32000, generator=g) * 0.1 for _ in frames]
    batched = align.batch(wavs, frames)
    for w, f, b in zip(wavs, frames, batched):
        one = align(w, f)
        assert b["motion"].shape == (len(f) - 1,)
        torch.testing.assert_close(b["motion"], one["motion"], rtol=1e-4, atol=1e-5)
        for k in ("music_beats", "video_beats", "beat_weights"):
            assert torch.equal(b[k], one[k]), k


# ------------------------------------------------------------------------------------------------ multi-rank runs
@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("rank_videos")
    for i, (name, (sec, flashes)) in enumerate(GOOD.items()):
        write_video(root / f"{name}.mp4", sec, flashes, seed=i)
    out = tmp_path_factory.mktemp("rank_curated")
    cfg = load_config(DEBUG, ["data.curation.vocal_removal=false"])
    curation.curate(curation.discover_inputs([root]), out, cfg.data,
                    split_overrides={"alpha": "train", "bravo": "train", "charlie": "val"})
    return out / "manifest.jsonl"


@pytest.fixture(scope="module")
def reference(manifest, tmp_path_factory):
    """One process, in this process (the preprocess CLI's main)."""
    from tools import preprocess  # the repository root is importable in tests (as datasets/ is)
    out = tmp_path_factory.mktemp("ref_shards")
    assert preprocess.main(["--manifest", str(manifest), "--out", str(out), "--config", DEBUG, *OVR]) == 0
    return out


def assert_same_shards(folder, reference):
    """Same shard names, same members in the same order; codes, beats, beat weights, tags and json byte-identical;
    ``motion.npy`` equal to rtol 1e-5 / atol 1e-6 and ``frames.mp4`` by decoded pixels (mean difference < 1,
    largest <= 24/255): :func:`vmas.data.shards.compare_shards`, whose docstring says why those two are compared by
    value (Farneback's last float32 bit between processes; other x264 bytes with two ranks)."""
    report = shards.compare_shards(folder, reference, motion_rtol=1e-5, motion_atol=1e-6, pixel_mean=1.0,
                                   pixel_max=24)
    assert report["shards"] and not report["mismatches"], report["mismatches"]
    assert report["identical"] + len(report["value_equal"]) == report["members"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def test_torchrun_two_ranks_write_the_one_process_shards(manifest, reference, tmp_path):
    out = tmp_path / "shards"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29571",
           *PRE[1:], "--manifest", str(manifest), "--out", str(out), "--config", DEBUG, *OVR,
           "data.preprocess.decode_workers=1", "data.preprocess.clip_batch=3"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(list(reference.glob("*.tar"))) == 8
    assert_same_shards(out, reference)
    for split in ("train", "val"):
        assert json.loads((out / f"{split}.index.json").read_text()) == \
            json.loads((reference / f"{split}.index.json").read_text())
    assert "rank 1/2" in run.stderr and "rank 0/2" in run.stderr


def _start_rank(manifest, out, rank):
    cmd = [*PRE, "--manifest", str(manifest), "--out", str(out), "--config", DEBUG, *OVR, "--rank", str(rank),
           "--world-size", "2"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())


def _main(preprocess, capsys, *args):
    """tools/preprocess.py's main in this process -> (exit status, parsed stdout JSON or None, stderr)."""
    rc = preprocess.main(list(args))
    cap = capsys.readouterr()
    return rc, (json.loads(cap.out[cap.out.index("{"):]) if "{" in cap.out else None), cap.err


def test_kill_one_rank_then_rerun_finishes_only_the_missing_shards(manifest, reference, tmp_path, capsys):
    from tools import preprocess  # imported by the reference fixture

    out = tmp_path / "shards"
    common = ["--manifest", str(manifest), "--out", str(out), "--config", DEBUG, *OVR]
    # plan: train-000000..000005 then val-000000..000001; rank 1 owns positions 1, 3, 5, 7
    odd = ["train-000001.tar", "train-000003.tar", "train-000005.tar", "val-000001.tar"]
    r0, r1 = _start_rank(manifest, out, 0), _start_rank(manifest, out, 1)
    try:
        deadline = time.time() + 240
        while not any((out / f"{n}.done").exists() for n in odd) and r1.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        os.kill(r1.pid, signal.SIGKILL)  # mid-run: its next shard is being written
    finally:
        r1.wait()
    assert r0.wait(timeout=240) == 0
    done_odd = [n for n in odd if (out / f"{n}.done").exists()]
    assert 1 <= len(done_odd) < 4, "the kill should land after rank 1's first shard and before its last"
    assert not (out / "train.index.json").exists()  # the last rank never finished: no index yet
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert len(before) == 4 + len(done_odd)  # rank 0's four and rank 1's finished ones (its temp is not a .tar)

    rc, state, err = _main(preprocess, capsys, *common, "--merge")  # a partial run is visible
    assert rc == 1 and "not done" in err and state["shards_done"] == len(before)
    partial = json.loads((out / "train.index.json").read_text())
    assert partial["complete"] is False
    assert {s["name"] for s in partial["shards"]} == {n for n in before if n.startswith("train")}

    rc, summary, _ = _main(preprocess, capsys, *common, "--rank", "1", "--world-size", "2")  # the same command
    assert rc == 0
    assert summary["shards_written"] == 4 - len(done_odd) and summary["shards_skipped"] == len(done_odd)
    assert summary["complete"] and summary["clips"] == 8
    assert {n: (out / n).stat().st_mtime_ns for n in before} == before  # finished shards untouched
    assert not list(out.glob("*.tmp.*"))
    assert_same_shards(out, reference)
    assert json.loads((out / "train.index.json").read_text())["complete"] is True

    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    rc, again, _ = _main(preprocess, capsys, *common)  # the finished job again, as one process: nothing to do
    assert rc == 0 and again["shards_written"] == 0 and again["shards_skipped"] == 8
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == finished


def test_preprocess_refuses_an_empty_manifest(reference, tmp_path, capsys):
    from tools import preprocess  # imported by the reference fixture

    (tmp_path / "manifest.jsonl").write_text("")
    rc, _, err = _main(preprocess, capsys, "--manifest", str(tmp_path / "manifest.jsonl"), "--out",
                       str(tmp_path / "s"), "--config", DEBUG)
    assert rc == 2
    assert err.count("\n") == 1 and "has no clips" in err and "rejects.jsonl" in err
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------------------------ curation ranks
def test_curation_parts_over_ranks_and_resume(manifest, tmp_path):
    """Two ranks (run one after the other) give the one-rank manifest; the first alone writes no manifest; a
    part whose marker is lost is redone and the others are not."""
    videos = Path(json.loads(manifest.read_text().splitlines()[0])["video"]).parent
    cfg = load_config(DEBUG, ["data.curation.vocal_removal=false", "data.curation.videos_per_part=1"])
    items = curation.discover_inputs([videos])
    splits = {"alpha": "train", "bravo": "train", "charlie": "val"}
    out = tmp_path / "two"
    first = curation.curate(items, out, cfg.data, split_overrides=splits, rank=ranks.RankInfo(0, 2))
    assert first["parts_written"] == 2 and not first["complete"] and not (out / "manifest.jsonl").exists()
    last = curation.curate(items, out, cfg.data, split_overrides=splits, rank=ranks.RankInfo(1, 2))
    assert last["complete"] and last["parts_written"] == 1
    assert (out / "manifest.jsonl").read_text() == manifest.read_text()
    assert last["videos"] == 3 and last["videos_kept"] == 3 and last["problem"] is None

    (out / "parts" / "part-000001.done").unlink()  # as if the rank died writing part 1
    again = curation.curate(items, out, cfg.data, split_overrides=splits)
    assert again["parts_written"] == 1 and again["parts_skipped"] == 2
    assert (out / "manifest.jsonl").read_text() == manifest.read_text()
    changed = load_config(DEBUG, ["data.curation.vocal_removal=false", "data.curation.videos_per_part=1",
                                  "data.curation.silence_db=-40"])
    assert curation.curate(items, out, changed.data, split_overrides=splits)["parts_written"] == 3  # stale parts
    shutil.rmtree(out)
