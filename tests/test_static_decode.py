"""The static decode step (issue 31 §3): fixed shapes, sampling inside, the same logits and tokens as the cached loop.

Equality is checked two ways: every step's logits against the cached path's ``decode_step`` (fp32, within 1e-5:
the two differ only in the attention's summation, over the whole masked window instead of the prefix, a few
roundings of ~6e-8 relative per layer), and the token sequences themselves, which must be identical because
both decoders draw the same Exp(1) numbers from the generator in the same order and shapes
(:func:`vmas.models.lm._draw_noise`). ``torch.compile(fullgraph=True)`` must trace the step without a graph break,
and one graph must serve every step (no recompilation per position).

Why equal tokens hold only where the logits' rounding does not reorder them: top-k / top-p noise is matched to the
tokens by rank (``topk`` / ``sort`` order), so two logits closer than the decoders' difference (~1e-6 at d 256,
fp32) may swap ranks and hand the winning noise to the other token; from that step on the sequences differ. Small
test models keep their logits far apart; a long run of a near-uniform random model (the benchmark's) can diverge,
for the compiled step in particular (its fused kernels round differently from the eager ones from step 0). The
sampling distribution is the same to the logits' 1e-5 either way.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

import vmas.models.lm as lm_mod
from vmas.builders import build_codec, build_model
from vmas.config import load_config
from vmas.models.lm import MusicLM
from vmas.sampling import SamplingParams

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DIM, LAYERS, HEADS, FFN, K, CARD = 32, 2, 4, 64, 4, 24
ATOL = 1e-5  # fp32 logits of O(1): the brief's bound; measured differences are ~1e-7

SETTINGS = [dict(top_k=8), dict(top_p=0.9), dict(top_k=0), dict(temperature=0.0), dict(top_k=5, temperature=0.7)]


def _lm() -> MusicLM:
    torch.manual_seed(0)
    return MusicLM(dim=DIM, num_layers=LAYERS, num_heads=HEADS, ffn_dim=FFN, n_q=K, card=CARD).eval()


def _lm_inputs(B: int = 2, S: int = 40):
    g = torch.Generator().manual_seed(1)
    cond, uncond, extra = (torch.randn(B, L, DIM, generator=g) for L in (5, 3, 4))
    mask = torch.ones(B, 5, dtype=torch.bool)
    mask[-1, 2:] = False  # a padded sample
    step = torch.randn(B, S, DIM, generator=g)
    return cond, mask, uncond, extra, step


def _record(monkeypatch, name: str, wrap_compiled: bool = False):
    """Record the logits each step returns: ``MusicLM.decode_step`` / ``MusicLM.static_step`` (eager), or the
    compiled step (by wrapping what ``_compiled_static_step`` hands out)."""
    seen = []
    if wrap_compiled:
        real = lm_mod._compiled_static_step

        def compiled():
            fn = real()
            return lambda *a: seen.append(fn(*a).clone()) or seen[-1]

        monkeypatch.setattr(lm_mod, "_compiled_static_step", compiled)
        return seen
    real_step = getattr(MusicLM, name)

    def step(self, *a, **kw):
        out = real_step(self, *a, **kw)
        seen.append(out.clone())
        return out

    monkeypatch.setattr(MusicLM, name, step)
    return seen


def _generate(model, decode, prompt=None, generator=None, num_frames=9, **kw):
    cond, mask, uncond, extra, step = _lm_inputs()
    gen = torch.Generator().manual_seed(3) if generator is None else generator
    return model.generate(cond, mask, uncond, None, num_frames=num_frames, prompt=prompt, generator=gen,
                          step_cond=step, extra=[(extra, None, None, 0.5)], decode=decode, **kw)


# --------------------------------------------------------------------------------------- logits and tokens
@pytest.mark.parametrize("kw", SETTINGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_static_step_gives_the_cached_logits_and_tokens(monkeypatch, kw):
    """Three-branch CFG (cond, uncond, an extra branch), per-step conditions, a padded condition: every step's
    guided logits within 1e-5 of the cached step's, and the same tokens, for each sampling rule."""
    model = _lm()
    with monkeypatch.context() as m:
        cached_logits = _record(m, "decode_step")
        cached = _generate(model, "cached", **kw)
    with monkeypatch.context() as m:
        static_logits = _record(m, "static_step")
        static = _generate(model, "static", **kw)
    assert len(static_logits) == len(cached_logits) == 9 + K - 1
    err = max((a - b).abs().max().item() for a, b in zip(static_logits, cached_logits))
    assert err < ATOL, err
    assert torch.equal(static, cached)
    assert torch.equal(_generate(model, "recompute", **kw), cached)  # and the slow reference agrees too


def test_static_continues_a_prompt_like_the_one_go_run():
    """A prompt (what --cuts / --hits windows and long videos continue) is prefilled in one chunk, then the static
    step takes over at its end: continuing the first 4 frames of a seeded run reproduces that run."""
    model = _lm()
    full = _generate(model, "cached", top_p=0.9)
    for decode in ("static", "cached"):
        cont = _generate(model, decode, prompt=full[..., :4], top_p=0.9)
        assert torch.equal(cont, full), decode


def test_static_with_per_row_generators_and_no_guidance():
    """One generator per batch row (vmas generate --batch-size) and cfg=1 (one branch, no guidance)."""
    model = _lm()
    cond, mask, _, _, step = _lm_inputs()
    out = [model.generate(cond, mask, num_frames=7, top_k=6, step_cond=step, decode=d,
                          generator=[torch.Generator().manual_seed(s) for s in (4, 5)]) for d in ("cached", "static")]
    assert torch.equal(out[0], out[1])


def test_noise_drawn_at_once_is_the_per_step_noise():
    """A CPU generator driving a model on another device draws every step's noise at once (one host->device copy
    instead of one per step): the same numbers, in the same order, as drawing step by step; per-row generators
    too."""
    for make in (lambda: torch.Generator().manual_seed(7), lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]):
        for kw in SETTINGS:
            kw = {**dict(top_k=250, top_p=0.0, temperature=1.0), **kw}
            lazy, once = (list(lm_mod._step_noise((2, K, CARD), 5, kw["top_k"], kw["top_p"], kw["temperature"],
                                                  torch.device("cpu"), make(), at_once=a)) for a in (False, True))
            assert len(lazy) == len(once) == 5
            for a, b in zip(lazy, once):
                assert (a is None and b is None) or torch.equal(a, b)


# ------------------------------------------------------------------------------------------ the whole model
@pytest.fixture(scope="module")
def vmas_model():
    """The debug model with every per-step path on: tags, per-step video, beat grid, motion condition."""
    cfg = load_config(CONFIGS / "debug.yaml", ["model.tags.enabled=true", "model.tags.text_dim=8",
                                               "model.lm.video_fuse=cross+sum", "model.lm.beat_condition=true",
                                               "model.lm.motion_condition=true"])
    torch.manual_seed(0)
    return cfg, build_model(cfg, codec=build_codec(cfg.model.codec)).eval()


@pytest.mark.parametrize("guide,neg", [("all", False), ("tags", False), ("both", False), ("all", True)])
def test_static_tokens_equal_cached_in_every_guide_mode(vmas_model, guide, neg):
    """VMAS.generate with each guide mode (and negative tags), a beat grid, the motion condition from the frames and
    a prompt continued: ``decode="static"`` gives the cached decoder's tokens (through SamplingParams.decode)."""
    cfg, model = vmas_model
    g = torch.Generator().manual_seed(1)
    d, B = cfg.data, 2
    inputs = dict(
        frames=torch.randint(0, 256, (B, d.num_frames, d.image_size, d.image_size, 3), generator=g, dtype=torch.uint8),
        tag_emb=torch.randn(B, 2, 8, generator=g), tag_mask=torch.tensor([[True, True], [True, False]]),
        beat=torch.tensor([[12.5, 3.0], [float("nan"), float("nan")]]),
        prompt=torch.randint(0, cfg.model.lm.card, (B, cfg.model.lm.n_q, 3), generator=g))
    if neg:
        inputs["neg_emb"] = torch.randn(B, 1, 8, generator=g)
    out = {}
    for decode in ("cached", "static"):
        sampling = SamplingParams(cfg=3.0, top_k=8, guide=guide, decode=decode)
        out[decode] = model.generate(num_frames=12, sampling=sampling, generator=torch.Generator().manual_seed(0),
                                     **inputs)
    assert torch.equal(out["static"], out["cached"])
    assert torch.equal(out["static"][..., :3], inputs["prompt"])


# ----------------------------------------------------------------------------------------------- compilation
def test_static_step_compiles_as_one_graph_for_every_step():
    """``torch.compile(fullgraph=True)`` traces the step (a graph break would raise), and the graph made at the
    first step serves all later ones: the backend is called once for 12 steps (a Python value depending on the step
    would recompile). The eager backend keeps this fast; the inductor build is checked in the slow test below."""
    model = _lm()
    cond, mask, uncond, extra, step = _lm_inputs()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(MusicLM.static_step, fullgraph=True, dynamic=False, backend=backend)
    S = 12
    seq = torch.full((2, K, S), CARD)
    free = torch.ones(K, S, dtype=torch.bool)
    logits = {}
    for name, fn in (("eager", MusicLM.static_step), ("compiled", compiled)):
        conds, masks = MusicLM._stack_conditions([(cond, mask), (uncond, None)])
        with torch.no_grad(), model.streaming(conds, masks, S, torch.cat([step, torch.zeros_like(step)])) as state:
            st = model.static_state(state, seq.clone(), free, n_branches=2, cfg=3.0, top_k=5)
            noise = torch.empty(2, K, 5).exponential_(generator=torch.Generator().manual_seed(0))
            logits[name] = torch.stack([fn(model, st, noise) for _ in range(S)])
            assert int(st.t) == S
    assert len(graphs) == 1, f"{len(graphs)} graphs for {S} steps"
    # traced, the step's attention is written as reductions (inductor fuses them) instead of SDPA: rounding only
    torch.testing.assert_close(logits["compiled"], logits["eager"], rtol=0, atol=ATOL)


@pytest.mark.slow
def test_inductor_compiled_step_gives_the_cached_tokens(monkeypatch):
    """``decode="static-compiled"`` (inductor's C++ kernels on the CPU; ~30-60 s of compiling on 2 cores): logits
    within 1e-5 of the cached step's at every step and the same tokens."""
    model = _lm()
    with monkeypatch.context() as m:
        cached_logits = _record(m, "decode_step")
        cached = _generate(model, "cached", top_k=8)
    with monkeypatch.context() as m:
        compiled_logits = _record(m, "", wrap_compiled=True)
        compiled = _generate(model, "static-compiled", top_k=8)
    assert len(compiled_logits) == len(cached_logits)
    err = max((a - b).abs().max().item() for a, b in zip(compiled_logits, cached_logits))
    assert err < ATOL, err
    assert torch.equal(compiled, cached)


# ---------------------------------------------------------------------------------------------------- errors
def test_decoder_choice_is_checked():
    model = _lm()
    with pytest.raises(ValueError, match="static-graph.*CUDA graph.*use 'static-compiled'"):
        _generate(model, "static-graph")
    with pytest.raises(ValueError, match="decode must be one of"):
        _generate(model, "fast")
    with pytest.raises(ValueError, match="decode must be one of"):
        SamplingParams(decode="fast").check()


def test_cuda_graph_runner_keeps_the_decode_state(monkeypatch):
    """``decode="static-graph"``'s runner without a GPU: the CUDA calls are faked, capture runs the step eagerly (a
    stricter case than a real capture, which only records) and replay re-runs the step on the runner's buffers, which
    is what replaying the recorded kernels does. Its warm-up and capture must leave the state as it found it, and
    the per-step noise must reach the graph's buffer: the tokens are then the cached loop's."""
    class Stream:
        def wait_stream(self, other):
            pass

    class Graph:
        replay = None  # set below, once the runner exists

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", lambda g: contextlib.nullcontext())
    runners = []

    class Runner(lm_mod._CudaGraphStep):
        def __init__(self, step, model, st, noise_shape):
            super().__init__(step, model, st, noise_shape)
            self.graph.replay = lambda: self.logits.copy_(step(model, st, self.noise))
            runners.append(self)

    monkeypatch.setattr(lm_mod, "_CudaGraphStep", Runner)
    model = _lm()
    cond, mask, uncond, _, step = _lm_inputs()
    T, top_k = 9, 8
    want = model.generate(cond, mask, uncond, None, num_frames=T, top_k=top_k, step_cond=step,
                          generator=torch.Generator().manual_seed(3))
    B, S = cond.shape[0], T + K - 1
    seq, valid = model.pattern.build(torch.zeros(B, K, T, dtype=torch.long), CARD)
    conds, masks = MusicLM._stack_conditions([(cond, mask), (uncond, None)])
    with torch.no_grad(), model.streaming(conds, masks, S, torch.cat([step, torch.zeros_like(step)])) as state:
        noise = lm_mod._step_noise((B, K, CARD), S, top_k, 0.0, 1.0, torch.device("cpu"),
                                   torch.Generator().manual_seed(3))
        got = model._decode_static(state, seq, valid, range(S), "static-graph", 2, 3.0, (), top_k, 0.0, 1.0, noise)
    assert len(runners) == 1
    assert torch.equal(model.pattern.revert(got), want)


def test_the_request_picks_the_decoder(tmp_path):
    """``generate_for_video(..., decode="static")`` (``vmas generate --decode static``) reaches the LM through the
    request and the pipeline, over continuation windows (a 4 s video, 2.5 s windows): the same audio as the default
    cached decoder, bit for bit."""
    from datasets.synthmv import write_mp4
    from vmas.generate import generate_for_video
    from vmas.hub import load_pretrained

    torch.manual_seed(0)
    pipe = load_pretrained(None, config=load_config(CONFIGS / "debug.yaml"), random_note="debug")
    frames = (torch.rand(100, 32, 64, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    src = tmp_path / "s.mp4"
    write_mp4(src, frames, torch.zeros(4 * 32000).numpy(), fps=25)
    seen = []
    real = MusicLM.static_step

    def counted(*a, **kw):
        seen.append(1)
        return real(*a, **kw)

    cached = generate_for_video(src, pipe, tmp_path / "a", top_k=16, seed=7)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(MusicLM, "static_step", counted)
        static = generate_for_video(src, pipe, tmp_path / "b", top_k=16, seed=7, decode="static")
    assert seen  # the static step did run
    assert static.wav.read_bytes() == cached.wav.read_bytes()
