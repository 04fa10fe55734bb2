"""Every shell command in docs/*.md and README.md runs (issue 36: docs/training.md's export command did not).

Each ``bash`` code block (and each plain block made only of commands) of each page is run top to bottom in a
scratch folder that looks like the repository (``vmas``, ``configs``, ``tools``, ``datasets``, ``train.sh``,
``Makefile``, ``.venv`` linked in), at debug size. A command runs as written except for what :data:`TINY` rewrites, each rule
with its reason (train.sh's DeepSpeed launcher becomes the plain PyTorch engine, as in the README test: the
launcher is tested in tests/test_distributed.py; sizes and step counts become tiny; paper weights become the debug
run's own). Only commands that truly need what this machine does not have are skipped (:data:`SKIP`, each with its
reason): paper weights and data, a GPU, a cluster, a server that runs until stopped, the test suite itself and
benchmarks of hours that another test runs at tiny size. Inputs the commands name (``my_videos/``, ``clip.mp4``,
``list.jsonl``, tiny captioner and LLM folders, ...) are made by :func:`_inputs`.

A new command in the docs is run by this test without any change here; a rule that no longer matches any command
fails the test, so the tables cannot rot. Python blocks are API sketches (``wav``, ``cfg`` come from the reader's
code) and are not run.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import typing as tp
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
LINKED = ("vmas", "configs", "tools", "datasets", "train.sh", "Makefile", ".venv")
COMMAND_WORDS = ("python", ".venv/bin/python", "bash", "vmas", "make", "torchrun", "srun", "cat", "export")

SKIP: tp.List[tp.Tuple[str, str]] = [
    (r"#SBATCH|^(?:[A-Z_]+=\S+ )*sbatch ", "a SLURM batch job: needs sbatch and a cluster"),
    (r"--nnodes 4|^srun |HOSTFILE=hostfile", "4 nodes x 8 GPUs (rank splitting is run on this CPU by "
                                             "tests/test_preprocess_ranks.py and tests/test_distributed.py)"),
    (r"--device cuda", "needs a CUDA GPU (the same command on the CPU is run where the docs give it)"),
    (r"configs/paper\.yaml", "the paper preset: pretrained EnCodec 32 kHz / Hiera / CLIP weights, Demucs and the "
                             "DISCO-MV data, none of which are on this machine"),
    (r"runs/paper/ckpt\.pt|--fad-backbone vggish|--kl-classifier passt", "the paper model and the metrics' "
                                                                         "pretrained weights (VGGish, PaSST)"),
    (r"V2M-bench", "the V2M-bench data set (and the metrics' pretrained weights)"),
    (r"evaluate\.py --reference", "its default FAD backbone is VGGish, whose weights are not on this machine "
                                  "(the two-folder path with the mel backbone is tests/test_metrics.py)"),
    (r"^make test$", "installs, then runs the whole test suite, this test included (CI runs it through .ci/run)"),
    (r"^vmas app ", "a web server that runs until stopped: tests/test_app.py starts it and drives the page in Chromium"),
    (r"tools/unpaired_benchmark\.py", "trains 2 models x 3 seeds for 300-450 steps on 480 SynthMV videos (hours of CPU): "
                                     "tests/test_tools.py::test_unpaired_benchmark_at_tiny_size runs it at tiny size"),
]
"""(regex on the command, why it cannot run here). The first match wins."""


def _train_sh(m: re.Match) -> str:
    return f"python tools/train.py {m.group(1)} train.engine=torch train.progress=false"


def _tiny_synthmv(m: re.Match) -> str:
    scenes = re.search(r"--scenes (\d+)", m.group(0))  # the generator needs 2 s a scene
    seconds = 2 * int(scenes.group(1)) if scenes else 6
    return f"{m.group(1)}--num {min(int(m.group(2)), 2)}{m.group(3)} --seconds {seconds} --size 16 --workers 1"


TINY: tp.List[tp.Tuple[str, tp.Union[str, tp.Callable[[re.Match], str]], str]] = [
    (r"^make demo$", "python -m vmas demo", "make demo = make install (this checkout's .venv is installed) + its "
                                            "generation step, `python -m vmas demo`"),
    (r"^(?:[A-Z_]+=\S+ )*bash train\.sh (.*)$", _train_sh,
     "train.sh -> tools/train.py on the plain PyTorch engine, one process (the launcher: tests/test_distributed.py)"),
    (r"^(.*)train\.init_from=path/to/model\.pt", r"python -m vmas.disco_mv my_videos/ --out data/mine --config "
     r"runs/debug/config.yaml --no-vocal-removal && python tools/preprocess.py --manifest data/mine/manifest.jsonl "
     r"--out data/mine/shards --config runs/debug/config.yaml && \1train.init_from=runs/debug/model.pt",
     "the README's 'curate and shard them with the base model's data settings' (docs/training.md's two commands) "
     "on 3 small videos, and the debug run's export as the trained model"),
    (r"/tmp/dbg", "tmp/dbg", "the scratch folder instead of /tmp"),
    (r"runs/paper/model\.pt", "runs/debug/model.pt", "the debug run's export stands in for the paper model"),
    (r"BASE\.yaml", "runs/debug/config.yaml", "the base model's config: the debug run's"),
    (r"(?<=\s)/models/mistral-7b-instruct", "models/mistral-7b-instruct", "a tiny local causal LM (made here)"),
    (r"tools/preprocess\.py \.\.\. --workers \d+", "tools/preprocess.py --manifest data/dbg/manifest.jsonl --out "
     "data/dbg/shards --config configs/debug.yaml --workers 2", "`...` stands for a manifest and an output folder: "
     "the debug curation's above, on 2 workers"),
    (r"(tools/train_codec\.py.*?)--(?:minutes|steps) \d+", r"\1--steps 2", "two codec steps"),
    (r"(-m vmas\.synthmv .*?)--num (\d+)(.*)$", _tiny_synthmv, "at most 2 tiny clips (16 px, 6 s or 2 s a scene)"),
    (r"(tools/bench_raft\.py.*)$", r"\1 --frames 3 --size 64", "3 frames at 64 px"),
    (r"(tools/structure_benchmark\.py .*?)( >|$)",
     r"\1 --select 1 --test 1 --seconds 6 --hits 1 --per-class 1 --crossfades 0.08\2",
     "one selection and one test video of 6 s"),
    (r"(^|&& )make (synthmv-\S+)", rf"\1make -n -C {ROOT} \2", "the SynthMV build and benchmarks take hours of CPU: a dry "
     "run in the repository checks the recipe (its steps run at tiny size in tests/test_synthmv_*.py)"),
    (r"(configs/finetune\.yaml.*)$", r"\1 optim.max_steps=2 optim.warmup_steps=1 train.eval_every=2 "
                                     r"train.save_every=2", "two fine-tuning steps"),
    (r"(-m vmas\.disco_mv (?!.*--no-vocal-removal).*)$", r"\1 --no-vocal-removal",
     "Demucs (vocal removal) is not installed here"),
    (r"^((?:python -m )?vmas generate clip\.mp4\b(?!.*--overwrite).*)$", r"\1 --overwrite", "each line of the "
     "README's examples stands alone: run one after another in one folder, the later ones would keep the first's "
     "outputs/clip.* and skip (exit 0) without generating"),
    (r"^(vmas generate .*)$", r"\1 -q", "quiet"),
]
"""(regex, replacement, why): applied in order to every command that is not skipped."""


@dataclass
class Command:
    doc: str
    line: int
    text: str


def _is_command(line: str) -> bool:
    words = line.split()
    while words and re.match(r"^[A-Z_]+=\S*$", words[0]):
        words = words[1:]
    return bool(words) and words[0] in COMMAND_WORDS


def doc_commands(path: Path) -> tp.List[Command]:
    """The shell commands of one page in order: continuation lines joined, comments dropped, a heredoc or a
    ``#!`` script kept whole."""
    commands: tp.List[Command] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        start, lang, body = i + 1, fence.group(1), []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        code = [(start + k + 1, line) for k, line in enumerate(body)]
        if lang not in ("bash", "sh", "shell", ""):
            continue
        if body and body[0].startswith("#!"):
            commands.append(Command(path.name, start + 1, "\n".join(body)))
            continue
        pending: tp.List[str] = []
        first = 0
        heredoc = None
        for n, line in code:
            if heredoc is not None:
                pending.append(line)
                if line.strip() == heredoc:
                    commands.append(Command(path.name, first, "\n".join(pending)))
                    pending, heredoc = [], None
                continue
            text = re.split(r"(?:^|\s)#(?![!{])", line, maxsplit=1)[0].rstrip()
            if not text.strip():
                continue
            if not pending:
                if lang == "" and not _is_command(text):
                    break  # a plain block that is a diagram or pseudo-code, not commands
                first = n
            doc = re.search(r"<<'?(\w+)'?", text)
            if doc:
                pending, heredoc = [text], doc.group(1)
                first = n
                continue
            pending.append(text.rstrip("\\").strip() if text.endswith("\\") else text.strip())
            if not text.endswith("\\"):
                commands.append(Command(path.name, first, " ".join(pending)))
                pending = []
    return commands


def plan(cmd: str) -> tp.Tuple[tp.Optional[str], str, tp.List[int], tp.List[int]]:
    """(reason to skip or None, the command to run, SKIP rules used, TINY rules used)."""
    for k, (pattern, why) in enumerate(SKIP):
        if re.search(pattern, cmd, re.M):
            return why, cmd, [k], []
    used = []
    for k, (pattern, repl, _why) in enumerate(TINY):
        new = re.sub(pattern, repl, cmd, flags=re.M)
        if new != cmd:
            used.append(k)
            cmd = new
    return None, cmd, [], used


def test_the_tables_match_the_docs():
    """Every SKIP and TINY rule is used by some command (no stale rules); commands were found on every page that
    has shell blocks; the parser keeps continuation lines, heredocs and scripts whole."""
    commands = [c for doc in DOCS for c in doc_commands(doc)]
    skip_used, tiny_used = set(), set()
    for c in commands:
        _, _, s, t = plan(c.text)
        skip_used.update(s)
        tiny_used.update(t)
    assert skip_used == set(range(len(SKIP))), [SKIP[k][0] for k in set(range(len(SKIP))) - skip_used]
    assert tiny_used == set(range(len(TINY))), [TINY[k][0] for k in set(range(len(TINY))) - tiny_used]
    texts = [c.text for c in commands]
    assert any(t.startswith(".venv/bin/python tools/train.py --export ") for t in texts)  # the command
    assert any(t.startswith("torchrun --nnodes 4") and t.endswith("--device cuda") for t in texts)  # joined
    assert any(t.startswith("cat > hostfile <<EOF") and t.endswith("EOF") for t in texts)  # heredoc whole
    assert not any("out  = model(" in t or "<out_dir>" in t for t in texts)  # pseudo-code blocks are not commands


# ------------------------------------------------------------------------------------------- running them
def _write_tiny_lm(folder: Path) -> None:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from vmas.tags.text_encoder import minilm_default_path

    tok = AutoTokenizer.from_pretrained(str(minilm_default_path()))
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_embd=16, n_layer=1, n_head=2, n_positions=256,
                               bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)).save_pretrained(folder)
    tok.save_pretrained(folder)


def _write_tiny_captioner(folder: Path) -> None:
    """A randomly initialised BLIP captioner (the default kind, ``Salesforce/blip-image-captioning-base``) with its
    processor, 16 wide and one layer deep: what ``--set model.tags.captioner=DIR`` loads."""
    import torch
    from transformers import AutoTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    from vmas.tags.text_encoder import minilm_default_path

    tok = AutoTokenizer.from_pretrained(str(minilm_default_path()))
    torch.manual_seed(0)
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    cfg = BlipConfig(vision_config=dict(small, image_size=32, patch_size=16),
                     text_config=dict(small, vocab_size=tok.vocab_size, encoder_hidden_size=16,
                                      max_position_embeddings=512, bos_token_id=tok.cls_token_id,
                                      sep_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
                                      eos_token_id=tok.sep_token_id), projection_dim=16)
    model = BlipForConditionalGeneration(cfg)
    model.generation_config.max_new_tokens = 8  # a short caption per keyframe
    model.save_pretrained(folder)
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tok).save_pretrained(folder)


def _inputs(box: Path, text: str) -> None:
    """The files the page's commands name, made small (only those it names)."""
    from test_data_pipeline import GOOD, write_video

    from vmas.data.curation import assign_split
    from vmas.synthmv import generate_clip, generate_multiscene, write_mp4

    if "my_videos/" in text:  # base-model curation: ids whose hash split (debug: val 0.25, test 0.25) has a val
        names = [f"v{k}" for k in range(40)]
        train = [n for n in names if assign_split(n, 0.25, 0.25) == "train"][:2]
        val = [n for n in names if assign_split(n, 0.25, 0.25) == "val"][:1]
        (box / "my_videos").mkdir()
        for j, name in enumerate(train + val):
            write_video(box / "my_videos" / f"{name}.mp4", 6.0, [0.5, 2.9, 4.4], seed=j)
    if "list.jsonl" in text:
        (box / "raw").mkdir()
        with open(box / "list.jsonl", "w") as f:
            for j, (name, (sec, flashes)) in enumerate(GOOD.items()):
                write_video(box / "raw" / f"{name}.mp4", sec, flashes, seed=j)
                f.write(json.dumps({"video": f"raw/{name}.mp4", "id": name, "tags": "piano"}) + "\n")
        (box / "splits.json").write_text(json.dumps({"val": ["bravo"], "test": ["charlie"]}))
    if "clip.mp4" in text:
        write_video(box / "clip.mp4", 3.0, [0.5, 1.7], seed=5)
    for k, name in enumerate(("other.mp4", "vlog.mp4", "edit.mp4", "clips/a.mp4", "clips/b.mp4")):
        # README: one more video, a video with its own sound, a locked edit, a folder of videos
        if re.search(r"(?<![\w/])" + re.escape(name.split("/")[0] + ("/" if "/" in name else "")), text):
            (box / name).parent.mkdir(exist_ok=True)
            write_video(box / name, 1.5 if name.startswith("clips/") else 2.0, [0.5], seed=6 + k)
    if "--manifest test.jsonl" in text:  # the README's benchmark: two clips scored against their own sound
        (box / "test").mkdir()
        for k in range(2):
            write_video(box / "test" / f"t{k}.mp4", 2.0, [0.4 + k], seed=20 + k)
        (box / "test.jsonl").write_text("".join(json.dumps({"id": f"t{k}", "video": f"test/t{k}.mp4"}) + "\n"
                                                for k in range(2)))
    if "long_edit.mp4" in text:
        clip = generate_multiscene(seed=2, scenes=3, seconds=7.5, size=32)
        write_mp4(box / "long_edit.mp4", clip.frames, clip.wav)
    if "--audio-dir DIR" in text or "songs.txt" in text:
        import soundfile as sf

        (box / "DIR").mkdir()
        for k in range(6):
            clip = generate_clip(seed=k, seconds=6.0, size=16)
            sf.write(box / "DIR" / f"song{k}.wav", clip.wav, 32000)
        (box / "songs.txt").write_text("".join(f"DIR/song{k}.wav\n" for k in range(3)))
        (box / "DIR" / "song0.caption.txt").write_text("a calm piano piece")
    if "models/mistral-7b-instruct" in text:
        _write_tiny_lm(box / "models" / "mistral-7b-instruct")
    if "models/blip" in text:
        _write_tiny_captioner(box / "models" / "blip")


def _sandbox(tmp_path: Path, text: str) -> tp.Tuple[Path, dict]:
    box = tmp_path / "repo"
    box.mkdir()
    for name in LINKED:
        (box / name).symlink_to(ROOT / name)
    (box / "docs" / "results").mkdir(parents=True)  # a page's `> docs/results/X.json` writes here, not in the repo
    shims = box / ".bin"
    shims.mkdir()
    for name, line in (("python", f'exec {sys.executable} "$@"'), ("vmas", f'exec {sys.executable} -m vmas "$@"')):
        (shims / name).write_text(f"#!/bin/sh\n{line}\n")
        (shims / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    _inputs(box, text)
    return box, env


def _run_page(doc: Path, tmp_path: Path) -> tp.List[str]:
    commands = doc_commands(doc)
    run = [(c.text, plan(c.text)[1]) for c in commands if plan(c.text)[0] is None]
    box, env = _sandbox(tmp_path, "\n".join(f"{text}\n{cmd}" for text, cmd in run))  # inputs of what runs only
    ran, failures = [], []
    for c in commands:
        why, cmd, _, _ = plan(c.text)
        if why is not None:
            print(f"SKIP {doc.name}:{c.line}: {c.text.splitlines()[0][:100]} -- {why}")
            continue
        res = subprocess.run(["bash", "-c", f"set -euo pipefail\n{cmd}"], cwd=box, env=env, capture_output=True,
                             text=True, timeout=600)
        ran.append(cmd)
        if res.returncode != 0:
            failures.append(f"{doc.name}:{c.line}: {cmd}\n  exit {res.returncode}: {res.stderr.strip()[-1500:]}")
    assert not failures, "\n".join(failures)
    return ran


PAGES = [d for d in DOCS if doc_commands(d)]


@pytest.mark.slow
@pytest.mark.parametrize("doc", PAGES, ids=[d.name for d in PAGES])
def test_docs_commands_run(doc, tmp_path):
    ran = _run_page(doc, tmp_path)
    if doc.name == "training.md":  # the export command wrote a loadable file from the checkpoint
        import torch

        blob = torch.load(tmp_path / "repo" / "tmp" / "dbg" / "vmas.pt", weights_only=True)
        assert blob["meta"]["step"] == 10 and blob["config"]["name"] == "debug"
        assert (tmp_path / "repo" / "runs" / "finetune" / "model.pt").is_file()
    if doc.name == "README.md":  # the quick start's demo, a folder of videos, the auto-tagged run, the benchmark
        box = tmp_path / "repo"
        assert (box / "outputs" / "demo" / "example.mp4").is_file()
        assert {p.name for p in (box / "out").iterdir()} >= {"clip.mp4", "other.mp4", "a.mp4", "b.mp4"}
        assert json.loads((box / "runs" / "bench" / "report.json").read_text())["coverage"]["fad"]["clips"] == 2
        assert (box / "runs" / "finetune" / "model.pt").is_file()
    if not ran:
        pytest.skip(f"every command of {doc.name} needs paper weights, a GPU or a cluster (see SKIP)")
