"""A predictable command line (issue 18): start-up cost, safe checkpoint loading, validated flags, seeds that do not
depend on the batch, folders, overwrite and interrupt safety, --set, and training commands that compose."""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_generate import _video

from vmas.cli import main
from vmas.config import load_config
from vmas.data.media import read_audio
from vmas.errors import CheckpointError, VmasError
from vmas.generate import GenerationRequest, generate_for_videos
from vmas.hub import ASSETS, load_model, load_pretrained

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
DEMO = ASSETS / "vmas-synthmv-demo.pt"
needs_demo = pytest.mark.skipif(not DEMO.exists(), reason="demo model not shipped")
DEBUG_MODEL = ["--model", "vmas-debug-random", "--top-k", "16", "-q", "--mix", "replace"]


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return load_pretrained(None, config=load_config(CONFIGS / "debug.yaml"), random_note="debug")


def _err_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------- start-up cost
@needs_demo
def test_no_tags_never_imports_transformers_and_quiet_silences_every_bar(tmp_path):
    """The demo model has a tag branch; a request without tags uses its learned null tag token, so the MiniLM
    encoder (and transformers, ~6 s of start-up) is never loaded. With tags it is, and ``-q`` still shows no bar
    (transformers' "Loading weights" included)."""
    video = _video(tmp_path / "v.mp4", 1.0)
    script = f"""
import json, sys
from vmas.cli import main
common = [{str(video)!r}, "--duration", "0.5", "-q", "--mix", "replace", "--model", "vmas-synthmv-demo"]
rc1 = main(["generate", *common, "-o", {str(tmp_path / "a")!r}])
plain = "transformers" in sys.modules
rc2 = main(["generate", *common, "-o", {str(tmp_path / "b")!r}, "--tags", "piano"])
print(json.dumps({{"rc": [rc1, rc2], "plain": plain, "tagged": "transformers" in sys.modules}}))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TQDM_DISABLE", None)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"rc": [0, 0], "plain": False, "tagged": True}
    assert "Loading weights" not in proc.stderr and "it/s" not in proc.stderr and "%|" not in proc.stderr


# --------------------------------------------------------------------------------------- safe checkpoint loading
class _RunsCode:
    """A pickle that, loaded by a plain unpickler, calls ``builtins.exec`` (here: creates a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({"config": {}, "model": {"w": torch.zeros(2)}, "payload": _RunsCode(marker)}, path)
    return path, marker


def test_malicious_model_file_is_refused_in_one_line(evil, tmp_path, capsys):
    path, marker = evil
    rc = main(["generate", str(_video(tmp_path / "v.mp4", 1.0)), "-o", str(tmp_path / "out"), "--model", str(path),
               "-q"])
    lines = _err_lines(capsys)
    assert rc == 2 and len(lines) == 1, lines
    assert "refused to load" in lines[0] and "builtins.exec" in lines[0] and str(path) in lines[0]
    assert not marker.exists()


def test_malicious_pickle_refused_by_the_lenient_musicgen_reader(evil):
    """The audiocraft reader accepts an allow-list (omegaconf config stubs), never arbitrary globals."""
    from test_lm import get_debug_model

    from vmas.loading import torch_load
    from vmas.models.lm import load_musicgen_lm_weights

    path, marker = evil
    with pytest.raises(CheckpointError, match=r"refused to load .*builtins\.exec"):
        load_musicgen_lm_weights(get_debug_model(), path)
    with pytest.raises(CheckpointError, match="refused to load"):
        torch_load(path, lenient=True)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file is a real attack: the unsafe unpickler runs it
    assert marker.read_text() == "pwned"


# ---------------------------------------------------------------------------------------------- flag validation
@pytest.mark.parametrize("flag,value", [("--duration", "0"), ("--duration", "-1"), ("--batch-size", "0"),
                                        ("--top-k", "-1"), ("--top-p", "1.5"), ("--temperature", "-0.1"),
                                        ("--cfg", "nan"), ("--tempo", "0"), ("--seed", "1.5"), ("--duck", "inf"),
                                        ("--tag-cfg", "x")])
def test_bad_numbers_are_one_line(flag, value, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "clip.mp4", "-o", str(tmp_path), flag, value])
    lines = _err_lines(capsys)
    assert exc.value.code == 2 and len(lines) == 1, lines
    assert f"argument {flag}" in lines[0] and "Traceback" not in lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line(capsys, tmp_path):
    assert main(["generate", "clip.mp4", "-o", str(tmp_path), "--device", "cuda"]) == 2
    lines = _err_lines(capsys)
    assert len(lines) == 1 and "no CUDA GPU" in lines[0] and "--device cpu" in lines[0]


def test_unwritable_output_folder_fails_before_loading_anything(tmp_path, capsys, monkeypatch):
    import vmas.hub

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(vmas.hub, "load_model", no_loading)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    rc = main(["generate", str(tmp_path / "v.mp4"), "-o", str(blocker / "out"), *DEBUG_MODEL])
    lines = _err_lines(capsys)
    assert rc == 2 and len(lines) == 1 and "not writable" in lines[0], lines


# ------------------------------------------------------------------------------------------------------ seeds
def test_same_seed_same_audio_whatever_the_batch_size(tmp_path, pipe):
    """Per-video generators: each video's music equals its batch-size-1 music, bit for bit, also when batched
    with longer videos (more windows) and when it is not first in its batch."""
    videos = [_video(tmp_path / f"v{i}.mp4", s, seed=i) for i, s in enumerate([1.0, 3.5, 2.0])]
    req = GenerationRequest(top_k=16, seed=5)
    alone = generate_for_videos(videos, pipe, tmp_path / "b1", req, batch_size=1, progress=False)
    batched = generate_for_videos(videos, pipe, tmp_path / "b3", req, batch_size=3, progress=False)
    for a, b in zip(alone, batched):
        wa, wb = read_audio(a.wav).numpy(), read_audio(b.wav).numpy()
        assert wa.shape == wb.shape and np.array_equal(wa, wb), a.video
    other = generate_for_videos(videos[:1], pipe, tmp_path / "s6", GenerationRequest(top_k=16, seed=6),
                                progress=False)[0]
    assert not np.array_equal(read_audio(other.wav).numpy(), read_audio(alone[0].wav).numpy())


# ----------------------------------------------------------------------------- folders, overwrite, interruption
def test_folder_input_overwrite_and_error_lines(tmp_path, capsys):
    src = tmp_path / "clips"
    src.mkdir()
    _video(src / "a.mp4", 1.0)
    _video(src / "b.mov", 1.0, seed=1)
    (src / "bad.mp4").write_bytes((src / "a.mp4").read_bytes()[:500])
    (src / "notes.txt").write_text("not a video")
    out = tmp_path / "out"
    assert main(["generate", str(src), "-o", str(out), *DEBUG_MODEL]) == 1
    err = capsys.readouterr().err
    skips = [line for line in err.splitlines() if line.startswith("skipping")]
    assert len(skips) == 1 and skips[0].startswith(f"skipping {src / 'bad.mp4'}: ")
    assert skips[0].count(str(src / "bad.mp4")) == 1  # the reason does not repeat the path
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "a.wav", "b.mp4", "b.wav"]  # no temp leftovers

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["generate", str(src / "a.mp4"), "-o", str(out), *DEBUG_MODEL]) == 0  # nothing to do: not a failure
    lines = _err_lines(capsys)
    assert any("skipped 1 input whose outputs exist" in line and "--overwrite" in line for line in lines), lines
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert main(["generate", str(src / "a.mp4"), "-o", str(out), *DEBUG_MODEL, "--overwrite"]) == 0
    assert (out / "a.mp4").stat().st_mtime_ns > before["a.mp4"]


def test_outputs_that_would_replace_an_input_or_collide_are_refused(tmp_path, capsys):
    src = tmp_path / "clips"
    src.mkdir()
    a = _video(src / "a.mp4", 1.0)
    other = tmp_path / "other"
    other.mkdir()
    a2 = _video(other / "a.mkv", 1.0, seed=3)
    digest = a.read_bytes()
    assert main(["generate", str(a), "-o", str(src), *DEBUG_MODEL, "--overwrite"]) == 1
    assert "would replace the input" in capsys.readouterr().err and a.read_bytes() == digest
    assert main(["generate", str(a), str(a2), "-o", str(tmp_path / "out"), *DEBUG_MODEL]) == 1
    assert "same output name" in capsys.readouterr().err


def test_ctrl_c_leaves_no_half_written_file(tmp_path, capsys, monkeypatch):
    import vmas.generate

    real = vmas.generate._write_outputs

    def interrupted(job, pipe, out_dir, *args, **kwargs):
        (Path(out_dir) / f"{job.video.stem}.mp4").write_bytes(b"half an mp4")
        raise KeyboardInterrupt

    monkeypatch.setattr(vmas.generate, "_write_outputs", interrupted)
    out = tmp_path / "out"
    assert main(["generate", str(_video(tmp_path / "v.mp4", 1.0)), "-o", str(out), *DEBUG_MODEL]) == 130
    assert list(out.iterdir()) == []
    assert real is not interrupted


# -------------------------------------------------------------------------------- --set, warnings, clearing
def test_set_overrides_config_values_of_a_stored_checkpoint_and_clears_strings():
    cfg = load_config(CONFIGS / "debug.yaml", ["model.codec.pretrained=", "model.tags.captioner=null"])
    assert cfg.model.codec.pretrained == "" and cfg.model.tags.captioner == ""
    pipe = load_model("vmas-debug-random", overrides=["generation.top_k=7", "model.tags.llm=/models/llm"])
    assert pipe.spec.sampling.top_k == 7 and pipe.spec.llm == "/models/llm"
    if DEMO.exists():  # a checkpoint's stored config, not a preset
        pipe = load_model("vmas-synthmv-demo", overrides=["model.tags.captioner=/models/cap", "generation.cfg=2"])
        assert pipe.spec.captioner == "/models/cap" and pipe.spec.sampling.cfg == 2.0
        with pytest.raises(CheckpointError, match="do not fit"):
            load_model("vmas-synthmv-demo", overrides=["model.lm.dim=48"])
    with pytest.raises(VmasError, match="unknown config key"):
        load_model("vmas-debug-random", overrides=["generation.nope=1"])


@needs_demo
def test_auto_tags_error_names_the_set_flag(tmp_path, capsys):
    rc = main(["generate", str(_video(tmp_path / "v.mp4", 1.0)), "-o", str(tmp_path / "out"), "--auto-tags", "-q",
               "--model", "vmas-synthmv-demo", "--set", "model.tags.captioner="])
    lines = _err_lines(capsys)
    assert rc == 2 and lines[-1].startswith("error:") and "--set model.tags.captioner=" in lines[-1], lines


def test_flags_without_effect_warn(tmp_path, capsys):
    rc = main(["generate", str(_video(tmp_path / "v.mp4", 1.0)), "-o", str(tmp_path / "out"), *DEBUG_MODEL,
               "--guide", "tags", "--beat-from-video", "--top-p", "0.9"])
    warnings = [line for line in _err_lines(capsys) if line.startswith("warning:")]
    assert rc == 0
    assert any("--guide tags has no effect" in w for w in warnings)
    assert any("--beat-from-video has no effect" in w for w in warnings)
    assert any("--top-k has no effect" in w for w in warnings)
    spec = load_model("vmas-debug-random").spec
    assert GenerationRequest(tags=["piano"], guide="tags", top_k=5).ineffective(spec) == []


# ------------------------------------------------------------------------------ training commands that compose
def test_resume_never_swallows_an_override():
    from vmas.solvers.cli import parse_args

    args = parse_args([str(CONFIGS / "debug.yaml"), "--resume", "optim.max_steps=15", "train.seed=3"])
    assert args.resume == "auto" and args.overrides == ["optim.max_steps=15", "train.seed=3"]
    args = parse_args(["--resume", str(CONFIGS / "debug.yaml"), "optim.max_steps=15"])
    assert args.resume == "auto" and args.config.endswith("debug.yaml")
    args = parse_args([str(CONFIGS / "debug.yaml"), "--resume", str(CONFIGS)])  # an existing folder is the value
    assert args.resume == str(CONFIGS)
    assert parse_args([str(CONFIGS / "debug.yaml"), "--resume"]).resume == "auto"


def _readme_training_block() -> list:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Training\n.*?```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_readme_training_block_runs_top_to_bottom(tmp_path, capsys):
    """The README's first Training block in its order and with its values: train, continue the finished run to a
    larger max_steps, be told that a finished run is finished, train a second run beside it, generate with the
    first run's export. Run in this process (train.sh's launcher and DeepSpeed swapped for the plain PyTorch
    engine, ``NPROC`` ignored: tests/test_distributed.py runs the launcher) with the run folders under tmp."""
    from vmas.solvers.cli import main as train_main

    commands = _readme_training_block()
    assert any("--resume optim.max_steps=" in c for c in commands) and commands[-1].startswith("vmas generate")
    for cmd in commands:
        args = shlex.split(cmd.replace("runs/", f"{tmp_path}/runs/").replace("outputs/", f"{tmp_path}/outputs/"))
        if "train.sh" in args:
            args = args[args.index("train.sh") + 1:] + ["train.engine=torch", "train.progress=false"]
            if not any(a.startswith("train.out_dir=") for a in args):  # the preset's runs/debug, under tmp
                args.append(f"train.out_dir={tmp_path}/runs/debug")
            rc = train_main(args)
        else:
            assert args[:2] == ["vmas", "generate"], cmd
            rc = main(args[1:] + ["-q"])
        err = capsys.readouterr().err
        assert rc == 0, f"{cmd}\n{err[-2000:]}"
        if cmd.endswith("--resume"):
            assert "is finished" in err and "nothing to do" in err.strip().splitlines()[-1]
    summary = json.loads((tmp_path / "runs" / "debug" / "summary.json").read_text())
    resumed_to = int(re.search(r"--resume optim\.max_steps=(\d+)", " ".join(commands)).group(1))
    assert summary["steps"] == resumed_to and summary["resumed_from_step"] == 10
    assert (tmp_path / "outputs").is_dir() and any((tmp_path / "outputs").rglob("*.mp4"))


def test_duration_trims_the_mp4_too(tmp_path, pipe):
    """``--duration 1.2`` on a 3 s video: NAME.wav and NAME.mp4 (picture and sound) both last 1.2 s, not 1.2 s of
    music followed by 1.8 s of silence under the rest of the picture."""
    from vmas.data.media import audio_duration, probe_video

    src = _video(tmp_path / "v.mp4", 3.0)
    res = generate_for_videos([src], pipe, tmp_path / "out", GenerationRequest(top_k=16, duration=1.2),
                              progress=False)[0]
    frame = 1 / 25
    assert res.duration == pytest.approx(1.2)
    assert abs(audio_duration(res.wav) - 1.2) <= 1 / 50
    video = probe_video(res.mp4).duration
    assert 1.2 - 1e-6 <= video <= 1.2 + 2 * frame  # whole frames; B-frame reordering may keep one more
    assert abs(audio_duration(res.mp4) - video) <= 1024 / 48000 + 1e-3  # one AAC frame


def test_resume_takes_a_run_folder_and_knows_a_finished_checkpoint(tmp_path):
    from vmas.solvers.cli import _finished, _resume_folder

    for step in (2, 4):
        folder = tmp_path / "run" / "checkpoints" / f"step_{step:08d}"
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text(json.dumps({"step": step}))
    newest = tmp_path / "run" / "checkpoints" / "step_00000004"
    assert _resume_folder(str(tmp_path / "run"), tmp_path / "elsewhere") == newest
    assert _resume_folder("auto", tmp_path / "run") == newest
    assert _resume_folder("auto", tmp_path / "empty") is None
    assert _finished(newest, 4) == 4 and _finished(newest, 5) is None and _finished(None, 1) is None
    (tmp_path / "bare" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        _resume_folder(str(tmp_path / "bare"), tmp_path)
