"""Count the video encoders' cost the way the Hiera and VMAs papers do (one multiply-add = one "FLOP").

    .venv/bin/python tools/count_flops.py            # table
    .venv/bin/python tools/count_flops.py --json     # one JSON object on stdout (used by the README / docs)

Each model is built on the CPU, moved to the ``meta`` device and run once under
``torch.utils.flop_counter.FlopCounterMode``, so attention matmuls are counted and no real compute happens (the
whole run takes well under a minute). ``gmacs`` = multiply-adds / 1e9, ``gflops`` = 2 x gmacs.

Models: ``vmas_hiera_base`` (96x224², ours), ``hiera_base_16x224`` (stock, 16 frames) and ``clip_vit_b16`` (timm
``vit_base_patch16_clip_224`` run per frame on 16 frames, summed), the paper's comparison.
"""
from __future__ import annotations

import argparse
import json
import typing as tp

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vmas.models import hiera


def count(model: nn.Module, x_shape: tp.Sequence[int]) -> tp.Tuple[float, torch.Size]:
    """(GMACs, output shape) of one forward of ``model`` on a ``meta`` input of ``x_shape``."""
    model = model.to("meta").eval()
    x = torch.empty(*x_shape, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = model(x)
    return counter.get_total_flops() / 2e9, out.shape


def hiera_entry(name: str, **overrides: tp.Any) -> dict:
    model = hiera.ENCODERS[name](**overrides)
    params = sum(p.numel() for p in model.parameters())
    stage_shapes = model.stage_shapes()
    T, S = model.input_size[0], model.input_size[1]
    gmacs, out = count(model, (1, 3, T, S, S))
    return {"gmacs": round(gmacs, 3), "gflops": round(2 * gmacs, 3), "params": params, "out_shape": list(out[1:]),
            "stage_shapes": stage_shapes}


def clip_entry(frames: int = 16) -> dict:
    import timm

    model = timm.create_model("vit_base_patch16_clip_224", pretrained=False, num_classes=0)
    params = sum(p.numel() for p in model.parameters())
    grid = 224 // 16
    gmacs, out = count(model, (frames, 3, 224, 224))  # frames as a batch: per-frame cost, summed
    return {"gmacs": round(gmacs, 3), "gflops": round(2 * gmacs, 3), "params": params, "out_shape": list(out),
            "stage_shapes": [[frames, grid, grid, model.num_features]]}


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--mask-units", action="store_true",
                        help="also count vmas_hiera_base with mask unit (1,56,56) (the per-frame alternative)")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    result = {
        "vmas_hiera_base": hiera_entry("vmas_hiera_base"),
        "hiera_base_16x224": hiera_entry("hiera_base_16x224"),
        "clip_vit_b16": clip_entry(16),
    }
    if args.mask_units:
        result["vmas_hiera_base@mu1x56x56"] = hiera_entry("vmas_hiera_base", mask_unit_size=[1, 56, 56])
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'model':28s} {'GMACs':>9s} {'GFLOPs':>9s} {'params':>8s}  out")
        for name, r in result.items():
            print(f"{name:28s} {r['gmacs']:9.1f} {r['gflops']:9.1f} {r['params'] / 1e6:7.1f}M  {r['out_shape']}")
        base = result["hiera_base_16x224"]["gmacs"]
        print(f"vmas / stock 16x224: {result['vmas_hiera_base']['gmacs'] / base:.2f}x; "
              f"vmas / clip x16: {result['vmas_hiera_base']['gmacs'] / result['clip_vit_b16']['gmacs']:.2f}x")
    return result


if __name__ == "__main__":
    main()
