"""tools/realmusic_benchmark.py (issue 32): the measures it adds, checked against hand computation."""
from __future__ import annotations

import numpy as np

from tools import realmusic_benchmark as rb


def test_si_sdr_matches_hand_computation():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(8000)
    ref -= ref.mean()
    noise = rng.standard_normal(8000)
    noise -= noise.mean()
    noise -= (noise @ ref) / (ref @ ref) * ref  # orthogonal to ref: SI-SDR = 10 log10(|a ref|^2 / |noise|^2)
    est = 3.0 * ref + 0.5 * noise
    want = 10 * np.log10((9.0 * ref @ ref) / (0.25 * noise @ noise))
    assert abs(rb.si_sdr(est, ref) - want) < 1e-9
    assert abs(rb.si_sdr(-7.0 * ref + 0.5 * noise * 7 / 3, ref) - want) < 1e-9  # scale (and sign) invariant


def test_mulaw_pcm_levels_and_rate():
    """A 40 Hz tone (below every rate's Nyquist) keeps its pitch; more bits (at a lower rate) quantise finer."""
    t = np.arange(rb.SR) / rb.SR
    wav = (0.5 * np.sin(2 * np.pi * 40 * t)).astype(np.float32)
    errs = {b: float(np.mean((rb.mulaw_pcm(wav, 1600 // b, b) - wav)[4000:-4000] ** 2)) for b in (8, 4, 2)}
    assert errs[8] < errs[4] < errs[2]
    spec = np.abs(np.fft.rfft(rb.mulaw_pcm(wav, 400, 4)))
    assert abs(np.argmax(spec) - 40) <= 1  # 1 Hz bins over 1 s


def test_mismatch_always_changes_class():
    clips = [{"class_id": c} for c in (0, 0, 0, 1, 1, 2, 2, 3)]
    perm = rb.mismatch(clips, 0)
    assert sorted(perm) == list(range(8))
    assert all(clips[j]["class_id"] != clips[i]["class_id"] for i, j in enumerate(perm))
    assert (perm == rb.mismatch(clips, 0)).all()


def test_fad_by_class_prefers_the_same_class():
    """Tones of class 0 are nearer to class-0 references than to class-1 noise (mel-statistics FAD)."""
    rng = np.random.default_rng(1)
    t = np.arange(2 * rb.SR) / rb.SR

    def tone(f):
        return (0.3 * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)

    def noise():
        return (0.1 * rng.standard_normal(t.size)).astype(np.float32)

    refs = {0: [tone(f) for f in (300, 320, 340, 360)], 1: [noise() for _ in range(4)]}
    gen = [tone(f) for f in (310, 330, 350)] + [noise() for _ in range(3)]
    clips = [{"class_id": 0}] * 3 + [{"class_id": 1}] * 3
    out = rb.fad_by_class(gen, clips, refs)
    assert out["fad_same_class"] < out["fad_other_class"]
