"""Peak-to-correlation energy (PCE) of a residual against a fingerprint.

The circular cross-correlation ``C[s] = Σ_x K(x + s) W(x)`` of a probe
residual ``W`` with a camera fingerprint ``K`` is computed through the
Fourier transform (OpenCV's packed real DFT; the fingerprint's transform is
computed once and reused for every probe). The PCE is the signed squared
value at the expected peak over the mean square of the surface outside an
11x11 neighbourhood of it [1]_:

    PCE = sign(C[p]) C[p]² / mean_{s ∉ N(p)} C[s]²

Under the hypothesis that the image did not come from the camera,
``C[p] / sqrt(energy)`` is close to standard normal, so one correlation
exceeds ``sqrt(τ)`` with probability ``Q(sqrt(τ))`` and the best of ``n``
searched shifts with probability ``1 - (1 - Q(sqrt(τ)))^n`` [1]_.

References
----------
.. [1] M. Goljan, J. Fridrich, T. Filler, "Large scale test of sensor
   fingerprint camera identification", Proc. SPIE 7254, Media Forensics and
   Security, 72540I, 2009. :doi:`10.1117/12.805701`
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .geometry import crop_offsets

__all__ = [
    "EXCLUDE",
    "FingerprintSpectrum",
    "MatchScore",
    "cross_correlation",
    "pce_at",
    "false_alarm_probability",
    "score",
]

EXCLUDE = 11
"""Side of the neighbourhood around the peak left out of the energy [1]_."""


class FingerprintSpectrum:
    """A fingerprint's Fourier transform, computed once and reused for every probe.

    Only the packed spectrum and two statistics are kept (the same memory as
    the fingerprint itself); the spatial fingerprint is recomputed from the
    spectrum on the rare occasions it is needed (normalised correlation of a
    shifted or cropped probe). Instances pickle, so they can be shipped once
    to worker processes.

    Parameters
    ----------
    k : ndarray, float32, shape (M, N)
    """

    def __init__(self, k: np.ndarray):
        k = np.ascontiguousarray(k, dtype=np.float32)
        self.shape = k.shape
        self.spectrum = cv2.dft(k)  # packed CCS, float32 (M, N)
        self.mean = float(cv2.mean(k)[0])
        self.sum_sq = float(cv2.norm(k, cv2.NORM_L2SQR))

    @property
    def k(self) -> np.ndarray:
        """The spatial fingerprint (inverse transform of the stored spectrum)."""
        return cv2.dft(self.spectrum, flags=cv2.DFT_INVERSE | cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)


def cross_correlation(residual: np.ndarray, fp: FingerprintSpectrum) -> np.ndarray:
    """Circular cross-correlation ``C[s] = Σ_x K(x + s) W(x)``.

    Parameters
    ----------
    residual : ndarray, float32, shape (m, n) with m <= M, n <= N
        Placed at the origin and zero-padded to the fingerprint's size.
    fp : FingerprintSpectrum

    Returns
    -------
    ndarray, float32, shape (M, N)
        ``C[r, c]`` is the correlation with the residual's top-left corner at
        fingerprint pixel (r, c) (modulo the size).
    """
    m, n = residual.shape
    if (m, n) != fp.shape:
        padded = np.zeros(fp.shape, np.float32)
        padded[:m, :n] = residual
        residual = padded
    spec_w = cv2.dft(np.ascontiguousarray(residual, dtype=np.float32))
    prod = cv2.mulSpectrums(fp.spectrum, spec_w, 0, conjB=True)
    return cv2.dft(prod, flags=cv2.DFT_INVERSE | cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)


def pce_at(cc: np.ndarray, peak: tuple[int, int], exclude: int = EXCLUDE) -> float:
    """Signed PCE of the correlation surface ``cc`` at ``peak`` (row, col).

    The energy is the mean of ``cc²`` over all shifts outside the
    ``exclude x exclude`` neighbourhood of the peak (taken circularly).
    """
    rows, cols = cc.shape
    r, c = peak
    half = exclude // 2
    ri = np.arange(r - half, r + half + 1) % rows
    ci = np.arange(c - half, c + half + 1) % cols
    total = cv2.norm(cc, cv2.NORM_L2SQR)  # float64 accumulation, no temporary
    ri, ci = np.unique(ri), np.unique(ci)
    near = float(np.square(cc[np.ix_(ri, ci)], dtype=np.float64).sum())
    count = cc.size - len(ri) * len(ci)
    energy = (total - near) / max(count, 1)
    if energy <= 0:
        return 0.0
    value = float(cc[r, c])
    return math.copysign(value * value / energy, value)


def false_alarm_probability(pce: float, n_shifts: int = 1) -> float:
    """Probability that an unrelated fingerprint reaches ``pce`` over ``n_shifts`` shifts [1]_.

    ``1 - (1 - Q(sqrt(pce)))^n`` with ``Q`` the standard normal tail; 1.0 for
    ``pce <= 0``.
    """
    if pce <= 0:
        return 1.0
    q = 0.5 * math.erfc(math.sqrt(pce) / math.sqrt(2.0))
    return float(-math.expm1(n_shifts * math.log1p(-q))) if q < 1 else 1.0


@dataclass(frozen=True)
class MatchScore:
    """One residual scored against one fingerprint.

    Attributes
    ----------
    pce : float
        Signed PCE at ``peak``.
    ncc : float
        Normalised correlation of the residual with the fingerprint region at
        ``peak``.
    peak : tuple of int
        (row, col) of the residual's top-left corner in the fingerprint.
    shift : tuple of int
        (rows, cols) of ``peak`` from the centre alignment (the "zero shift").
    n_shifts : int
        Number of alignments tried (shifts x rotations).
    p_fa : float
        False-alarm probability of ``pce`` for ``n_shifts`` tries.
    rotation : int
        Degrees (counter-clockwise) the residual was rotated: 0, 90 or 270.
    surface : ndarray or None
        The correlation surface around the peak (``SURFACE x SURFACE``, peak
        in the centre, normalised by the energy's square root), when asked for.
    """

    pce: float
    ncc: float
    peak: tuple[int, int]
    shift: tuple[int, int]
    n_shifts: int
    p_fa: float
    rotation: int
    surface: np.ndarray | None = None


def _align(residual: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Centre-crop the residual to at most ``shape``; return it and its centre offset."""
    h, w = min(residual.shape[0], shape[0]), min(residual.shape[1], shape[1])
    if (h, w) != residual.shape:
        r, c = crop_offsets(residual.shape, (h, w))
        residual = residual[r : r + h, c : c + w]
    return residual, crop_offsets(shape, (h, w))


def _candidates(expected, size, shape, max_shift):
    """Row and column shift ranges searched around ``expected``."""
    out = []
    for e, s, full in zip(expected, size, shape):
        if s == full:  # circular: both signs
            lo, hi = e - max_shift, e + max_shift
            lo, hi = max(lo, e - full // 2 + 1), min(hi, e + full // 2)
        else:
            lo, hi = max(0, e - max_shift), min(full - s, e + max_shift)
        out.append(np.arange(lo, hi + 1))
    return out


def _score_one(residual, fp, max_shift, exclude):
    res, expected = _align(residual, fp.shape)
    cc = cross_correlation(res, fp)
    rows, cols = _candidates(expected, res.shape, fp.shape, max_shift)
    if len(rows) * len(cols) == 1:
        at = expected
    else:
        window = cc[np.ix_(rows % fp.shape[0], cols % fp.shape[1])]
        i, j = np.unravel_index(int(np.argmax(window)), window.shape)
        at = (int(rows[i]), int(cols[j]))
    peak = (at[0] % fp.shape[0], at[1] % fp.shape[1])
    shift = (at[0] - expected[0], at[1] - expected[1])
    value = pce_at(cc, peak, exclude)
    return value, _ncc(res, fp, peak, float(cc[peak])), peak, shift, len(rows) * len(cols), cc


def _ncc(res: np.ndarray, fp: FingerprintSpectrum, peak: tuple[int, int], dot: float) -> float:
    """Normalised (mean-removed) correlation of ``res`` with the fingerprint region at ``peak``.

    ``dot`` is the raw correlation ``C[peak]`` already computed by the FFT.
    """
    h, w = res.shape
    r, c = peak
    n = res.size
    if (h, w) == fp.shape and peak == (0, 0):
        mb, sb = fp.mean, fp.sum_sq
    else:
        k = fp.k
        if r + h <= k.shape[0] and c + w <= k.shape[1]:
            region = np.ascontiguousarray(k[r : r + h, c : c + w])
        else:  # wraps round (circular shift of an equal-size residual)
            rows, cols = np.arange(r, r + h) % k.shape[0], np.arange(c, c + w) % k.shape[1]
            region = np.ascontiguousarray(k[np.ix_(rows, cols)])
        mb, sb = cv2.mean(region)[0], cv2.norm(region, cv2.NORM_L2SQR)
    ma = cv2.mean(res)[0]
    va = cv2.norm(res, cv2.NORM_L2SQR) - n * ma * ma
    vb = sb - n * mb * mb
    denom = math.sqrt(max(va, 0.0) * max(vb, 0.0))
    return float((dot - n * ma * mb) / denom) if denom > 0 else 0.0


def score(
    residual: np.ndarray,
    fp: FingerprintSpectrum,
    *,
    max_shift: int = 0,
    rotations: bool = True,
    exclude: int = EXCLUDE,
    surface: bool = False,
) -> MatchScore:
    """Score a residual against a fingerprint.

    Parameters
    ----------
    residual : ndarray, float32, shape (m, n)
    fp : FingerprintSpectrum
    max_shift : int, optional
        Search the peak within ``±max_shift`` rows and columns of the centre
        alignment (for cropped images); 0 reads the PCE at the centre
        alignment only (zero shift when the sizes agree).
    rotations : bool, optional
        When the residual is portrait and the fingerprint landscape (or the
        reverse), try the residual rotated by 90 and by 270 degrees and keep
        the better one.
    exclude : int, optional
        Neighbourhood excluded from the energy.
    surface : bool, optional
        Also return the correlation surface around the peak.

    Returns
    -------
    MatchScore
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    mismatch = (
        rotations
        and residual.shape[0] != residual.shape[1]
        and ((residual.shape[0] > residual.shape[1]) != (fp.shape[0] > fp.shape[1]))
    )
    tries = [(90, np.rot90(residual, 1)), (270, np.rot90(residual, 3))] if mismatch else [(0, residual)]
    best = None
    total = 0
    for angle, res in tries:
        value, ncc, peak, shift, n, cc = _score_one(np.ascontiguousarray(res), fp, max_shift, exclude)
        total += n
        if best is None or value > best[0]:
            best = (value, ncc, peak, shift, angle, _surface(cc, peak, value) if surface else None)
    value, ncc, peak, shift, angle, patch = best
    return MatchScore(
        pce=value,
        ncc=ncc,
        peak=peak,
        shift=shift,
        n_shifts=total,
        p_fa=false_alarm_probability(value, total),
        rotation=angle,
        surface=patch,
    )


SURFACE = 41
"""Side of the correlation-surface patch kept for reports."""


def _surface(cc: np.ndarray, peak: tuple[int, int], pce: float) -> np.ndarray:
    """``SURFACE x SURFACE`` patch of ``cc`` around ``peak`` (circular), in units of the noise std."""
    half = SURFACE // 2
    rows = np.arange(peak[0] - half, peak[0] + half + 1) % cc.shape[0]
    cols = np.arange(peak[1] - half, peak[1] + half + 1) % cc.shape[1]
    patch = cc[np.ix_(rows, cols)].astype(np.float32)
    value = float(cc[peak])
    sigma = abs(value) / math.sqrt(abs(pce)) if pce and value else float(patch.std()) or 1.0
    return patch / np.float32(sigma)
