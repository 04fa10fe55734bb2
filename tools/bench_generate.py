"""Generation speed of MusicLM's decoders vs. transformers' MusicGen, in one process (ratios from one run).

(Over 150 lines: five decoders and transformers' reference, each timed and checked for equal codes, in one process.)

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python tools/bench_generate.py --json
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python tools/bench_generate.py --json --dim 1024 --layers 24 \
        --heads 16 --ffn 4096 --skip-recompute --repeat 2          # MusicGen-small's decoder size
    HF_HUB_OFFLINE=1 .venv/bin/python tools/bench_generate.py --frames 100 --skip-recompute   # quick look

Decoders (``MusicLM.generate(decode=...)``, all drawing the same numbers from the same generator, so the codes must
be equal; checked): ``cached`` (today's KV-cache loop, eager), ``static`` (the fixed-shape step with sampling inside,
eager), ``static-compiled`` (that step through ``torch.compile(fullgraph=True)``; its compile time is reported
separately as ``static_compiled_compile_s`` and not timed), ``recompute`` (no cache; runs once: it is slow, and
quadratic in the steps, so ``--skip-recompute`` at large sizes), and transformers' ``MusicgenForCausalLM.generate``.

All decoders share the same random weights (a transformers ``MusicgenForCausalLM`` mapped into ours through
:func:`vmas.models.lm.musicgen_to_vmas_state_dict`) and the same settings: one sample, 500 frames = 503 delay-pattern
steps, top-k 250, CFG 3 (so both run a batch of 2 inside). Rates are pattern steps per second (each step emits K
tokens per sample), best of ``--repeat`` alternating runs, per wall second (``*_tok_s``) and per CPU second of this
process (``*_cpu_tok_s``, steadier when other jobs share the CPU); ``best_over_hf`` is the fastest of our decoders
against transformers. The machine's load average at start and end is recorded (``meta``). transformers is given
``EncoderDecoderCache(DynamicCache(), DynamicCache())``: with its default
cache, ``generate(encoder_hidden_states=...)`` stores self- and cross-attention entries in one cache and the output is
wrong. It also needs ``attention_mask`` of shape [B, 1]: the mask it builds itself has B*K rows and perturbs the
logits by ~0.1. Its output is checked here (valid codes, and greedy codes equal to ours on a short run), so the comparison is
between two correct decoders. ``params_paper_lm`` counts the MusicGen-medium preset built on the meta device, next to
transformers' count for the same decoder config.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import typing as tp

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import MusicgenDecoderConfig, MusicgenForCausalLM  # noqa: E402
from transformers.cache_utils import DynamicCache, EncoderDecoderCache  # noqa: E402

from vmas.builders import build_fuser, build_lm  # noqa: E402
from vmas.config import LMConfig, load_config  # noqa: E402
from vmas.hub import preset_path  # noqa: E402
from vmas.models.lm import musicgen_to_vmas_state_dict  # noqa: E402
from vmas.sampling import SamplingParams  # noqa: E402
from vmas.utils import count_params  # noqa: E402


def hf_config(dim: int, layers: int, heads: int, ffn: int, n_q: int, card: int) -> MusicgenDecoderConfig:
    return MusicgenDecoderConfig(vocab_size=card, hidden_size=dim, num_hidden_layers=layers, num_attention_heads=heads,
                                 ffn_dim=ffn, num_codebooks=n_q, pad_token_id=card, bos_token_id=card,
                                 decoder_start_token_id=card, max_position_embeddings=2048)


def paper_param_counts() -> dict:
    """MusicGen-medium decoder (the paper preset), ours vs transformers, on the meta device (no memory); plus our
    condition projections (the fuser for the paper's 768-wide video tokens). Built through vmas.builders, as
    training builds them."""
    cfg = load_config(preset_path("paper.yaml"))
    lm = cfg.model.lm
    with torch.device("meta"):
        ours = count_params(build_lm(lm, load_weights=False))
        hf = count_params(MusicgenForCausalLM(hf_config(lm.dim, lm.num_layers, lm.num_heads, lm.ffn_dim, lm.n_q,
                                                        lm.card)))
        fuser = count_params(build_fuser(cfg, video_dim=768))
    return {"params_paper_lm": ours, "params_paper_lm_hf": hf, "params_condition_projections": fuser}


def timed(fn, sync) -> tp.Tuple[float, float]:
    """(wall seconds, this process's CPU seconds): on a shared machine CPU time is the steadier measure."""
    sync()
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - start, time.process_time() - cpu


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--n-q", type=int, default=4)
    parser.add_argument("--card", type=int, default=2048)
    parser.add_argument("--frames", type=int, default=500, help="code frames (pattern steps = frames + n_q - 1)")
    parser.add_argument("--cond-len", type=int, default=48, help="condition tokens (48 video tokens in the paper)")
    # a random LM has no generation config of its own: the package's default sampling (vmas.sampling.SamplingParams)
    parser.add_argument("--top-k", type=int, default=SamplingParams().top_k)
    parser.add_argument("--cfg", type=float, default=SamplingParams().cfg)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0 = torch default); per-step cost is op overhead, so 1 is fastest")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of ours / transformers (best is kept)")
    parser.add_argument("--skip-recompute", action="store_true", help="skip the slow no-cache baseline")
    parser.add_argument("--decoders", default="cached,static,static-compiled",
                        help="comma list of our decoders to time (MusicLM.generate(decode=...)); the first is the "
                             "reference the others' codes are compared with")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print

    torch.manual_seed(args.seed)
    hf = MusicgenForCausalLM(hf_config(args.dim, args.layers, args.heads, args.ffn, args.n_q, args.card))
    hf = hf.to(device).eval()
    ours = build_lm(LMConfig(dim=args.dim, num_layers=args.layers, num_heads=args.heads, ffn_dim=args.ffn,
                             n_q=args.n_q, card=args.card), load_weights=False)
    ours.load_state_dict(musicgen_to_vmas_state_dict(hf.state_dict())[0], strict=True)
    ours = ours.to(device).eval()
    cond = torch.randn(1, args.cond_len, args.dim, device=device)
    uncond = torch.randn(1, args.cond_len, args.dim, device=device)
    K, steps = args.n_q, args.frames + args.n_q - 1

    def run_ours(frames: int, decode: str = "cached", temperature: float = 1.0):
        gen = torch.Generator(device=device).manual_seed(args.seed)
        return ours.generate(cond, None, uncond, None, num_frames=frames, cfg=args.cfg, top_k=args.top_k,
                             temperature=temperature, generator=gen, decode=decode)

    def run_hf(frames: int, sample: bool = True):
        bos = torch.full((K, 1), args.card, device=device)  # [B*K, 1] start token
        with torch.inference_mode():
            # attention_mask must be [B, len]: the one transformers builds from `bos` has B*K rows for a batch of B
            # (2B with CFG) and silently shifts the logits by ~0.1 (greedy codes then differ from its own forward).
            out = hf.generate(bos, attention_mask=torch.ones(1, 1, dtype=torch.long, device=device),
                              encoder_hidden_states=torch.cat([cond, uncond]), do_sample=sample,
                              top_k=args.top_k if sample else None, guidance_scale=args.cfg,
                              max_length=frames + K, num_return_sequences=1,
                              past_key_values=EncoderDecoderCache(DynamicCache(), DynamicCache()))
        return out.reshape(1, K, -1)  # transformers strips the pattern's special tokens: [B, K, frames]

    # Warm-up, and check that both decoders are correct: greedy CFG codes must agree on a short run.
    check_frames = min(50, args.frames)
    greedy_match = torch.equal(run_ours(check_frames, temperature=0.0), run_hf(check_frames, sample=False))
    log(f"greedy CFG codes, ours == transformers over {check_frames} frames: {greedy_match}")

    # Compile the static step before timing (one graph per shape and setting: the first call at the timed length).
    decoders = [d for d in args.decoders.split(",") if d]
    result: tp.Dict[str, tp.Any] = {"meta": {"load_start": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
                                             "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}}
    if "static-compiled" in decoders:
        t, _ = timed(lambda: run_ours(args.frames, "static-compiled"), sync)
        result["static_compiled_compile_s"] = t
        log(f"static-compiled: first call (compiles) {t:.1f} s")

    # Best of --repeat runs, all decoders alternating, so that a burst of load from other processes on a shared
    # machine hits each alike.
    runs = [(f"ours, {d}", "ours_" + d.replace("-", "_"), lambda d=d: run_ours(args.frames, d)) for d in decoders]
    runs.append(("transformers MusicgenForCausalLM.generate", "hf_musicgen", lambda: run_hf(args.frames)))
    for _, key, _ in runs:
        result[f"{key}_tok_s"] = result[f"{key}_cpu_tok_s"] = 0.0
    codes = {}
    for r in range(args.repeat):
        for name, key, fn in runs:
            t, cpu = timed(lambda key=key, fn=fn: codes.__setitem__(key, fn()), sync)
            result[f"{key}_tok_s"] = max(result[f"{key}_tok_s"], steps / t)
            result[f"{key}_cpu_tok_s"] = max(result[f"{key}_cpu_tok_s"], steps / cpu)
            log(f"[{r}] {name}: {steps / t:.1f} steps/s wall, {steps / cpu:.1f} per CPU second")
    hf_codes = codes["hf_musicgen"]
    hf_ok = tuple(hf_codes.shape) == (1, K, args.frames) and int(hf_codes.min()) >= 0 and int(hf_codes.max()) < args.card
    ref = "ours_" + decoders[0].replace("-", "_")
    for _, key, _ in runs[1:-1]:
        result[f"{key[5:]}_same_codes"] = torch.equal(codes[key], codes[ref])  # e.g. static_same_codes
    if args.skip_recompute:
        result["ours_recompute_tok_s"] = None
    else:
        t, cpu = timed(lambda: codes.__setitem__("recompute", run_ours(args.frames, "recompute")), sync)
        result["ours_recompute_tok_s"] = steps / t
        result["ours_recompute_cpu_tok_s"] = steps / cpu
        log(f"ours, recompute whole prefix: {steps / t:.1f} steps/s wall, {steps / cpu:.1f} per CPU second")
        result["recompute_same_codes"] = torch.equal(codes["recompute"], codes[ref])

    recompute = result["ours_recompute_tok_s"]
    for _, key, _ in runs[:-1]:
        short = key[5:]  # cached, static, static_compiled
        for unit, suffix in (("tok_s", ""), ("cpu_tok_s", "_cpu")):
            result[f"{short}_over_hf{suffix}"] = result[f"{key}_{unit}"] / result[f"hf_musicgen_{unit}"]
            if key != "ours_cached" and "ours_cached_tok_s" in result:
                result[f"{short}_over_cached{suffix}"] = result[f"{key}_{unit}"] / result[f"ours_cached_{unit}"]
    if "ours_cached_tok_s" in result:
        result["cached_over_recompute"] = result["ours_cached_tok_s"] / recompute if recompute else None
        result["cached_over_recompute_cpu"] = (result["ours_cached_cpu_tok_s"] / result["ours_recompute_cpu_tok_s"]
                                               if recompute else None)
    best = max(runs[:-1], key=lambda run: result[f"{run[1]}_tok_s"])[1]
    result["best_decoder"] = best[5:].replace("_", "-")
    result["best_over_hf"] = result[f"{best}_tok_s"] / result["hf_musicgen_tok_s"]
    result["best_over_hf_cpu"] = (max(result[f"{key}_cpu_tok_s"] for _, key, _ in runs[:-1])
                                  / result["hf_musicgen_cpu_tok_s"])
    result["hf_output_ok"] = hf_ok
    result["greedy_matches_hf"] = greedy_match
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["meta"]["load_end"] = os.getloadavg()
    result.update(paper_param_counts())
    result["setup"] = {"dim": args.dim, "layers": args.layers, "heads": args.heads, "ffn": args.ffn, "n_q": K,
                       "card": args.card, "frames": args.frames, "steps": steps, "cond_len": args.cond_len,
                       "top_k": args.top_k, "cfg": args.cfg, "batch": 1, "repeat": args.repeat, "device": str(device),
                       "threads": torch.get_num_threads(), "torch": torch.__version__, "decoders": decoders}
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return result


if __name__ == "__main__":
    main()
