"""Inference memory estimate for a preset (default: paper), by calculation on the meta device.

    python tools/estimate_memory.py --config configs/paper.yaml --dtype bf16 [--json]

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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs" / "paper.yaml"))
    p.add_argument("--dtype", default="bf16", choices=sorted(BYTES))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    est = estimate(load_config(args.config), args.dtype)
    if args.json:
        print(json.dumps(est))
    else:
        for k, v in est.items():
            print(f"{k:26s} {v:.3f}" if isinstance(v, float) else f"{k:26s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
