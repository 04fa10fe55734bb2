"""Fine-tuning (issue 19): LoRA adapters and their merge, ``train.init_from`` + configs/finetune.yaml layered on the
base model's stored config, the frozen encoder, early stopping on validation CE, and the export in ``vmas generate``.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest
import torch

from vmas.builders import build_model
from vmas.config import load_config
from vmas.solvers.lora import apply_lora, merge_lora

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"


def test_lora_starts_at_the_base_model_and_merges_exactly():
    cfg = load_config(DEBUG)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 5, cfg.model.lm.dim)
    layer = model.lm.transformer.layers[0].linear1
    y0 = layer(x)
    names = apply_lora(model, ["lm.transformer."], rank=4, alpha=8.0)
    assert "lm.transformer.layers.0.linear1" in names and not any(n.startswith("encoder") for n in names)
    assert torch.equal(layer(x), y0)  # B = 0: the adapted model starts as the base model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.endswith(("lora_A", "lora_B")) for n in trainable if n.startswith("lm.transformer."))
    assert "lm.linears.0.weight" in trainable and "fuser.video_proj.weight" in trainable  # outside the targets
    with torch.no_grad():
        layer.lora_B.normal_()
    y1 = layer(x)
    a, b = layer.lora_A.detach(), layer.lora_B.detach()
    assert torch.allclose(y1, x @ (base["lm.transformer.layers.0.linear1.weight"] + 2.0 * b @ a).T, atol=1e-5)
    merged = merge_lora(model.state_dict(), 8.0 / 4)
    assert set(merged) == set(base)  # the plain VMAS keys
    fresh = build_model(cfg).eval()
    fresh.load_state_dict(merged)
    assert torch.allclose(fresh.lm.transformer.layers[0].linear1(x), y1, atol=1e-5)


def test_finetune_recipe_from_an_export(tmp_path):
    """Base run (debug, synthetic) -> export -> configs/finetune.yaml with train.init_from: the fine-tune starts
    from the export's weights, keeps the encoder frozen, trains LoRA adapters, stops early on validation CE and
    exports a plain model that ``vmas generate`` runs."""
    from test_data_resume import _write_shards
    from test_generate import _video

    from vmas.cli import main as vmas_main
    from vmas.solvers.cli import main as train_main

    base_out = tmp_path / "base"
    assert train_main([str(DEBUG), "train.engine=torch", f"train.out_dir={base_out}", "train.progress=false",
                       "optim.max_steps=3", "train.save_every=3"]) == 0
    base_model = base_out / "model.pt"
    val = tmp_path / "val"
    val.mkdir()
    _write_shards(val, [4], load_config(DEBUG))
    ft_out = tmp_path / "ft"
    # tiny-data settings: lr high enough to move in a few steps, evaluate every step, patience 1 (a real run keeps
    # the recipe's 50 / 4); synthetic batches stand in for the user's shards (the data path is tested elsewhere)
    rc = train_main([str(ROOT / "configs" / "finetune.yaml"), f"train.init_from={base_model}",
                     f"train.out_dir={ft_out}", "train.engine=torch", "train.progress=false", "train.synthetic=true",
                     f"data.val_shards={val}/train-000000.tar", "train.eval_every=1", "train.early_stop=1",
                     "optim.max_steps=12", "optim.warmup_steps=1", "optim.lr=5.0e-2", "optim.lr_pretrained=1.0e-3",
                     "train.save_every=100"])
    assert rc == 0
    summary = json.loads((ft_out / "summary.json").read_text())
    meta = json.loads(next((ft_out / "checkpoints").glob("step_*/meta.json")).read_text())
    history = meta["history"]
    vals = [h["val_ce"] for h in history]
    assert summary["early_stopped"] == (summary["steps"] < 12)
    if summary["early_stopped"]:  # stopped right after the first evaluation that did not improve
        assert vals[-1] >= min(vals[:-1])
    assert min(vals) < vals[0] or summary["early_stopped"]
    cfg = meta["config"]
    assert cfg["model"]["lm"]["dim"] == 32 and cfg["train"]["init_from"] == str(base_model)  # base's model.*
    base = torch.load(base_model, weights_only=False)["model"]
    ft = torch.load(ft_out / "model.pt", weights_only=False)
    assert set(ft["model"]) == set(base)  # LoRA merged: plain VMAS keys
    enc = [k for k in base if k.startswith("encoder.")]
    assert all(torch.equal(ft["model"][k], base[k]) for k in enc)  # frozen encoder
    moved = [k for k in base if k.startswith("lm.transformer.") and k.endswith("linear1.weight")]
    assert moved and all(not torch.equal(ft["model"][k], base[k]) for k in moved)  # the merged LoRA update
    video = _video(tmp_path / "clip.mp4", 1.5)
    assert vmas_main(["generate", str(video), "-o", str(tmp_path / "gen"), "--model", str(ft_out / "model.pt"),
                      "--top-k", "16", "-q"]) == 0
    assert (tmp_path / "gen" / "clip.mp4").stat().st_size > 0


def test_init_from_refuses_another_architecture(tmp_path):
    from vmas.errors import CheckpointError
    from vmas.solvers.export import load_init_weights

    model = build_model(load_config(DEBUG))
    torch.save({"model": {"lm.bogus": torch.zeros(1)}, "config": {}}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_init_weights(model, tmp_path / "m.pt")


# ------------------------------------------------------------------------- class shift from the shipped demo model
DEMO = ROOT / "vmas" / "assets" / "vmas-synthmv-demo.pt"
TARGET = int(os.environ.get("VMAS_FINETUNE_CLASS", 0))  # 0 = sunset_circle: acoustic guitar, A minor, slow
SEEDS = (0, 1)


def _synthmv_clips(folder: Path, classes, seed: int, seconds: float):
    """SynthMV mp4s (32 px, the model's frame size) of the given classes -> (manifest rows, clip dicts)."""
    from vmas.synthmv import clip_seed, generate_clip

    rows, clips = [], []
    for i, c in enumerate(classes):
        path = folder / f"clip_{seed}_{i:02d}.mp4"
        labels = generate_clip(clip_seed(seed, i), c, seconds, 32, out_path=path).labels
        rows.append({"key": path.stem, "video": str(path), "start": 0.0, "duration": seconds, "split": "train",
                     "tags": labels["tags"], "class_id": c})
        clips.append({"id": path.stem, "video": str(path), "class_id": c})
    return rows, clips


@torch.no_grad()
def _judged(pipe, classifier, clips, seed: int):
    """Classes the codec-aware classifier hears in ``pipe``'s music: for each video of ``clips`` (tags off, the
    model's CFG) and for 12 unconditional samples (null video and tags: the model's prior, CFG's other branch)."""
    from vmas.evaluation import generate_windows

    g = pipe.config.generation
    sr = pipe.codec.sample_rate
    video = classifier.predict(generate_windows(pipe, clips, seed=seed, cfg_scale=g.cfg, top_k=g.top_k), sr)
    model, frames = pipe.model, round(pipe.config.data.clip_seconds * pipe.codec.frame_rate)
    cond, mask = model.fuser(None, None, None, batch_size=12)
    codes = model.lm.generate(cond, mask, None, None, num_frames=frames, cfg=1.0, top_k=g.top_k,
                              generator=torch.Generator().manual_seed(seed),
                              step_cond=model.fuser.step_condition(None, model.pattern.num_steps(frames)))
    uncond = classifier.predict([w.numpy() for w in pipe.codec.decode(codes)[:, 0]], sr)
    return video, uncond


def test_finetune_moves_the_demo_model_toward_the_class(tmp_path):
    """The shipped demo model, fine-tuned with configs/finetune.yaml (frozen encoder, LoRA on the LM) on 6 SynthMV
    clips of one class, makes music of that class more often: for videos of the OTHER five classes (tags off) and
    unconditionally, judged by the codec-aware SynthMV classifier over fixed sampling seeds; the fine-tuned export
    then runs in ``vmas generate``.

    The recipe's 2000 steps at lr 1e-4 with early stopping are compressed into 60 steps at 1e-2 (adapters) / 3e-3
    (the rest) without early stopping: 6 clips are memorised quickly, so the held-out clips' validation CE rises
    while the class moves (see docs/training.md). ~80 CPU-seconds on one thread."""
    import dataclasses

    from vmas.cli import main as vmas_main
    from vmas.data.shards import alignment_fn, write_shards
    from vmas.experiments.scoring import synthmv_judge
    from vmas.hub import load_model
    from vmas.solvers.cli import main as train_main

    base = load_model(DEMO)
    seconds, d = base.config.data.clip_seconds, base.config.data
    classifier, _ = synthmv_judge(base)
    rows, _ = _synthmv_clips(tmp_path / "mine", [TARGET] * 8, 4242, seconds)  # "your videos": one class
    for row in rows[6:]:
        row["split"] = "val"
    codec = base.codec
    frames = round(d.clip_seconds * d.frame_rate)
    write_shards(rows, tmp_path / "shards", dataclasses.replace(d, clips_per_shard=8),
                 lambda: (lambda wav: codec.encode(wav).detach()),  # the export's codec, as the fine-tune uses it
                 functools.partial(alignment_fn, base.config.loss, d.sample_rate, d.fps, float(d.frame_rate), frames),
                 splits=("train", "val"))
    _, clips = _synthmv_clips(tmp_path / "eval", [c for c in range(6) if c != TARGET for _ in range(2)], 777, seconds)
    before = [_judged(base, classifier, clips, s) for s in SEEDS]

    out = tmp_path / "ft"
    assert train_main([str(ROOT / "configs" / "finetune.yaml"), f"train.init_from={DEMO}", f"train.out_dir={out}",
                       "train.engine=torch", "train.progress=false", f"data.train_shards={tmp_path}/shards/train-*.tar",
                       f"data.val_shards={tmp_path}/shards/val-*.tar", "data.batch_size=6", "data.num_workers=0",
                       "optim.max_steps=60", "optim.warmup_steps=2", "optim.lr=1.0e-2", "optim.lr_pretrained=3.0e-3",
                       "train.eval_every=60", "train.early_stop=0", "train.save_every=60"]) == 0
    tuned = load_model(out / "model.pt")
    after = [_judged(tuned, classifier, clips, s) for s in SEEDS]

    def count(results, which):  # generations judged TARGET, over the seeds
        return int(sum((r[which] == TARGET).sum() for r in results))

    video0, video1 = count(before, 0), count(after, 0)  # of 10 videos x 2 seeds
    uncond0, uncond1 = count(before, 1), count(after, 1)  # of 12 samples x 2 seeds
    print(f"class {TARGET}: other-class videos {video0}/20 -> {video1}/20, unconditional {uncond0}/24 -> {uncond1}/24")
    assert uncond1 >= uncond0 + 8, (uncond0, uncond1)  # measured 9 -> 21 (class 2: 3 -> 16)
    # measured 2 -> 6 (the same with 1 and 2 threads); the margin leaves room for other CPUs' sampling. The video
    # shift is class-dependent (class 2: 0 -> 2, see docs/training.md); the prior's above is the robust one
    assert video1 >= video0 + 2, (video0, video1)

    assert vmas_main(["generate", clips[0]["video"], "-o", str(tmp_path / "gen"), "--model", str(out / "model.pt"),
                      "--duration", "2", "-q"]) == 0
    assert (tmp_path / "gen" / f"{clips[0]['id']}.mp4").stat().st_size > 0
