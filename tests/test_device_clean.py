"""Device- and dtype-clean, proved on the CPU (issue 31 §2).

A GPU run fails on the first tensor made on the wrong device (``torch.arange(n)`` without ``device=`` lands on the
CPU and meets CUDA tensors) and on the first dtype that autocast does not expect; neither shows on a CPU-only test
suite where every tensor is on the CPU. Two techniques make them show here:

1. ``meta``: model and inputs on the ``meta`` device, default device left ``cpu``. A stray factory call lands on
   the CPU and mixing it with meta tensors raises ("Tensor on device meta is not on the expected device cpu").
   Exact, but meta tensors hold no numbers: only paths without data-dependent Python control flow (the encoder,
   the codec, the LM's teacher-forced forward and its losses) can run this way.
2. :class:`tests.device_guard.DeviceGuard` for the rest (the training step with its dropout draws and optimiser
   step, sampling, motion, metric embedders): real CPU numbers, with each tensor tagged as being on a second, fake
   device or on the host, and every operation checked as CUDA checks it. Its docstring gives the rules; in short,
   model parameters, inputs and everything computed from them are on the device, and inside the guard their
   ``.device`` answers ``cpu:0`` (a second CPU device that compares unequal to ``cpu``), so ``device=x.device`` and
   ``.to(param.device)`` follow them; factory calls without ``device=`` (or with ``"cpu"``), ``torch.from_numpy``
   and ``.cpu()`` results are on the host; an operation that mixes the two (beyond 0-dim host scalars, which CUDA
   accepts) is a violation naming the source line. It also lists device->host syncs (``.item()``, ``bool()``,
   ``.cpu()``) and host->device copies per call site, which the loop tests count per step.

Both are shown to catch a deliberately stray ``torch.arange(n)`` in a tiny module (the first tests below).

bf16 (``torch.autocast('cpu', dtype=torch.bfloat16)``, what a GPU run does) is compared with fp32 within bounds
derived from bf16's precision (see :func:`bf16_bound`).
"""
from __future__ import annotations

import collections
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from tests.device_guard import DeviceGuard, StrayDevice
from vmas.builders import build_codec, build_model, build_objective
from vmas.config import load_config
from vmas.solvers.optim import build_optimizer, param_groups
from vmas.solvers.step import TrainStep

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
HERE = str(Path(__file__).resolve())

# every optional path of the model on: tags, per-step video, beat grid, motion, onset oracle, video swaps, input
# noise, activation checkpointing
FULL = ["model.tags.enabled=true", "model.tags.text_dim=8", "model.lm.video_fuse=cross+sum",
        "model.lm.beat_condition=true", "model.lm.motion_condition=true", "model.lm.onset_oracle=true",
        "model.lm.video_swap_prob=0.5", "model.lm.input_noise=0.1", "model.lm.grad_checkpointing=true",
        "model.encoder.grad_checkpointing=true", "loss.motion_flow=farneback"]


# ------------------------------------------------------------------------------------------- the checks work
class _Stray(torch.nn.Module):
    """A tiny module with the classic bug: positions made without ``device=``."""

    def __init__(self, stray: bool):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.stray = stray

    def forward(self, x):  # x [B, 4]
        n = x.shape[-1]
        pos = torch.arange(n) if self.stray else torch.arange(n, device=x.device)  # the line under test
        return self.lin(x + pos)


def test_meta_catches_a_stray_arange():
    x = torch.randn(2, 4, device="meta")
    assert _Stray(stray=False).to("meta")(x).shape == (2, 4)
    with pytest.raises(RuntimeError, match="meta"):
        _Stray(stray=True).to("meta")(x)


def test_guard_catches_a_stray_arange_and_names_the_line():
    x = torch.randn(2, 4)
    clean, stray = _Stray(stray=False), _Stray(stray=True)
    guard = DeviceGuard(roots=[HERE])
    guard.place(clean, stray, x)
    with guard:
        out = clean(x)
        assert guard.is_dev(out) and not guard.violations
        with pytest.raises(StrayDevice, match=r"mixed devices in aten::add.*test_device_clean.py:\d+ in forward"):
            stray(x)
    # the same code, all on the host (nothing placed), is fine: the guard flags mixing, not host code
    with DeviceGuard(roots=[HERE]) as quiet:
        _Stray(stray=True)(torch.randn(2, 4))
    assert not quiet.violations


def test_guard_counts_syncs_and_transfers():
    x = torch.randn(3)
    guard = DeviceGuard(roots=[HERE])
    guard.place(x)
    with guard:
        bool(x.sum() > 0)
        x.tolist()
        host = x.cpu()
        x + torch.tensor(1.0)  # a 0-dim host scalar is fine (CUDA accepts CPU scalars)
        x.add_(torch.ones(3).to(x.device))  # an explicit move is fine, and counted as a transfer
        with pytest.raises(StrayDevice, match="numpy"):
            x.numpy()
    assert not guard.is_dev(host) and guard.is_dev(x)
    kinds = [e.kind for e in guard.syncs]
    assert kinds == ["sync: .item()/bool()/int()/float()", "sync: .tolist()", "sync: .cpu()"]
    assert [e.kind for e in guard.transfers] == ["h2d: .to(device)"]


# ------------------------------------------------------------------------------------------- training step
def _cfg(*extra: str):
    return load_config(CONFIGS / "debug.yaml", [*FULL, *extra])


def _train_inputs(cfg, B: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d, m = cfg.data, cfg.model
    T, H, Ta, K = d.num_frames, d.image_size, round(d.clip_seconds * d.frame_rate), m.lm.n_q
    return {
        "frames": torch.randint(0, 256, (B, T, H, H, 3), generator=g, dtype=torch.uint8),
        "codes": torch.randint(0, m.lm.card, (B, K, Ta), generator=g),
        "beat_weights": torch.where(torch.rand(B, Ta, generator=g) < 0.2, 1.0, 0.5),
        "tag_emb": torch.randn(B, 3, m.tags.text_dim, generator=g),
        "tag_mask": torch.tensor([[True, True, False], [True, False, False], [False, False, False]][:B]),
        "beat": torch.tensor([[12.5, 3.0], [float("nan"), float("nan")], [20.0, 7.5]][:B]),
        "onsets": (torch.rand(B, Ta, generator=g) < 0.1).float(),
        "motion": torch.rand(B, T - 1, generator=g),
        "no_video": torch.tensor([False, False, True][:B]),
    }


def _train_step(extra=()):
    cfg = _cfg(*extra)
    torch.manual_seed(0)
    codec = build_codec(cfg.model.codec)
    model = build_model(cfg, codec=codec)
    step = TrainStep(model, build_objective(cfg)).train()
    opt = build_optimizer(param_groups(step.model, cfg.optim), cfg.optim)
    return cfg, step, opt


def test_training_step_is_device_clean():
    """Forward (encoder, fuser with every per-step path, LM, dropout / swap / noise draws), both losses, backward
    through activation checkpointing, the optimiser step and a validation pass: no stray host tensor."""
    cfg, step, opt = _train_step()
    inputs = _train_inputs(cfg)
    guard = DeviceGuard()
    guard.place(step, inputs)
    with guard:
        for _ in range(2):
            total, stats = step(**inputs)
            total.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        ce = step(**inputs, validate=["ce", "ce_null", "ce_wrong_video", "ce_no_beat"])
    assert not guard.violations
    assert guard.is_dev([total, stats, ce]) and guard.is_dev(step)
    assert torch.isfinite(stats).all() and torch.isfinite(ce).all()
    # the only device -> host sync of a step: the contrastive loss takes the clips that kept their video (a
    # data-dependent batch size, which its all_gather of unequal shards needs); none in the fuser or the LM
    assert guard.count(guard.syncs) == {"sync: nonzero at vmas/losses/objective.py in __call__": 2}  # 1 a step
    assert not guard.transfers


# ------------------------------------------------------------------------------------------------ generation
@pytest.fixture(scope="module")
def gen_model():
    cfg = _cfg()
    torch.manual_seed(0)
    codec = build_codec(cfg.model.codec)
    return cfg, build_model(cfg, codec=codec).eval(), codec


def _gen_inputs(cfg, B: int = 2):
    g = torch.Generator().manual_seed(1)
    d = cfg.data
    return {
        "frames": torch.randint(0, 256, (B, d.num_frames, d.image_size, d.image_size, 3), generator=g,
                                dtype=torch.uint8),
        "tag_emb": torch.randn(B, 2, cfg.model.tags.text_dim, generator=g),
        "tag_mask": torch.tensor([[True, True], [True, False]][:B]),
        "neg_emb": torch.randn(B, 1, cfg.model.tags.text_dim, generator=g),
        "beat": torch.tensor([[12.5, 3.0], [float("nan"), float("nan")]][:B]),
    }


@pytest.mark.parametrize("guide,neg,hits", [("all", False, False), ("tags", False, False), ("both", False, False),
                                            ("all", True, False), ("both", False, True)])
def test_generation_is_device_clean(gen_model, guide, neg, hits):
    """VMAS.generate with every guide mode (and negative tags), the beat grid (one per clip, or per frame of the
    whole video as --hits bends it, read from a later window's start), the motion condition computed from the
    frames, and a prompt continued (what --cuts / --hits windows do): no stray host tensor; the per-step loop has
    no device->host sync and no host->device copy."""
    cfg, model, _ = gen_model
    inputs = _gen_inputs(cfg)
    if not neg:
        inputs.pop("neg_emb")
    extra = {}
    if hits:  # per-frame grids [B, N, 2] of a 60-frame video, this window starting at frame 20
        inputs["beat"] = torch.stack([torch.full((60, 2), 12.5), torch.full((60, 2), float("nan"))])
        inputs["beat"][0, 30:, 0] = 10.0
        extra["beat_start"] = 20
    num_frames, T0 = 12, 4
    prompt = torch.randint(0, cfg.model.lm.card, (2, cfg.model.lm.n_q, T0))
    guard = DeviceGuard()
    guard.place(model, inputs, prompt)
    gen = torch.Generator().manual_seed(0)  # a CPU generator drives any device (vmas.models.lm._exponential)
    with guard:
        codes = model.generate(num_frames=num_frames, cfg=3.0, guide=guide, top_k=8, generator=gen, prompt=prompt,
                               **inputs, **extra)
    assert guard.is_dev(codes) and codes.shape == (2, cfg.model.lm.n_q, num_frames)
    assert torch.equal(codes[..., :T0], prompt)
    # the motion condition: flow runs on the host frames (once per call); the sampler's per-step noise copy
    # (vmas/models/lm.py) is left to test_decode_loop_makes_no_per_step_copy
    assert guard.count(guard.syncs) == {"sync: .cpu() at vmas/models/vmas.py in video_motion": 1}
    transfers = _outside_sampler(guard.count(guard.transfers))
    assert transfers == {"h2d: .to(device) at vmas/models/vmas.py in video_motion": 1}


# ---------------------------------------------------------------------------------------------- on ``meta``
def test_encoder_on_meta():
    """Hiera forward (tokens and per-stage intermediates) and backward with model and input on meta."""
    cfg = _cfg()
    enc = build_model(cfg).encoder.to("meta").train()
    x = torch.randn(2, 3, cfg.data.num_frames, cfg.data.image_size, cfg.data.image_size, device="meta")
    tokens, inter = enc(x, return_intermediates=True)
    assert tokens.is_meta and tokens.shape[0] == 2 and tokens.shape[-1] == enc.out_dim
    assert all(t.is_meta for t in inter)
    tokens.sum().backward()
    assert all(p.grad is not None and p.grad.is_meta for p in enc.parameters() if p.requires_grad)


def test_codec_on_meta():
    """Codec encode / decode / codebooks (and the training forward) with model and input on meta."""
    cfg = _cfg()
    codec = build_codec(cfg.model.codec).to("meta")
    wav = torch.randn(2, 1, 4 * 640, device="meta")
    codes = codec.encode(wav)
    assert codes.is_meta and codes.dtype == torch.long and codes.shape == (2, cfg.model.codec.n_q, 4)
    assert codec.decode(codes).is_meta and codec.codebooks().is_meta


def test_model_forward_and_losses_on_meta():
    """VMAS training forward (dropout / swap / noise draws, every per-step path), the beat-weighted CE, the
    contrastive loss over all clips and backward, all on meta. (The objective's choice of the clips that kept
    their video is a boolean mask, i.e. data-dependent: that part is checked by the guard test above.)"""
    from vmas.losses import beat_weighted_ce

    cfg = _cfg()
    model = build_model(cfg, codec=build_codec(cfg.model.codec)).to("meta").train()
    inputs = {k: v.to("meta") for k, v in _train_inputs(cfg).items()}
    out = model(inputs["frames"], inputs["codes"], inputs["tag_emb"], inputs["tag_mask"], beat=inputs["beat"],
                onsets=inputs["onsets"], motion=inputs["motion"], no_video=inputs["no_video"])
    ar, per_cb = beat_weighted_ce(out.logits, out.seq, out.valid, inputs["beat_weights"])
    lc = model.contrastive(out.video_tokens, out.logits, out.valid, model.codebooks)
    (ar + lc).backward()
    assert ar.is_meta and lc.is_meta and per_cb.is_meta
    assert all(p.grad is None or p.grad.is_meta for p in model.parameters())


# ------------------------------------------------------------------------------------------ motion, metrics
def test_raft_motion_is_device_clean():
    """RAFT motion with the model on the device and frames decoded on the host (as the shards writer and
    ``VMAS.video_motion`` call it): frames move once per chunk, the curve comes back once per call."""
    from vmas.alignment import load_raft, video_motion

    raft = load_raft("raft_small", "random")
    frames = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8)
    want = video_motion(frames, model=raft, batch_size=2, num_flow_updates=2)
    guard = DeviceGuard()
    guard.place(raft)
    with guard:
        got = video_motion(frames, model=raft, batch_size=2, num_flow_updates=2)  # 3 pairs: 2 chunks
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not guard.is_dev(got) and got.shape == (3,)
    assert guard.count(guard.syncs) == {"sync: .cpu() at vmas/alignment.py in _raft_motion": 1}
    move = _line_of("vmas/alignment.py", "chunk = x[start:stop + 1].to(device)")
    assert guard.count(guard.transfers, lines=True)[f"h2d: .to(device) at {move} in _raft_motion"] == 2  # per chunk


def _line_of(path: str, text: str) -> str:
    """``path:line`` of the one line of a repository file that contains ``text``."""
    lines = (Path(__file__).resolve().parent.parent / path).read_text().splitlines()
    hits = [i + 1 for i, line in enumerate(lines) if text in line]
    assert len(hits) == 1, (path, text, hits)
    return f"{path}:{hits[0]}"


def _sine(sr: int, seconds: float) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _embed_on_device(embedder, model, wav, sr):
    """embed() with ``model`` on the fake device, against the same call off it: equal numbers, host output."""
    want = embedder.embed(wav, sr)
    guard = DeviceGuard()
    guard.place(model)
    with guard:
        got = embedder.embed(wav, sr)
    np.testing.assert_array_equal(got, want)
    return guard


def test_vggish_and_encodec_embedders_are_device_clean():
    from vmas.metrics.embeddings import EncodecEmbedder, VGGish, VGGishEmbedder

    vgg = VGGish().eval()
    _embed_on_device(VGGishEmbedder(vgg), vgg, _sine(16000, 2.0), 16000)
    codec = build_codec(_cfg().model.codec)
    _embed_on_device(EncodecEmbedder(codec, "debug"), codec, _sine(32000, 1.0), 32000)


def test_clap_embedder_and_score_are_device_clean(tiny_clap):
    from vmas.metrics import ClapScore

    score = ClapScore(str(tiny_clap))
    wav = _sine(48000, 1.0)
    _embed_on_device(score.audio, score.model, wav, 48000)
    want = score.update([wav], 48000, ["piano"])
    guard = DeviceGuard()
    guard.place(score.model)
    with guard:
        got = score.update([wav], 48000, ["piano"])
    torch.testing.assert_close(got, want)


def test_kl_classifier_inputs_reach_the_model_device():
    """The PaSST classifier's path (logits of each [1, N] window, probabilities back as NumPy) with its model on
    the device; a one-layer stand-in replaces hear21passt's network (not installed here)."""
    from vmas.metrics.kl import PasstClassifier, chunk_distributions

    class _Net(torch.nn.Module):  # [1, N] -> [1, 527]
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(1, PasstClassifier.num_labels)

        def forward(self, x):
            return self.lin(x.mean(1, keepdim=True))

    clf = PasstClassifier.__new__(PasstClassifier)  # without hear21passt's download
    clf.model = _Net()
    embedder = type("ByChunks", (), {"embed": lambda self, w, sr: chunk_distributions(clf, w, sr)})()
    _embed_on_device(embedder, clf.model, _sine(32000, 2.5), 32000)


SAMPLER_SITES = ("vmas/models/lm.py in _exponential", "vmas/models/lm.py in _step_noise")
"""Where the sampler moves its Exp(1) noise from the generator's device to the model's (a CPU generator keeps a
seed's stream the same on every device): once per call or once per step, see
test_decode_loop_makes_no_per_step_copy. Kept apart: vmas/models/lm.py belongs to the decode rewrite."""


def _outside_sampler(counts):
    return collections.Counter({k: v for k, v in counts.items() if not k.endswith(SAMPLER_SITES)})


def _decode(lm, decode, num_frames, guard, g_seed=2):
    g = torch.Generator().manual_seed(g_seed)
    B, K, L, d = 2, lm.n_q, 5, lm.dim
    cond, uncond, extra = (torch.randn(B, L, d, generator=g) for _ in range(3))
    mask = torch.tensor([[True] * L, [True, True, False, False, False]])
    step_cond = torch.randn(B, 40, d, generator=g)
    prompt = torch.randint(0, lm.card, (B, K, 3), generator=g)
    guard.place(lm, cond, uncond, extra, mask, step_cond, prompt)
    guard.reset_events()
    with guard:
        codes = lm.generate(cond, mask, uncond, None, num_frames=num_frames, cfg=3.0, top_k=8, prompt=prompt,
                            generator=torch.Generator().manual_seed(0), step_cond=step_cond,
                            extra=[(extra, mask, None, 0.5)], decode=decode)
    assert guard.is_dev(codes) and codes.shape == (B, K, num_frames)
    return guard.count(guard.syncs), guard.count(guard.transfers)


@pytest.mark.parametrize("decode", ["cached", "static"])
def test_decode_loop_makes_no_per_step_copy(gen_model, decode):
    lm = gen_model[1].lm
    guard = DeviceGuard()
    short, long = _decode(lm, decode, 8, guard), _decode(lm, decode, 16, guard)
    assert short[1] == long[1]  # host -> device copies do not grow with the number of steps


@pytest.mark.parametrize("decode", ["cached", "recompute", "static"])
def test_lm_decoders_are_device_clean(gen_model, decode):
    """Every eager decoder of MusicLM.generate with CFG, an extra guidance branch, per-step conditions and a prompt:
    no stray host tensor, and no sync inside the step loop; no host -> device copy either, but the sampler's noise
    (:data:`SAMPLER_SITES`; test_decode_loop_makes_no_per_step_copy)."""
    lm = gen_model[1].lm
    guard = DeviceGuard()
    for num_frames in (8, 16):
        syncs, transfers = _decode(lm, decode, num_frames, guard)
        assert not syncs and not _outside_sampler(transfers), (syncs, transfers)


# ------------------------------------------------------------------------------------------------------ bf16
U_BF16 = 2.0 ** -8
"""bf16 unit roundoff: 8 significand bits (7 stored), round to nearest -> relative error <= 2^-8 per rounding."""
_NO_ROUNDING = {"aten::view", "aten::_unsafe_view", "aten::t", "aten::permute", "aten::transpose", "aten::expand",
                "aten::select", "aten::slice", "aten::unbind", "aten::unsqueeze", "aten::squeeze", "aten::detach",
                "aten::alias", "aten::clone", "aten::copy_", "aten::zeros_like", "aten::index_select", "aten::index",
                "aten::cat", "aten::stack", "aten::split", "aten::chunk", "aten::_to_copy_from_bf16"}


class _Roundings(TorchDispatchMode):
    """Counts the bf16 roundings of a computation: every op that writes a bf16 result by arithmetic (casts to bf16
    included, views / copies / gathers excluded, they move values without rounding them)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._schema.name
        if name == "aten::_to_copy" and isinstance(args[0], torch.Tensor) and args[0].dtype == torch.bfloat16:
            name = "aten::_to_copy_from_bf16"  # bf16 -> bf16 / fp32: exact
        outs = out if isinstance(out, (tuple, list)) else [out]
        if name not in _NO_ROUNDING and any(isinstance(o, torch.Tensor) and o.dtype == torch.bfloat16 for o in outs):
            self.count += 1
        return out


def bf16_bound(roundings: int, sigmas: float = 4.0) -> float:
    """Relative RMS error bound of a result computed through ``roundings`` bf16 roundings (vs the same in fp32).

    Derivation: each rounding multiplies a value by ``(1 + d)`` with ``|d| <= u = 2^-8``; CPU autocast accumulates
    matmuls in fp32, so only operands and results are rounded (each counted by :class:`_Roundings`). To first order
    the relative errors of a chain add; modelled as independent, zero-mean and uniform on [-u, u] (variance u^2/3)
    -- the probabilistic rounding-error analysis of Higham & Mary (SIAM J. Sci. Comput. 2019) -- their sum over
    R roundings has standard deviation ``u * sqrt(R / 3)``. Counting every rounding of the whole computation as if
    all were in series on the path of each output (pre-norm residual networks add every branch's error into the
    stream) over-counts, and ``sigmas`` = 4 standard deviations is the margin. The deterministic worst case,
    ``R * u``, is far looser and would accept almost anything.
    """
    return sigmas * U_BF16 * (roundings / 3) ** 0.5


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).pow(2).mean().sqrt() / b.float().pow(2).mean().sqrt())


def _check_losses(names, s16, s32, z16, z32, rel):
    """Cross-entropies against the logits' own difference, exactly: |CE(z + d) - CE(z)| <= 2 max|d| (mean value
    theorem; the gradient softmax - onehot has l1 norm <= 2), and a weighted mean of positions moves no more than
    its largest position. So the CE may differ by no more than twice the largest logit difference (plus fp32
    noise): a loss computed in bf16 (a 2048-way log-softmax loses digits) would not pass. The contrastive term
    and the total also depend on the video side: they get the bound carried through the CE from the logits'
    scale, 2 max|z| x the relative bound."""
    dz = float((z16.float() - z32.float()).abs().max())
    for name in ("ar", *[n for n in names if n.startswith("ce_q")]):
        i = names.index(name)
        assert abs(float(s16[i] - s32[i])) <= 2 * dz + 1e-5, (name, float(s16[i]), float(s32[i]), dz)
    loose = 2 * float(z32.abs().max()) * rel
    for name in ("loss", "contrastive"):
        i = names.index(name)
        assert abs(float(s16[i] - s32[i])) <= loose, (name, float(s16[i]), float(s32[i]), loose)


def test_training_step_bf16_autocast_matches_fp32():
    """The training step under ``torch.autocast('cpu', bfloat16)`` (the torch engine's bf16; on a GPU the same
    autocast runs on CUDA) against fp32, same random draws: logits within the bf16 bound; each loss within the
    bound carried through the cross-entropy (|dCE| <= 2 max|dz| per position: its gradient in the logits,
    softmax - onehot, has l1 norm <= 2); backward and the optimiser step stay finite and in fp32 (master
    weights)."""
    cfg, step, opt = _train_step(["model.lm.cond_dropout=0.3", "model.lm.video_swap_prob=0"])
    inputs = _train_inputs(cfg)
    inputs["no_video"] = torch.zeros(3, dtype=torch.bool)  # keep 2+ clips with a video: the contrastive term runs
    model = step.model
    captured = {}
    hook = model.lm.register_forward_hook(lambda m, a, out: captured.__setitem__("logits", out.detach()))
    results = {}
    for mode in ("fp32", "bf16"):
        torch.manual_seed(0)
        rounding = _Roundings()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"), rounding:
            total, stats = step(**inputs)
        results[mode] = (stats, captured["logits"], rounding.count)
        if mode == "bf16":
            total.backward()
            opt.step()
    hook.remove()
    (s32, z32, _), (s16, z16, R) = results["fp32"], results["bf16"]
    assert z16.dtype == torch.bfloat16 and R > 50  # the heads ran in bf16, and the count saw the network
    rel = bf16_bound(R)
    assert _rel_rms(z16, z32) <= rel, (_rel_rms(z16, z32), rel, R)
    _check_losses(step.stat_names(), s16, s32, z16, z32, rel)
    assert float(s32[step.stat_names().index("contrastive")]) > 0  # the contrastive term was compared, not skipped
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in step.parameters())


def test_training_step_in_bf16_weights_like_deepspeed():
    """DeepSpeed's ``bf16.enabled`` casts the module itself to bf16 (no autocast): forward, losses, backward and an
    optimiser step run with bf16 weights; logits and losses agree with fp32 within the same bounds."""
    import copy

    cfg, step, _ = _train_step(["model.lm.video_swap_prob=0"])
    inputs = _train_inputs(cfg)
    half = copy.deepcopy(step).bfloat16()
    captured = []
    hooks = [s.model.lm.register_forward_hook(lambda m, a, out: captured.append(out.detach())) for s in (step, half)]
    torch.manual_seed(0)
    _, s32 = step(**inputs)
    torch.manual_seed(0)
    rounding = _Roundings()
    with rounding:
        total, s16 = half(**inputs)
    for h in hooks:
        h.remove()
    total.backward()
    torch.optim.AdamW(half.parameters(), lr=1e-3).step()
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in half.parameters())
    z32, z16 = captured
    rel = bf16_bound(rounding.count)
    assert z16.dtype == torch.bfloat16 and _rel_rms(z16, z32) <= rel, (_rel_rms(z16, z32), rel)
    _check_losses(step.stat_names(), s16, s32, z16, z32, rel)


def _teacher_forced_decode(lm, cond, mask, step_cond, seq, cfg):
    """Guided cached decoding fed the given pattern columns: logits of every step [S, B, K, card]."""
    B, K, S = seq.shape
    conds, masks = lm._stack_conditions([(cond, mask), (torch.zeros_like(cond), None)])
    steps = torch.cat([step_cond, torch.zeros_like(step_cond)])
    out = []
    with torch.no_grad(), lm.streaming(conds, masks, S, steps) as state:
        for s in range(S):
            col = seq[:, :, s - 1] if s > 0 else seq.new_full((B, K), lm.special_token)
            out.append(lm.decode_step(col.repeat(2, 1), state, cfg).float())
    return torch.stack(out)


def test_generation_bf16_autocast(gen_model):
    """Generation under ``torch.autocast('cpu', bfloat16)``: every guide mode runs device-clean and gives codes in
    range; the guided per-step logits of the cached decoder (teacher-forced on the same columns, so both see the
    same inputs) are within the bf16 bound of fp32."""
    cfg, model, _ = gen_model
    inputs = _gen_inputs(cfg)
    for guide in ("all", "tags", "both"):
        guard = DeviceGuard()
        guard.place(model, inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16), guard:
            codes = model.generate(num_frames=8, cfg=3.0, guide=guide, top_k=8,
                                   generator=torch.Generator().manual_seed(0), **inputs)
        assert guard.is_dev(codes) and codes.dtype == torch.long
        assert 0 <= int(codes.min()) and int(codes.max()) < cfg.model.lm.card
    lm = model.lm
    g = torch.Generator().manual_seed(3)
    B, K, S = 2, lm.n_q, 12
    cond, step_cond = torch.randn(B, 5, lm.dim, generator=g), torch.randn(B, S, lm.dim, generator=g)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    seq = torch.randint(0, lm.card, (B, K, S), generator=g)
    z32 = _teacher_forced_decode(lm, cond, mask, step_cond, seq, 3.0)
    rounding = _Roundings()
    with torch.autocast("cpu", dtype=torch.bfloat16), rounding:
        z16 = _teacher_forced_decode(lm, cond, mask, step_cond, seq, 3.0)
    # per step: the roundings of one step's path (the count is over all S steps; each step's output depends on its
    # own step and the cached keys/values of the earlier ones, so the whole count over-counts and stays a bound)
    assert rounding.count > S
    rel = bf16_bound(rounding.count)
    assert _rel_rms(z16, z32) <= rel, (_rel_rms(z16, z32), rel)


# -------------------------------------------------------------------------------------------- attention kernels
class _AttentionCalls(TorchFunctionMode):
    """Records each ``scaled_dot_product_attention`` call (site, mask shape, is_causal) and each softmax / tril
    made by the model's own code (a hand-written attention or a materialised causal mask would show there)."""

    def __init__(self):
        super().__init__()
        self.calls, self.other = [], []
        self._site = DeviceGuard().site

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if func is torch.nn.functional.scaled_dot_product_attention:
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            self.calls.append({"site": re.sub(r":\d+ in ", " in ", self._site()),
                               "mask": None if mask is None else tuple(mask.shape),
                               "causal": bool(kwargs.get("is_causal", False)), "q": tuple(args[0].shape),
                               "k": tuple(args[1].shape)})
        elif name in ("softmax", "tril", "triu"):
            site = self._site()
            if site.startswith(("vmas/models/", "vmas/modules/")):
                self.other.append(f"{name} at {site}")
        return func(*args, **kwargs)


def test_training_attention_uses_sdpa_without_materialised_causal_mask():
    """In the training forward every attention is one ``scaled_dot_product_attention`` call: the LM's causal
    self-attention with ``is_causal=True`` and no mask (flash kernels on a GPU), cross-attention with a key-padding
    mask [B, 1, 1, L] (broadcast over heads and queries: memory-efficient kernel), Hiera's mask-unit attention
    without a mask; no softmax or triangular mask built by hand (docs/lm.md "Attention kernels")."""
    cfg, step, _ = _train_step(["model.lm.grad_checkpointing=false", "model.encoder.grad_checkpointing=false"])
    inputs = _train_inputs(cfg)
    rec = _AttentionCalls()
    with rec:
        step(**inputs)
    B, L, S = 3, None, cfg.model.lm.n_q - 1 + round(cfg.data.clip_seconds * cfg.data.frame_rate)
    by_site = collections.defaultdict(list)
    for c in rec.calls:
        by_site[c["site"]].append(c)
    assert set(by_site) == {"vmas/models/hiera.py in forward", "vmas/modules/transformer.py in _attend"}, by_site
    lm_calls = by_site["vmas/modules/transformer.py in _attend"]
    layers = cfg.model.lm.num_layers
    selfs = [c for c in lm_calls if c["q"] == c["k"]]  # self-attention: queries and keys are the S steps
    cross = [c for c in lm_calls if c["q"] != c["k"]]
    assert len(selfs) == len(cross) == layers, lm_calls
    assert all(c["causal"] and c["mask"] is None and c["q"][2] == S for c in selfs)
    L = cross[0]["k"][2]
    assert all(not c["causal"] and c["mask"] == (B, 1, 1, L) for c in cross)
    assert all(c["mask"] is None and not c["causal"] for c in by_site["vmas/models/hiera.py in forward"])
    assert not rec.other, rec.other


def test_torch_engine_step_loop_syncs(tmp_path):
    """The engine's micro-step loop as the solver runs it (bf16 autocast, accumulation over 2 micro-batches,
    gradient clipping, optimiser and schedule): device-clean, and its device -> host syncs are the contrastive
    selection (one per micro-batch) and the clipped gradient norm read for the log (one per update)."""
    from vmas.solvers.engines import TorchEngine
    from vmas.solvers.optim import build_scheduler

    cfg, step, opt = _train_step(["model.lm.video_swap_prob=0"])
    engine = TorchEngine(step, opt, build_scheduler(opt, cfg.optim), grad_accum=2, grad_clip=1.0, precision="bf16",
                         device=torch.device("cpu"))
    inputs = _train_inputs(cfg)
    guard = DeviceGuard()
    guard.place(step, inputs)
    with guard:
        for _ in range(4):  # 2 updates
            total, stats = engine(**inputs)
            engine.backward(total)
            engine.step()
    assert guard.is_dev(step) and 0 < engine.grad_norm < float("inf")
    assert guard.count(guard.syncs) == {"sync: nonzero at vmas/losses/objective.py in __call__": 4,
                                        "sync: .item()/bool()/int()/float() at vmas/solvers/engines.py in step": 2}
    assert not guard.transfers


def test_solver_train_step_is_device_clean(tmp_path):
    """The solver's whole step (loader batch -> inputs on the device, torch engine in bf16, the update, EMA, the
    stats) with the engine's device being the fake one: no violation; per step one host -> device copy of each
    input and three syncs, each needed: the contrastive selection, the gradient norm and the stats for the log."""
    from tests.device_guard import DEV
    from vmas.solvers.solver import Solver

    overrides = [o for o in FULL if not o.startswith("model.tags") and "grad_checkpointing" not in o]
    cfg = load_config(CONFIGS / "debug.yaml", [*overrides, "train.engine=torch", "train.precision=bf16",
                                               f"train.out_dir={tmp_path}"])
    solver = Solver(cfg)
    solver.device = solver.engine.device = DEV  # what torch.device("cuda") is on a GPU
    guard = DeviceGuard()
    guard.place(solver.engine.module, solver.ema.__dict__)
    with guard:
        for _ in range(2):
            stats = solver.train_step()
    assert np.isfinite(stats["loss"])
    syncs = guard.count(guard.syncs)
    assert set(syncs) <= {"sync: nonzero at vmas/losses/objective.py in __call__",
                          "sync: .item()/bool()/int()/float() at vmas/solvers/engines.py in step",
                          "sync: .tolist() at vmas/solvers/solver.py in train_step"}, syncs
    assert all(n == 2 for n in syncs.values()), syncs  # once per step
    assert all(k.endswith("vmas/solvers/inputs.py in __call__") for k in guard.count(guard.transfers))


def test_user_generation_with_cuts_and_hits_is_device_clean(tmp_path):
    """``generate_for_videos`` as the CLI runs it (4 s video: several windows, a cut at 2 s restarting the music,
    hit points bending the beat grid, motion condition from the frames, codec decode), with model and codec on the
    fake device: no violation, and the only device -> host reads are the ``.cpu()`` of whole results (motion curve,
    codes, waveform), a few per window, none per decode step."""
    from datasets.synthmv import write_mp4
    from vmas.generate import GenerationRequest, generate_for_videos
    from vmas.hub import load_pretrained

    torch.manual_seed(0)
    cfg = load_config(CONFIGS / "debug.yaml", ["model.lm.beat_condition=true", "model.lm.motion_condition=true",
                                               "model.lm.video_fuse=cross+sum", "loss.motion_flow=farneback"])
    pipe = load_pretrained(None, config=cfg, random_note="debug")
    frames = (np.random.default_rng(0).random((100, 32, 64, 3)) * 255).astype(np.uint8)  # 4 s at 25 fps
    write_mp4(tmp_path / "v.mp4", frames, np.zeros(4 * 32000, np.float32), fps=25)
    guard = DeviceGuard()
    guard.place(pipe.model, pipe.codec)
    with guard:
        res = generate_for_videos([tmp_path / "v.mp4"], pipe, tmp_path / "out",
                                  GenerationRequest(top_k=16, cuts=[2.0], hits=[1.0, 3.0]), progress=False)
    assert res and res[0].cuts == [2.0]
    syncs = guard.count(guard.syncs)
    assert all(k.startswith("sync: .cpu() at ") for k in syncs), syncs
    assert sum(syncs.values()) <= 12, syncs  # a few per window / section, none per decode step
    assert set(_outside_sampler(guard.count(guard.transfers))) <= {
        "h2d: .to(device) at vmas/engine.py in _frames", "h2d: .to(device) at vmas/models/vmas.py in video_motion",
        "h2d: .to(device) at vmas/modules/conditioning.py in step_condition",
        "h2d: .to(device) at vmas/engine.py in decode_music",
        "h2d: .to(device) at vmas/engine.py in conditions"}  # the motion_off mask of the hit clip, once per batch
