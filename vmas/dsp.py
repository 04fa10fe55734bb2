"""Three signal-processing primitives in plain numpy, for the finishing path of ``vmas generate``.

Why not ``scipy.signal``: importing it costs about as much as importing torch (it pulls in ``scipy.stats``,
``scipy.optimize`` and ``scipy.interpolate``), and the generation command needs only these three functions from it;
they are the same computations, checked against scipy's own functions in ``tests/test_dsp.py``:

- :func:`resample_poly` — scipy's ``resample_poly`` with its default Kaiser-windowed FIR (same filter, same
  alignment, same output length), computed phase by phase;
- :func:`lfilter` — a direct-form IIR filter with an initial state, like ``scipy.signal.lfilter(b, a, x, zi=zi)``,
  computed block by block with matrices (exact up to float rounding) instead of a sample loop;
- :func:`forward_min` — ``out[i] = min(x[i : i + w])``, the van Herk / Gil-Werman running minimum in O(N).

Plain arrays in, plain arrays out; nothing here knows about configs, models or files.
"""
from __future__ import annotations

import functools
import math
import typing as tp

import numpy as np


# ------------------------------------------------------------------------------------------------- resampling
def kaiser_lowpass(up: int, down: int, beta: float = 5.0) -> np.ndarray:
    """The anti-aliasing filter ``scipy.signal.resample_poly`` designs by default: ``firwin(2 * 10 * max(up, down)
    + 1, 1 / max(up, down), window=("kaiser", beta))`` scaled by ``up``. A windowed sinc with its DC gain set to 1
    before the scaling."""
    rate = max(up, down)
    half = 10 * rate
    m = np.arange(2 * half + 1) - half  # [taps] centred
    h = np.sinc(m / rate) / rate * np.kaiser(2 * half + 1, beta)
    return h / h.sum() * up


def resample_poly(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """``x [N] -> float64 [ceil(N * up / down)]``: upsample by ``up``, low-pass with :func:`kaiser_lowpass`,
    keep every ``down``-th sample; zeros are assumed outside ``x`` (scipy's ``padtype="constant"``).

    Like scipy, the filter's delay is removed so output sample ``j`` sits at input time ``j * down / up``. Each of the
    ``up`` polyphase branches is one ``np.convolve`` of ``x`` with every ``up``-th filter tap, so no zero-stuffed
    signal is ever built.
    """
    g = math.gcd(int(up), int(down))
    up, down = int(up) // g, int(down) // g
    x = np.asarray(x, np.float64).reshape(-1)
    n = x.size
    n_out = -(-n * up // down)
    if up == down == 1:
        return x.copy()
    h = kaiser_lowpass(up, down)
    half = (h.size - 1) // 2
    pre = down - half % down  # zeros in front of the filter, so the removed delay is a whole number of outputs
    skip = (half + pre) // down  # outputs of the delay, dropped
    h = np.concatenate([np.zeros(pre), h])
    # y_up[m] = sum_k h[k] x_up[m - k] over the zero-stuffed x_up; branch p holds m = i * up + p
    taps = -(-h.size // up) * up
    h = np.concatenate([h, np.zeros(taps - h.size)]).reshape(-1, up)  # [taps / up, up]: column p = h[p::up]
    length = n + h.shape[0] - 1
    y_up = np.zeros((length, up))  # [i, p] -> y_up[i * up + p]
    for p in range(up):
        y_up[:, p] = np.convolve(x, h[:, p])
    y = y_up.reshape(-1)[::down]  # [ceil(length * up / down)]
    out = np.zeros(n_out)
    got = y[skip: skip + n_out]
    out[: got.size] = got
    return out


# ------------------------------------------------------------------------------------------------- IIR filters
def lfilter(b: np.ndarray, a: np.ndarray, x: np.ndarray, zi: tp.Optional[np.ndarray] = None,
            block: int = 256) -> tp.Tuple[np.ndarray, np.ndarray]:
    """IIR filter ``a[0] y[n] = sum_k b[k] x[n-k] - sum_{k>=1} a[k] y[n-k]`` with initial state ``zi`` (scipy's
    transposed direct form II state; zeros when None). Returns ``(y float64 [N], zf)`` like
    ``scipy.signal.lfilter(b, a, x, zi=zi)``.

    State space, block by block: with ``s`` the state before a block of ``L`` samples, the block's output is
    ``T @ x_block + O @ s`` (``T`` [L, L]: the impulse response as a Toeplitz matrix; ``O`` [L, order]: the free
    response of each state) and the next state ``S @ x_block + A^L @ s``. All blocks' zero-state parts are one matrix
    product (~L multiply-adds per sample); only the ``order``-dimensional state runs through a Python loop, once
    per block.
    """
    b = np.asarray(b, np.float64).reshape(-1)
    a = np.asarray(a, np.float64).reshape(-1)
    order = max(a.size, b.size) - 1
    x = np.asarray(x, np.float64).reshape(-1)
    s = np.zeros(order) if zi is None else np.asarray(zi, np.float64).reshape(order).copy()
    if order == 0:
        return b[0] / a[0] * x, s
    T, O, S, AL, powers = _block_matrices(tuple(b), tuple(a), int(block))  # noqa: E741
    L, n = T.shape[0], x.size
    nb = -(-n // L)
    xb = np.zeros(nb * L)
    xb[:n] = x
    xb = xb.reshape(nb, L)  # [nb, L]
    drive = xb @ S.T  # [nb, order]: each block's input contribution to its end state
    states = np.empty((nb, order))  # the state at the start of each block
    for i in range(nb):
        states[i] = s
        s = AL @ s + drive[i]
    y = xb @ T.T + states @ O.T  # [nb, L]: zero-state response + free response
    last = n - (nb - 1) * L  # real samples in the last block: the final state is after them only
    s_end = powers[last] @ states[-1] + S[:, L - last:] @ xb[-1, :last]
    return y.reshape(-1)[:n], s_end


@functools.lru_cache(maxsize=16)
def _block_matrices(b: tp.Tuple[float, ...], a: tp.Tuple[float, ...], L: int):
    """``T [L, L], O [L, order], S [order, L], A^L, [A^0 .. A^L]`` of :func:`lfilter` for one filter."""
    order = max(len(a), len(b)) - 1
    bn = np.zeros(order + 1)
    an = np.zeros(order + 1)
    bn[: len(b)] = np.asarray(b) / a[0]
    an[: len(a)] = np.asarray(a) / a[0]
    # transposed direct form II: y = b0 x + s[0];  s'[i] = b[i+1] x - a[i+1] y + s[i+1]
    A = np.zeros((order, order))  # state transition when x = 0
    A[:, 0] = -an[1:]
    A[:-1, 1:] = np.eye(order - 1)
    B = bn[1:] - an[1:] * bn[0]  # [order] input to state (the b0 x part of y folded in)
    powers = [np.eye(order)]
    for _ in range(L):
        powers.append(A @ powers[-1])
    O = np.stack([powers[k][0] for k in range(L)])  # noqa: E741  [L, order]: y[k] = (A^k s)[0] from the state
    imp = np.concatenate([[bn[0]], [(powers[k - 1] @ B)[0] for k in range(1, L)]])  # [L] impulse response
    T = np.zeros((L, L))
    for k in range(L):
        T[k:, k] = imp[: L - k]
    S = np.stack([powers[L - 1 - k] @ B for k in range(L)], axis=1)  # [order, L]: end state from each input
    return T, O, S, powers[L], powers


# ------------------------------------------------------------------------------------------------- running min
def forward_min(x: np.ndarray, w: int, fill: float = 1.0) -> np.ndarray:
    """``out[i] = min(x[i : i + w])``, with ``fill`` past the end; O(N) whatever ``w`` (van Herk / Gil-Werman:
    within blocks of ``w``, a suffix minimum from the left block and a prefix minimum from the right one cover
    any window)."""
    x = np.asarray(x, np.float64).reshape(-1)
    n, w = x.size, max(1, int(w))
    if w == 1 or n == 0:
        return x.copy()
    nb = -(-(n + w) // w)
    padded = np.full(nb * w, fill)
    padded[:n] = x
    blocks = padded.reshape(nb, w)
    suffix = np.minimum.accumulate(blocks[:, ::-1], axis=1)[:, ::-1].reshape(-1)  # min(x[i : end of i's block])
    prefix = np.minimum.accumulate(blocks, axis=1).reshape(-1)  # min(x[start of i's block : i + 1])
    i = np.arange(n)
    return np.minimum(suffix[i], prefix[i + w - 1])


__all__ = ["resample_poly", "kaiser_lowpass", "lfilter", "forward_min"]
