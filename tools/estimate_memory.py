"""Memory estimate for a preset (default: paper), by calculation on the meta device: inference, or one training step.

    python tools/estimate_memory.py --config configs/paper.yaml --dtype bf16 [--json]          # inference
    python tools/estimate_memory.py --train --config configs/paper.yaml --batch 4 --world 32   # training, per rank
    python tools/estimate_memory.py --train --measure --config configs/synthmv_tiny.yaml --batch 2 \
        model.lm.cond_dropout=0.0 ...                                      # + the same step measured on this CPU

Training (``--train``): ``vmas.solvers.memory.estimate_training`` (weights, gradients, optimiser state, EMA,
activations traced on the meta device, backward peak; ZeRO stage / precision / checkpointing from the config or the
flags); ``--measure`` also runs two real fp32 steps on the CPU and reads the same components off the allocator
(``measure_training``), printing the estimate / measurement ratio (checked within 20 % by
tests/test_estimate_memory.py). Trailing ``key=value`` arguments override the config.

Inference (default):
Counts the real parameter tensors of the encoder, condition fuser, LM and codec (built on ``meta``: no memory, no
weights needed), then adds the LM's KV cache for one 10 s window with CFG (batch 2) and the largest video-encoder
activation. The CLAP text tower (~125 M params for laion/clap-htsat-unfused's text side) is added as a constant when
the tag branch is on. Weights dominate; the estimate is an upper bound for a single video at batch size 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from vmas.builders import build_codec, build_encoder, build_fuser, build_lm
from vmas.config import load_config
from vmas.errors import VmasError
from vmas.utils import count_params

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
CLAP_TEXT_PARAMS = 125_000_000


def estimate(cfg, dtype: str = "bf16", batch: int = 1) -> dict:
    b = BYTES[dtype]
    with torch.device("meta"):
        encoder = build_encoder(cfg.model.encoder, load_weights=False)
        lm = build_lm(cfg.model.lm, load_weights=False)
        codec = build_codec(cfg.model.codec, load_weights=False)
        fuser = build_fuser(cfg, encoder.out_dim)
    lm_cfg, data = cfg.model.lm, cfg.data
    fuser_params = count_params(fuser)
    params = {"encoder": count_params(encoder), "lm": count_params(lm), "codec": count_params(codec),
              "fuser": fuser_params, "text_encoder": CLAP_TEXT_PARAMS if cfg.model.tags.enabled else 0}
    steps = round(data.clip_seconds * data.frame_rate) + lm_cfg.n_q - 1
    cfg_batch = 2 * batch  # conditional + unconditional branch
    kv_self = lm_cfg.num_layers * 2 * cfg_batch * steps * lm_cfg.dim * b
    cond_len = 48 + cfg.model.tags.max_tags
    kv_cross = lm_cfg.num_layers * 2 * cfg_batch * cond_len * lm_cfg.dim * b
    # Largest encoder activation: stage-1 tokens x MLP hidden (4x), a few live at once.
    T = data.num_frames // cfg.model.encoder.patch_stride[0]
    H = data.image_size // cfg.model.encoder.patch_stride[1]
    enc_act = 4 * batch * T * H * H * cfg.model.encoder.embed_dim * 4 * b
    weights = sum(params.values()) * b
    total = weights + kv_self + kv_cross + enc_act
    gib = 1024 ** 3
    return {"dtype": dtype, "params": params, "params_total": sum(params.values()),
            "weights_gib": weights / gib, "kv_cache_gib": (kv_self + kv_cross) / gib,
            "encoder_activations_gib": enc_act / gib, "total_gib": total / gib,
            "fits_24gb_gpu": total / gib < 20.0}


def training(cfg, args) -> dict:
    """``--train``: the per-rank estimate (GiB), and with ``--measure`` the CPU measurement beside it."""
    from vmas.solvers.memory import estimate_training, measure_training

    est = estimate_training(cfg, args.batch, world_size=args.world, zero_stage=args.zero_stage,
                            precision=args.precision)
    gib = 1024 ** 3
    out = {f"{k}_gib": v / gib for k, v in est.items() if k != "meta"}
    out.update(est["meta"])
    if args.measure:
        meas = measure_training(cfg, args.batch)
        out["measured_mib"] = {k: round(v / 2 ** 20, 3) for k, v in meas.items()}
        out["estimated_mib"] = {k: round(est[k] / 2 ** 20, 3) for k in meas}
        out["ratio"] = {k: round(est[k] / meas[k], 3) for k in meas}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs" / "paper.yaml"))
    p.add_argument("--dtype", default="bf16", choices=sorted(BYTES), help="inference weights' dtype")
    p.add_argument("--json", action="store_true")
    p.add_argument("--train", action="store_true", help="one training step instead of inference")
    p.add_argument("--batch", type=int, default=None, help="--train: micro-batch per rank (default data.batch_size)")
    p.add_argument("--world", type=int, default=1, help="--train: ranks the ZeRO partitions are divided over")
    p.add_argument("--zero-stage", type=int, default=None, choices=[0, 1, 2, 3], help="--train: default the config's")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16"], help="--train: default train.precision")
    p.add_argument("--measure", action="store_true", help="--train: also measure two fp32 steps on this CPU")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        est = training(cfg, args) if args.train else estimate(cfg, args.dtype)
    except VmasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(est))
    else:
        for k, v in est.items():
            print(f"{k:26s} {v:.3f}" if isinstance(v, float) else f"{k:26s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
