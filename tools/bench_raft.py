"""Time the preprocessing motion curve: RAFT on one clip (96 frames at 224², SPEC §2) on this machine.

    .venv/bin/python tools/bench_raft.py                 # raft_small, random weights, CPU
    .venv/bin/python tools/bench_raft.py --flow raft_large --device cuda --weights DEFAULT

Random weights cost exactly what trained ones do (same architecture, same iterations), so the number holds for
the real model. Prints one JSON line: frames/s counts input frames (96 frames = 95 flow pairs per clip).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--flow", default="raft_small", choices=["raft_small", "raft_large", "farneback"])
    parser.add_argument("--weights", default="random", help="torchvision name, local path, or 'random'")
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=8, help="frame pairs per RAFT call")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()

    from vmas.alignment import load_raft, video_motion

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    frames = torch.randint(0, 256, (args.frames, args.size, args.size, 3), dtype=torch.uint8)
    model = None if args.flow == "farneback" else load_raft(args.flow, args.weights, args.device)
    video_motion(frames[:2], flow=args.flow, model=model)  # warm-up (allocator, kernels)
    t0 = time.perf_counter()
    motion = video_motion(frames, flow=args.flow, model=model, batch_size=args.batch_size)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    print(json.dumps({"flow": args.flow, "device": args.device, "threads": args.threads, "frames": args.frames,
                      "size": args.size, "batch_size": args.batch_size, "seconds": round(seconds, 2),
                      "frames_per_s": round(args.frames / seconds, 2), "pairs": int(motion.numel()),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
