"""vmas.dsp against the scipy functions it stands in for (the generation command avoids importing scipy.signal):
same filter, same alignment, same lengths, same states; and the K-weighting biquads against pyloudnorm's."""
import numpy as np
import pytest
import scipy.signal as ss
from scipy.ndimage import minimum_filter1d

from vmas import dsp
from vmas import mixing as M


@pytest.mark.parametrize("up,down", [(4, 1), (6, 1), (3, 2), (2, 3), (1, 3), (160, 147), (147, 160)])
@pytest.mark.parametrize("n", [1, 2, 7, 333, 4801])
def test_resample_poly_equals_scipy(up, down, n):
    x = np.random.default_rng(n).standard_normal(n)
    ref = ss.resample_poly(x, up, down)
    got = dsp.resample_poly(x, up, down)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_kaiser_lowpass_is_scipys_default_filter():
    for up, down in [(4, 1), (3, 2), (1, 3)]:
        rate = max(up, down)
        ref = ss.firwin(20 * rate + 1, 1.0 / rate, window=("kaiser", 5.0)) * up
        np.testing.assert_allclose(dsp.kaiser_lowpass(up, down), ref, rtol=0, atol=1e-15)


@pytest.mark.parametrize("sr", [48000, 32000, 16000])
def test_lfilter_with_state_equals_scipy_in_chunks(sr):
    """The K-weighting biquads over a signal cut into uneven chunks, the state carried: equal to scipy's lfilter
    on the whole (outputs and final state); also with a non-zero initial state and chunks shorter than a block."""
    rng = np.random.default_rng(sr)
    x = rng.standard_normal(3000)
    for b, a in M.k_weighting(sr):
        zi = rng.standard_normal(2)
        ref, ref_zf = ss.lfilter(b, a, x, zi=zi)
        parts, z = [], zi
        for s, e in [(0, 1), (1, 3), (3, 300), (300, 556), (556, 3000)]:
            y, z = dsp.lfilter(b, a, x[s:e], zi=z, block=256)
            parts.append(y)
        np.testing.assert_allclose(np.concatenate(parts), ref, rtol=0, atol=1e-10)
        np.testing.assert_allclose(z, ref_zf, rtol=0, atol=1e-10)
    # a third-order filter and a zero initial state
    b, a = ss.butter(3, 0.1)
    np.testing.assert_allclose(dsp.lfilter(b, a, x)[0], ss.lfilter(b, a, x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("sr", [48000, 44100, 32000])
def test_k_weighting_is_pyloudnorms(sr):
    import pyloudnorm

    ref = [(f.b, f.a) for f in pyloudnorm.Meter(sr)._filters.values()]
    for (b, a), (rb, ra) in zip(M.k_weighting(sr), ref):
        np.testing.assert_allclose(b, rb, rtol=1e-13)
        np.testing.assert_allclose(a, ra, rtol=1e-13)


@pytest.mark.parametrize("w", [1, 2, 3, 48, 480, 5000])
def test_forward_min_equals_a_min_filter(w):
    g = np.random.default_rng(w).uniform(size=10007)
    ref = minimum_filter1d(np.concatenate([g, np.ones(w)]), w, mode="nearest")[w // 2: w // 2 + g.size]
    np.testing.assert_array_equal(dsp.forward_min(g, w), ref)
    brute = np.array([min(np.concatenate([g, np.ones(w)])[i: i + w]) for i in range(0, g.size, 97)])
    np.testing.assert_array_equal(dsp.forward_min(g, w)[::97], brute)


def test_generation_path_does_not_import_scipy_signal():
    """What the start-up budget relies on: finishing a track (loudness, true peak, limiter, resampling) without
    scipy.signal or pyloudnorm being imported (checked in a fresh interpreter)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\nfrom vmas import mixing\n"
            "x = np.random.default_rng(0).standard_normal(48000).astype(np.float32)\n"
            "r = mixing.finish_audio(0.3 * x[:32000], 32000, 0.1 * x, 48000, mixing.MixOptions(duck=0))\n"
            "print(sorted(m for m in ('scipy.signal', 'pyloudnorm', 'scipy.stats') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("rate,sr", [(32000, 48000), (44100, 32000), (48000, 32000), (22050, 32000), (48000, 16000)])
def test_chunked_audio_resampling_equals_one_call(rate, sr):
    """vmas.data.media.resample_audio (what read_audio uses, chunked so long tracks stay small) equals torchaudio's
    resample on the whole signal, chunk edges included (chunks of ~4000 samples over a 100 k signal)."""
    import torch
    import torchaudio.functional as AF

    from vmas.data import media

    x = torch.from_numpy(np.random.default_rng(rate + sr).standard_normal(100_003).astype(np.float32))
    ref = AF.resample(x, rate, sr)
    got = media.resample_audio(x, rate, sr, chunk=4000)
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) < 2e-6
