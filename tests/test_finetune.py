"""Fine-tuning (issue 19): LoRA adapters and their merge, ``train.init_from`` + configs/finetune.yaml layered on the
base model's stored config, the frozen encoder, early stopping on validation CE, and the export in ``vmas generate``.
"""
from __future__ import annotations

import json
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
