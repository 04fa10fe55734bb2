"""Every script under tools/ and datasets/ runs at debug size, as a user runs it (a subprocess from outside the
repository's root), so a config or API change can never silently break one again.

Scripts tested elsewhere: tools/evaluate.py (test_metrics), tools/preprocess.py and datasets/disco_mv.py
(test_data_pipeline), tools/train.py (test_train), tools/train_codec.py (test_codec), datasets/synthmv.py
(test_synthmv), tools/synthmv_benchmark.py (test_synthmv_benchmark). The library behind each script is tested
directly in those files; these tests check the command lines and their output format.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEBUG = ROOT / "configs" / "debug.yaml"
DEMO = ROOT / "vmas" / "assets" / "vmas-synthmv-demo.pt"
EXAMPLE = ROOT / "vmas" / "assets" / "example.mp4"


def run(args, cwd, timeout=600):
    """``python <args>`` from ``cwd`` with one passive thread; returns the CompletedProcess (asserts rc 0)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_bench_raft_prints_one_json_line(tmp_path):
    out = run([ROOT / "tools" / "bench_raft.py", "--frames", "3", "--size", "128", "--threads", "1"], tmp_path)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["pairs"] == 2 and row["frames"] == 3 and row["seconds"] > 0  # 3 frames -> 2 flow pairs
    out = run([ROOT / "tools" / "bench_raft.py", "--flow", "farneback", "--frames", "3", "--size", "32"], tmp_path)
    assert json.loads(out.stdout.strip().splitlines()[-1])["pairs"] == 2


def test_estimate_memory_debug_config(tmp_path):
    out = run([ROOT / "tools" / "estimate_memory.py", "--config", DEBUG, "--json"], tmp_path)
    report = json.loads(out.stdout)
    assert isinstance(report, dict) and report


@pytest.mark.slow
def test_count_flops_json(tmp_path):
    out = run([ROOT / "tools" / "count_flops.py", "--json"], tmp_path)
    report = json.loads(out.stdout)
    # the paper's encoder: 48 output tokens of 768 channels
    assert report["vmas_hiera_base"]["out_shape"] == [48, 768] and report["vmas_hiera_base"]["gflops"] > 0


def test_metric_parity_tool_at_debug_size(tmp_path):
    """tools/metric_parity.py (issue 21) on 2 s of 2 real tracks: our VGGish and Fréchet distance vs the references."""
    music = ROOT / ".cache" / "real_music"
    pytest.importorskip("torchvggish", reason="the parity extra is missing: make install")
    if len(list(music.glob("*.ogg"))) < 2:
        pytest.skip("no real recorded music: run `make real-music`")
    out = run([ROOT / "tools" / "metric_parity.py", "--tracks", "2", "--seconds", "2", "--out", tmp_path / "p.json"],
              tmp_path)
    report = json.loads((tmp_path / "p.json").read_text())
    assert json.loads(out.stdout) == report
    assert report["vggish"]["front_end_max_abs_diff"] < 1e-5 and report["frechet"]["rel_diff"] < 1e-5


def test_benchmark_generates_then_evaluates(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "ex", "video": str(EXAMPLE), "duration": 2.0}) + "\n")
    out = tmp_path / "bench"
    run([ROOT / "tools" / "benchmark.py", "--manifest", manifest, "--model", DEMO, "--out", out, "--metrics",
         "kl,mv_align", "--kl-classifier", "mel", "--top-k", "10", "--no-progress"], tmp_path)
    assert (out / "generated" / "ex.wav").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["clips"]["kl"] == 1 and 0.0 <= report["mv_align"] <= 1.0
    assert "| kl |" in (out / "report.md").read_text()
    # resumable: a second run (same model and controls: .generation.json) skips the finished clip, only evaluates
    again = run([ROOT / "tools" / "benchmark.py", "--manifest", manifest, "--model", DEMO, "--out", out,
                 "--metrics", "kl", "--kl-classifier", "mel", "--top-k", "10", "--no-progress"], tmp_path)
    assert "'skipped': 1" in again.stdout


@pytest.mark.slow
def test_tag_control_benchmark_at_debug_size(tmp_path):
    data = tmp_path / "smv"
    run(["-m", "datasets.synthmv", "--out", data, "--num", "2", "--seed", "1", "--split", "test", "--seconds", "5",
         "--workers", "1"], ROOT)
    out = tmp_path / "tag_control.json"
    proc = run([ROOT / "tools" / "tag_control_benchmark.py", "--model", DEMO, "--test-manifest",
                data / "vmas_manifest.jsonl", "--clips", "2", "--sample-seeds", "1", "--top-k", "10", "--out", out,
                "--json"], tmp_path)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == result and result["meta"]["clips"] == 2
    for key in ("no_tags", "tags_same", "tags_other", "negative", "tempo_within_8pct"):
        assert 0.0 <= result[key] <= 1.0


@pytest.mark.skipif(not __import__("shutil").which("espeak-ng"), reason="needs Debian espeak-ng (make test installs it)")
def test_mix_report_before_and_after(tmp_path):
    # the README's before/after measurement, with the random debug model: the old behaviour loses the voice, the
    # defaults keep it and land on the loudness target
    out = run(["tools/mix_report.py", "--out", tmp_path, "--model", "vmas-debug-random"], ROOT)
    report = json.loads(out.stdout[out.stdout.index("{"):])  # generate's one-line summaries come first
    before, after = report["before (--mix replace --loudness off)"], report["after (defaults)"]
    assert abs(after["loudness_lufs"] + 14.0) < 0.5 and after["true_peak_dbtp"] <= -1.0
    assert after["voice_correlation"] > 0.5 > before["voice_correlation"]


def test_preprocess_music_folder_to_music_only_shards(tmp_path):
    # issue 25: a folder of audio + a sidecar tag file -> manifest, rejects and shards without frames
    import numpy as np

    from vmas.data import media

    music = tmp_path / "music"
    music.mkdir()
    t = np.arange(6 * 32000) / 32000
    media.write_wav(music / "song.wav", (0.3 * np.sin(2 * np.pi * 220 * t) * (t % 0.5 < 0.1))[None], 32000)
    (music / "song.tags.txt").write_text("Piano, Calm")
    (music / "bad.ogg").write_bytes(b"no audio here")
    out = tmp_path / "out"
    proc = run([ROOT / "tools" / "preprocess_music.py", music, "--out", out, "--config", DEBUG, "--no-vocal-removal",
                "--tags", "instrumental", "data.curation.val_fraction=0", "data.curation.test_fraction=0"], tmp_path)
    report = json.loads(proc.stdout)
    assert report["curation"]["clips"] == 2 and report["curation"]["reject_reasons"] == {"unreadable": 1}
    assert report["shards"]["clips"] == 2 and (out / "shards" / "train-000000.tar").is_file()
    row = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert row["video"] is None and row["tags"] == "piano, calm, instrumental"


def test_unpaired_benchmark_run_layout_and_budgets(tmp_path):
    # --budget paired: with_unpaired trains steps / (1 - f) so it sees as many paired clips as without_unpaired
    import importlib.util

    spec = importlib.util.spec_from_file_location("unpaired_benchmark", ROOT / "tools" / "unpaired_benchmark.py")
    ub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ub)
    assert ub.run_steps("with_unpaired", 300, 0.25, "paired") == 400
    assert ub.run_steps("with_unpaired", 300, 0.25, "steps") == 300
    assert ub.run_steps("without_unpaired", 300, 0.25, "paired") == 300
    assert ub.run_dir(tmp_path, "without_unpaired", 1, 300, 0.25, "paired") == tmp_path / "steps300/without_unpaired/seed1"
    assert ub.run_dir(tmp_path, "with_unpaired", 0, 300, 0.25, "paired") == tmp_path / "steps300/with_unpaired_f0.25_paired/seed0"
    assert ub.run_dir(tmp_path, "with_unpaired", 0, 300, 1 / 3) == tmp_path / "steps300/with_unpaired_f0.333333/seed0"


@pytest.mark.slow
def test_unpaired_benchmark_at_tiny_size(tmp_path):
    # issue 25: makes its own SynthMV data, demo codec, paired + music-only shards, trains both variants, scores
    common = [ROOT / "tools" / "unpaired_benchmark.py", "--data", tmp_path / "data", "--out", tmp_path / "runs",
              "--train-videos", "6", "--test-videos", "6", "--sample-seeds", "1", "--top-k", "10", "--json"]
    # the selection grid: 2 fractions share one without_unpaired run; the rule picks one setting
    proc = run([*common, "--split", "selection", "--steps", "2", "--fraction", "0.25,auto", "--budget", "steps,paired"],
               tmp_path)
    grid = json.loads(proc.stdout.strip().splitlines()[-1])
    settings = [(2, 0.25, "steps", 2), (2, 0.3333, "steps", 2), (2, 0.25, "paired", 3), (2, 0.3333, "paired", 3)]
    assert [(g["steps"], g["fraction"], g["budget"], g["with_unpaired_steps"]) for g in grid["grid"]] == settings
    assert tuple(grid["chosen"][k] for k in ("steps", "fraction", "budget")) in [s[:3] for s in settings]
    assert sorted(p.name for p in (tmp_path / "runs" / "steps2").iterdir()) == [
        "with_unpaired_f0.25", "with_unpaired_f0.25_paired", "with_unpaired_f0.3333", "with_unpaired_f0.3333_paired",
        "without_unpaired"]
    assert "step 3/3" in (tmp_path / "runs/steps2/with_unpaired_f0.25_paired/seed0/train.log").read_text()
    # then the test split of one setting: the trained runs are reused (no new training log lines)
    log = tmp_path / "runs" / "steps2" / "without_unpaired" / "seed0" / "train.log"
    before = log.read_text()
    proc = run([*common, "--steps", "2", "--fraction", "0.25"], tmp_path)
    assert log.read_text() == before
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads((tmp_path / "runs" / "results_test.json").read_text()) == result
    assert result["meta"]["split"] == "test" and result["meta"]["unpaired_fraction"] == 0.25
    assert "runs" not in result and set(result["meta"]["runs"]) == {"with_unpaired/seed0", "without_unpaired/seed0"}
    for key in ("unpaired_tags_class_acc", "paired_tags_class_acc", "without_unpaired_class_acc"):
        assert set(result[key]) == {"mean", "std"} and 0.0 <= result[key]["mean"] <= 1.0
    meta = result["meta"]
    assert meta["held_out_test_clips"] == 2 and meta["train_clips"] == {"paired": {"clips": 8, "rejected": 0},
                                                                        "music": {"clips": 4, "rejected": 0}}
    assert meta["command"].startswith("python tools/unpaired_benchmark.py")


def test_structure_benchmark_at_tiny_size(tmp_path):
    # issue 22: makes its own multi-scene SynthMV clips, generates with --cuts auto / none / the labels / --hits
    # through vmas generate's library path, scores, prints one JSON object with the keys
    proc = run([ROOT / "tools" / "structure_benchmark.py", "--json", "--out", tmp_path / "sb", "--select", "1",
                "--test", "1", "--scenes", "2", "--seconds", "6", "--seeds", "0", "--hits", "2", "--crossfades",
                "0.08", "--per-class", "1"], tmp_path)
    result = json.loads(proc.stdout)
    for key in ("segment_class_acc", "switch_latency_s", "seam_flux_ratio", "hits_within_50ms"):
        assert set(result[key]) >= {"mean", "std"}
    assert 0.0 <= result["segment_class_acc"]["mean"] <= 1.0 and 0.0 <= result["hits_within_50ms"]["mean"] <= 1.0
    assert set(result["baselines"]) == {"plain", "own_music", "label_cuts", "hits_chance"}
    assert result["baselines"]["own_music"]["switch_latency_s"]["mean"] < 1.0  # the real music switches at once
    assert result["details"]["detection"]["test"] == {"precision": 1.0, "recall": 1.0, "cuts": 1}
    assert result["selection"]["crossfade_s"] == 0.08
    assert list(result["selection"]["hits_tempo_tried"]) == ["picture/keep", "hits/keep", "picture/off", "hits/off"]
    assert result["selection"]["hits_tempo"] in result["selection"]["hits_tempo_tried"]
    assert result["meta"]["command"].startswith("python tools/structure_benchmark.py") and result["meta"]["commit"]
    # generated music is cached per model weights (a retrained demo under the same name must not reuse old music)
    sha = result["meta"]["model_weights_sha256"]
    assert [d.name for d in (tmp_path / "sb").glob("music_*")] == [f"music_{sha[:12]}"] and len(sha) == 64


def test_bench_long_video_at_tiny_size(tmp_path):
    # issue 18: footage of 3 s (32x32, 10 fps) through `python -m vmas generate`; wall/CPU time, peak RSS, and the
    # output's audio as long as the video; results saved and reused by a rerun
    args = [ROOT / "tools" / "bench_long_video.py", "--minutes", "0.05", "--out", tmp_path / "bl", "--width", "32",
            "--height", "32", "--fps", "10", "--model", "vmas-debug-random", "--json"]
    result = json.loads(run(args, tmp_path).stdout)
    (row,) = result["rows"]
    assert row["minutes"] == 0.05 and row["video_s"] == 3.0 and abs(row["mp4_audio_s"] - 3.0) <= 1024 / 48000
    assert row["peak_rss_mb"] > 100 and row["wall_s"] > 0 and row["cpu_s"] > 0
    assert row["seconds_per_video_minute"] == round(row["wall_s"] / 0.05, 2)
    assert result["meta"]["command"].startswith("bench_long_video.py --minutes 0.05") and result["meta"]["commit"]
    assert row["commit"] == result["meta"]["commit"] and row["dirty_tree"] == result["meta"]["dirty_tree"]
    assert json.loads(run(args, tmp_path).stdout)["rows"] == [row]  # reused, not re-measured


def test_bench_startup_at_tiny_size(tmp_path):
    # issue 18: the fixed cost of `python -m vmas generate` (whole processes, medians, meta with load average)
    args = [ROOT / "tools" / "bench_startup.py", "--runs", "1", "--seconds", "0.5", "--model", "vmas-debug-random",
            "--out", tmp_path / "out", "--json"]
    result = json.loads(run(args, tmp_path).stdout)
    gen = result["median"]["vmas generate"]
    assert gen["wall_s"] > 0 and gen["cpu_s"] > 0 and gen["peak_rss_mb"] > 100
    assert result["median"]["import vmas.generate"]["wall_s"] < gen["wall_s"]
    assert result["meta"]["generate_command"].endswith("--duration 0.5 --model vmas-debug-random")
    assert result["meta"]["commit"] and len(result["meta"]["load_avg_before"]) == 3
    assert (tmp_path / "out" / "example.mp4").exists()


@pytest.mark.slow
def test_bench_preprocess_at_tiny_size(tmp_path):
    # issue 20: makes its own SynthMV data (4 videos -> 8 clips, 2 per shard -> 2 shards per rank), runs 1 process
    # (without / with a decode worker) and torchrun --nproc_per_node 2, compares the torchrun shards with both
    proc = run([ROOT / "tools" / "bench_preprocess.py", "--videos", "4", "--clips-per-shard", "2", "--work", tmp_path,
                "--json"], tmp_path)
    result = json.loads(proc.stdout)
    assert list(result["runs"]) == ["1 process (decode_workers=0)", "1 process (decode_workers=1)",
                                    "torchrun 2 ranks (decode_workers=0)"]
    assert result["meta"]["clips_expected"] == 8
    for row in result["runs"].values():
        assert row["clips"] == 8 and row["rejected"] == 0 and row["shards"] == 4
        assert row["wall_s"] > 0 and row["cpu_s"] > 0 and row["clips_per_s"] > 0 and row["clips_per_cpu_s"] > 0
    assert len(result["runs"]["torchrun 2 ranks (decode_workers=0)"]["shard_loop_s_per_rank"]) == 2
    assert "torch.distributed.run --nproc_per_node 2" in result["runs"]["torchrun 2 ranks (decode_workers=0)"][
        "command"]
    assert result["ratios"] and all(v > 0 for v in result["ratios"].values())
    compared = result["shards_compared"]
    assert compared["mismatches"] == 0 and len(compared) == 3
    for pair in (v for k, v in compared.items() if k != "mismatches"):
        assert pair["shards"] == 4 and pair["mismatches"] == []
        assert pair["identical"] + pair["value_equal"] == pair["members"] > 0
    meta = result["meta"]
    assert meta["command"].startswith("python tools/bench_preprocess.py --videos 4") and meta["commit"]
    assert len(meta["load_avg_before"]) == 3 and meta["omp_num_threads"] == "1"
