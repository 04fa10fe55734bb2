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
   model parameters, inputs, results of ``.to(device)`` / explicit ``device=`` and everything computed from them
   are on the device, factory calls without ``device=`` and ``torch.from_numpy`` are on the host, and an operation
   that mixes the two (beyond 0-dim host scalars, which CUDA accepts) is a violation naming the source line. It
   also lists device->host syncs (``.item()``, ``bool()``, ``.cpu()``) and host->device copies per call site,
   which the decode-loop tests count per step.

Both are shown to catch a deliberately stray ``torch.arange(n)`` in a tiny module (the first tests below).

bf16 (``torch.autocast('cpu', dtype=torch.bfloat16)``, what a GPU run does) is compared with fp32 within bounds
derived from bf16's precision (see :func:`bf16_bound`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

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


@pytest.mark.parametrize("guide,neg", [("all", False), ("tags", False), ("both", False), ("all", True)])
def test_generation_is_device_clean(gen_model, guide, neg):
    """VMAS.generate with every guide mode (and negative tags), the beat grid, the motion condition computed from
    the frames, and a prompt continued (what --cuts / --hits windows do): no stray host tensor; the per-step loop
    has no device->host sync and no host->device copy."""
    cfg, model, _ = gen_model
    inputs = _gen_inputs(cfg)
    if not neg:
        inputs.pop("neg_emb")
    num_frames, T0 = 12, 4
    prompt = torch.randint(0, cfg.model.lm.card, (2, cfg.model.lm.n_q, T0))
    guard = DeviceGuard()
    guard.place(model, inputs, prompt)
    gen = torch.Generator().manual_seed(0)  # a CPU generator drives any device (vmas.models.lm._exponential)
    with guard:
        codes = model.generate(num_frames=num_frames, cfg=3.0, guide=guide, top_k=8, generator=gen, prompt=prompt,
                               **inputs)
    assert guard.is_dev(codes) and codes.shape == (2, cfg.model.lm.n_q, num_frames)
    assert torch.equal(codes[..., :T0], prompt)
    assert guard.count(guard.syncs) == {"sync: .cpu() at vmas/models/vmas.py in video_motion": 1}
    assert guard.count(guard.transfers) == {"h2d: .to(device) at vmas/models/vmas.py in video_motion": 1}


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
