"""One device check of a preset: training step, generation, encoder and codec timed where they will run.

``tools/gpu_check.py`` is the command; this module holds the measurements so they can be read and tested. A
researcher about to rent a cluster runs it on one node first (README, "Before a long job"): a few minutes tell
whether the paper preset's step fits the GPU, how fast it is against the GPU's peak, and whether generation's
decoders (today's cached loop, the static step, its CUDA graph) behave. The same code runs on the CPU at debug size
inside the test suite, so it cannot rot; there every GPU-only figure is ``None`` with the reason in ``notes``.

What is measured (all with random weights: timings and memory do not depend on the values, and no pretrained
weights can be downloaded on an isolated node):

- ``train``: the solver's own training objects (``vmas.solvers.memory.training_objects``) on the configured engine
  (DeepSpeed ZeRO-2, bf16, activation checkpointing for the paper preset), the real micro-batch of synthetic clips:
  step time, audio tokens/s, model FLOPs utilisation (``3 x`` forward FLOPs counted by ``FlopCounterMode``, the
  usual MFU convention: activation recomputation is not counted as useful work) against the GPU's dense bf16 peak,
  and peak memory against ``estimate_training`` for the same setting.
- ``generate``: one window of the preset's clip length with CFG (batch 1, conditional + unconditional branch) for
  each decoder the LM offers: steps/s and wall time, peak memory against the inference estimate.
- ``encoder``: one forward of the preset's frames (96 at 224² for the paper); ``codec``: decode of one window.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
import typing as tp

import torch

from vmas.config import Config

# Dense bf16 tensor-core peak (FLOP/s, no sparsity) by the name CUDA reports; the first match wins.
BF16_PEAK = (("H200", 989.4e12), ("H100 PCIe", 756.0e12), ("H100", 989.4e12), ("A100", 312.0e12),
             ("L40S", 362.1e12), ("A10", 125.0e12), ("RTX 4090", 165.2e12))


def bf16_peak(device: torch.device) -> tp.Optional[float]:
    """The device's dense bf16 peak in FLOP/s, or None (a CPU, or a GPU not in :data:`BF16_PEAK`)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK if key in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> tp.Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def timed(fn: tp.Callable[[], tp.Any], device: torch.device, repeats: int) -> tp.Tuple[float, tp.Any]:
    """(median seconds of ``repeats`` calls after one warm-up call, last result); synchronised on a GPU."""
    out = fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], out


def forward_flops(fn: tp.Callable[[], tp.Any]) -> int:
    """FLOPs (2 per multiply-add) of one call, counted op by op by ``FlopCounterMode``, under no_grad."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


def train_check(cfg: Config, device: torch.device, steps: int) -> tp.Dict[str, tp.Any]:
    """Time ``steps`` optimiser steps of the configured engine on one micro-batch of synthetic clips."""
    from vmas.builders import build_codec
    from vmas.solvers.engines import build_engine
    from vmas.solvers.memory import estimate_training, synthetic_inputs, training_objects
    from vmas.solvers.optim import build_scheduler

    batch = cfg.data.batch_size
    codec = build_codec(cfg.model.codec, load_weights=False)
    step_module, optimizer = training_objects(cfg, codec)
    engine = build_engine(cfg, step_module, optimizer, build_scheduler(optimizer, cfg.optim), 1, 0)
    dev = torch.device(engine.device)
    inputs = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in synthetic_inputs(cfg, batch).items()}
    dtype = next(engine.module.parameters()).dtype
    if "tag_emb" in inputs:
        inputs["tag_emb"] = inputs["tag_emb"].to(dtype)

    def one_step() -> float:
        total, _ = engine(**inputs)
        engine.backward(total)
        engine.step()
        return total

    model = engine.module.model
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if dtype == torch.bfloat16 and dev.type == "cpu" \
        else contextlib.nullcontext()  # DeepSpeed bf16 casts the weights itself on a GPU
    with autocast:
        model.eval()  # the counted forward: the model as trained, without dropout's extra ops
        fwd = forward_flops(lambda: engine(**inputs))
        model.train()
        _reset_peak(dev)
        seconds, loss = timed(one_step, dev, steps)
    tokens = batch * cfg.model.lm.n_q * round(cfg.data.clip_seconds * cfg.data.frame_rate)
    peak = bf16_peak(dev)
    est = estimate_training(cfg, batch, world_size=1)
    measured = _peak_gib(dev)
    est_gib = (est["params"] + est["optimizer"] + est["ema"] + est["peak"]) / 2 ** 30
    return {"engine": cfg.train.engine, "zero_stage": cfg.train.zero_stage if cfg.train.engine == "deepspeed" else 0,
            "precision": cfg.train.precision, "micro_batch": batch,
            "grad_checkpointing": bool(cfg.model.lm.grad_checkpointing or cfg.model.encoder.grad_checkpointing),
            "step_s": seconds, "audio_tokens_per_s": tokens / seconds, "loss": float(loss.detach()),
            "forward_gflops": fwd / 1e9, "model_tflops_per_s": 3 * fwd / seconds / 1e12,
            "mfu": 3 * fwd / seconds / peak if peak else None,
            "peak_memory_gib": measured, "estimated_memory_gib": est_gib,
            "memory_ratio_estimate_over_measured": est_gib / measured if measured else None}


def decoders() -> tp.List[str]:
    """The decoders generation offers (``SamplingParams.decode``); today's cached loop alone before the static step."""
    from vmas.sampling import SamplingParams

    if "decode" not in {f.name for f in dataclasses.fields(SamplingParams)}:
        return ["cached"]
    from vmas.sampling import DECODERS

    return [d for d in DECODERS if d != "recompute"]


def generate_check(cfg: Config, device: torch.device, cfg_scale: float = 3.0, repeats: int = 1,
                   only: tp.Sequence[str] = ()) -> tp.Dict[str, tp.Any]:
    """One window of ``data.clip_seconds`` with CFG per decoder: steps/s and wall time (the first call of each
    decoder compiles or captures and is not timed), plus the encoder's forward and the codec's decode."""
    from vmas.builders import build_codec, build_model
    from vmas.sampling import SamplingParams

    codec = build_codec(cfg.model.codec, load_weights=False).to(device).eval()
    model = build_model(cfg, codec=codec, load_weights=False).to(device).eval()
    data = cfg.data
    num_frames = round(data.clip_seconds * data.frame_rate)
    frames = torch.randint(0, 256, (1, data.num_frames, data.image_size, data.image_size, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).to(device)
    bf16 = device.type == "cuda"  # on a GPU generation runs under bf16 autocast; the CPU check stays fp32
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    out: tp.Dict[str, tp.Any] = {"window_s": data.clip_seconds, "num_frames": num_frames, "cfg": cfg_scale,
                                 "autocast_bf16": bf16, "decoders": {}}
    with torch.no_grad(), amp:
        enc_s, tokens = timed(lambda: model.encode_video(frames), device, repeats)
        out["encoder"] = {"frames": data.num_frames, "image_size": data.image_size, "forward_s": enc_s,
                          "tokens": list(tokens.shape)}
        steps = model.pattern.num_steps(num_frames)
        for decode in [d for d in decoders() if not only or d in only]:
            extra = {"decode": decode} if len(decoders()) > 1 else {}
            sampling = SamplingParams(cfg=cfg_scale, top_k=250, **extra)
            _reset_peak(device)
            try:
                seconds, codes = timed(lambda s=sampling: model.generate(
                    None, num_frames, video_tokens=tokens, sampling=s,
                    generator=torch.Generator(device).manual_seed(0)), device, repeats)
            except (RuntimeError, ValueError) as err:  # e.g. a CUDA graph on the CPU: say why, keep the others
                out["decoders"][decode] = {"skipped": str(err).splitlines()[0][:200]}
                continue
            out["decoders"][decode] = {"window_s_wall": seconds, "steps": steps, "steps_per_s": steps / seconds,
                                       "peak_memory_gib": _peak_gib(device)}
        codec_s, wav = timed(lambda: codec.decode(codes), device, repeats)
        out["codec"] = {"decode_s": codec_s, "samples": int(wav.shape[-1])}
    from vmas.solvers.memory import estimate_inference

    out["estimated_memory_gib"] = estimate_inference(cfg, "bf16" if bf16 else "fp32")["total_gib"]
    return out
