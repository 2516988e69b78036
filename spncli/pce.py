"""Peak-to-correlation energy (PCE) of a residual against a fingerprint.

The circular cross-correlation ``C[s] = Σ_x K(x + s) W(x)`` of a probe
residual ``W`` with a camera fingerprint ``K`` lives in the Fourier domain:
``C = IDFT(K̂ · conj(Ŵ))``. Both transforms are computed once (OpenCV's real
DFT, kept as the ``numpy.fft.rfft2`` half spectrum): the fingerprint's when
it is loaded, the residual's once per image (:class:`ResidualSpectrum`),
reused for every camera and both rotations. The PCE is the signed squared
value at the expected peak over the mean square of the surface outside an
11x11 neighbourhood of it [1]_:

    PCE = sign(C[p]) C[p]² / mean_{s ∉ N(p)} C[s]²

At a single alignment (zero shift) no correlation surface is formed. The
total energy follows from Parseval's theorem, ``Σ_s C[s]² = (1/MN) Σ_k |K̂_k|²
|Ŵ_k|²`` (the half spectrum's interior columns counted twice), and the 121
values of the neighbourhood, the peak among them, from a partial inverse
DFT: two products with the complex exponentials of the 11 row and 11 column
shifts, O(11 MN). This is exact, not an approximation: it agrees with the
inverse-FFT surface to float32 rounding. The surface itself is computed
(inverse FFT) only for a shift search and for the report's picture of a
match.

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

import ctypes
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache

import cv2
import numpy as np

from .geometry import crop_offsets
from .residual import ccs_half_spectrum

__all__ = [
    "EXCLUDE",
    "FingerprintSpectrum",
    "ResidualSpectrum",
    "MatchScore",
    "cross_correlation",
    "correlation_surface",
    "pce_at",
    "pce_direct",
    "rfft2",
    "false_alarm_probability",
    "score",
]

EXCLUDE = 11
"""Side of the neighbourhood around the peak left out of the energy [1]_."""

_BLOCK = 1 << 14
"""Spectrum elements per block of the direct PCE (128 KiB: the block's product stays in cache)."""

_REGIONS = 32
"""Fingerprint-region statistics (for the NCC) kept per fingerprint."""


@lru_cache(maxsize=1)
def _openblas():
    """``(get, set)`` of numpy's OpenBLAS thread count, or None where it cannot be found (then left alone)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and "numpy" in line})
        lib = ctypes.CDLL(paths[0], mode=os.RTLD_NOLOAD)
    except (OSError, IndexError):
        return None
    for prefix, suffix in (("scipy_", "64_"), ("", "64_"), ("", "")):
        get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
        set_ = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
        if get is not None and set_ is not None:
            return get, set_
    return None


@contextmanager
def _calling_thread_blas():
    """Run numpy's BLAS on the calling thread only, then restore its thread count.

    The direct PCE makes many small products; OpenBLAS spreads even those over
    its threads, whose spinning costs several times the work on a busy machine
    and in Dask workers that already use every core.
    """
    api = _openblas()
    before = api[0]() if api is not None else 1
    if before == 1:
        yield
        return
    api[1](1)
    try:
        yield
    finally:
        api[1](before)


def rfft2(x: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Half spectrum ``numpy.fft.rfft2(x, s=shape)`` through OpenCV's (faster) real DFT.

    Parameters
    ----------
    x : ndarray, float32, shape (m, n)
        Placed at the origin and zero-padded to ``shape`` (default: its own).
    shape : (M, N), optional

    Returns
    -------
    ndarray, complex64, shape (M, N // 2 + 1)
    """
    rows, cols = shape or x.shape
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape != (rows, cols):
        padded = np.zeros((rows, cols), np.float32)
        padded[: x.shape[0], : x.shape[1]] = x
        x = padded
    if min(rows, cols) < 2:
        return np.fft.rfft2(x).astype(np.complex64)
    return ccs_half_spectrum(cv2.dft(x))


def _irfft2(spectrum: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.fft.irfft2(spectrum, s=shape).astype(np.float32, copy=False)


class FingerprintSpectrum:
    """A fingerprint's Fourier transform, computed once and reused for every probe.

    Only the half spectrum and two statistics are kept (the same memory as
    the fingerprint itself); the spatial fingerprint is recomputed from the
    spectrum on the rare occasions it is needed (the NCC of a probe smaller
    than the fingerprint: once per region, then cached). Instances pickle,
    so they can be shipped once to worker processes.

    Parameters
    ----------
    k : ndarray, float32, shape (M, N)
    """

    def __init__(self, k: np.ndarray):
        k = np.ascontiguousarray(k, dtype=np.float32)
        self.shape = k.shape
        self.spectrum = rfft2(k)  # complex64 (M, N // 2 + 1)
        self.mean = float(cv2.mean(k)[0])
        self.sum_sq = float(cv2.norm(k, cv2.NORM_L2SQR))
        self._regions: dict = {}

    @classmethod
    def from_parts(cls, spectrum: np.ndarray, shape: tuple[int, int], mean: float, sum_sq: float):
        """A transform computed earlier (e.g. a read-only memory map of it, :mod:`spncli.spectra`)."""
        rows, cols = (int(shape[0]), int(shape[1]))
        if spectrum.dtype != np.complex64 or spectrum.shape != (rows, cols // 2 + 1):
            raise ValueError(f"a spectrum of a {rows}x{cols} fingerprint is complex64 {(rows, cols // 2 + 1)}, "
                             f"got {spectrum.dtype} {spectrum.shape}")  # fmt: skip
        self = cls.__new__(cls)
        self.shape, self.spectrum, self.mean, self.sum_sq = (rows, cols), spectrum, float(mean), float(sum_sq)
        self._regions = {}
        return self

    @property
    def k(self) -> np.ndarray:
        """The spatial fingerprint (inverse transform of the stored spectrum)."""
        return _irfft2(self.spectrum, self.shape)

    def region_stats(self, corner: tuple[int, int], size: tuple[int, int]) -> tuple[float, float]:
        """Mean and sum of squares of the ``size`` region at ``corner`` (circular), cached per region."""
        key = (tuple(corner), tuple(size))
        hit = self._regions.get(key)
        if hit is None:
            k = self.k
            (r, c), (h, w) = key
            rows, cols = np.arange(r, r + h) % k.shape[0], np.arange(c, c + w) % k.shape[1]
            region = np.ascontiguousarray(k[np.ix_(rows, cols)])
            hit = (float(cv2.mean(region)[0]), float(cv2.norm(region, cv2.NORM_L2SQR)))
            if len(self._regions) >= _REGIONS:
                self._regions.pop(next(iter(self._regions)))
            self._regions[key] = hit
        return hit


@dataclass(frozen=True)
class _Aligned:
    """A residual rotated and centre-cropped for fingerprints of one shape, with its spectrum."""

    res: np.ndarray
    expected: tuple[int, int]
    conj_spectrum: np.ndarray  # conj(rfft2(res, fingerprint shape))
    mean: float
    centred_sq: float  # Σ (res - mean)²


class ResidualSpectrum:
    """A probe residual with its spectra: one transform per image, reused for every camera and rotation.

    The rotated and centre-cropped residual and its zero-padded spectrum are
    computed on first use for each fingerprint shape and rotation and then
    kept. The 270-degree residual is the 90-degree one turned by 180 degrees,
    whose spectrum is the conjugate times a phase ramp: a portrait image pays
    one transform, not two (when no crop intervenes).

    Parameters
    ----------
    residual : ndarray, float32, shape (m, n)
    spectrum : ndarray, complex64, shape (m, n // 2 + 1), optional
        ``rfft2`` of ``residual`` where the caller has it already (the spectral
        Wiener step computes it: :func:`spncli.residual.wiener_dft`); used for a
        fingerprint of the residual's own shape and orientation.
    """

    def __init__(self, residual: np.ndarray, spectrum: np.ndarray | None = None):
        self.residual = np.ascontiguousarray(residual, dtype=np.float32)
        self.shape = self.residual.shape
        if spectrum is not None and spectrum.shape != (self.shape[0], self.shape[1] // 2 + 1):
            raise ValueError(f"spectrum {spectrum.shape} is not the half spectrum of a {self.shape} residual")
        self._spectrum = spectrum
        self._aligned: dict = {}

    def aligned(self, rotation: int, shape: tuple[int, int]) -> _Aligned:
        """The residual turned by ``rotation`` degrees (0, 90, 270) and aligned to a fingerprint of ``shape``."""
        key = (rotation, tuple(shape))
        if key not in self._aligned:
            self._aligned[key] = self._align(rotation, key[1])
        return self._aligned[key]

    def _align(self, rotation: int, shape: tuple[int, int]) -> _Aligned:
        if rotation not in (0, 90, 270):
            raise ValueError(f"rotation must be 0, 90 or 270 degrees, got {rotation}")
        turned = np.ascontiguousarray(np.rot90(self.residual, rotation // 90))
        res, expected = _align(turned, shape)
        res = np.ascontiguousarray(res)
        other = self._aligned.get((90, shape)) if rotation == 270 else None
        if other is not None and res.shape == turned.shape == other.res.shape:
            conj = _turned_half(other.conj_spectrum, res.shape, shape)
        elif rotation == 0 and self._spectrum is not None and res.shape == self.shape == tuple(shape):
            conj = np.conj(self._spectrum)
            self._spectrum = None  # kept as its conjugate from now on; one copy is enough
        else:
            conj = np.conj(rfft2(res, shape))
        mean = float(cv2.mean(res)[0])
        centred = float(cv2.norm(res, cv2.NORM_L2SQR)) - res.size * mean * mean
        return _Aligned(res, expected, conj, mean, centred)


def _turned_half(conj_spectrum: np.ndarray, size: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """conj spectrum of ``A[h-1-r, w-1-c]`` (zero-padded to ``shape``) from the conj spectrum of ``A``.

    ``DFT{A(h-1-r, w-1-c)}[k] = exp(-2πi (k₀(h-1)/M + k₁(w-1)/N)) conj(Â[k])`` for real ``A``.
    """
    (h, w), (rows, cols) = size, shape
    row_phase = _exponentials(rows, np.array([h - 1]))[:, 0]
    col_phase = _exponentials(cols, np.array([w - 1]), half=True, weighted=False)[:, 0]
    out = np.conj(conj_spectrum)
    out *= row_phase[:, None]
    out *= col_phase[None, :]
    return out


def _exponentials(n: int, shifts: np.ndarray, *, half: bool = False, weighted: bool = True) -> np.ndarray:
    """``exp(+2πi k s / n)`` for frequencies ``k`` (rows) and ``shifts`` (columns), complex64, read-only.

    With ``half`` the frequencies are those of the real half spectrum,
    ``0..n//2``, each weighted by how often it stands for itself and its
    mirror (2, except 1 for 0 and for n/2): the inverse DFT of a real signal
    from its half spectrum is then ``Re(sum)``. Cached: every camera of one
    shape read at one peak uses the same matrices.
    """
    return _exponentials_cached(n, tuple(int(s) for s in shifts), half, weighted)


@lru_cache(maxsize=32)
def _exponentials_cached(n: int, shifts: tuple[int, ...], half: bool, weighted: bool) -> np.ndarray:
    k = np.arange(n // 2 + 1 if half else n, dtype=np.int64)
    angle = (np.outer(k, np.array(shifts, np.int64)) % n) * (2.0 * np.pi / n)  # exact integer phase first
    e = np.exp(1j * angle)
    if half and weighted:
        e[1 : (n + 1) // 2] *= 2.0
    e = e.astype(np.complex64)
    e.flags.writeable = False
    return e


def _neighbourhood(peak: tuple[int, int], shape: tuple[int, int], exclude: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the ``exclude x exclude`` neighbourhood of ``peak`` (circular, without repeats)."""
    half = exclude // 2
    return tuple(np.unique(np.arange(p - half, p + half + 1) % n) for p, n in zip(peak, shape))


def _signed_pce(value: float, total: float, near: float, count: int) -> float:
    """``sign(v) v² / ((total - near) / count)``; 0 when no energy is left."""
    energy = (total - near) / max(count, 1)
    if energy <= 0:
        return 0.0
    return math.copysign(value * value / energy, value)


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
    return _irfft2(fp.spectrum * np.conj(rfft2(residual, fp.shape)), fp.shape)


def pce_at(cc: np.ndarray, peak: tuple[int, int], exclude: int = EXCLUDE) -> float:
    """Signed PCE of the correlation surface ``cc`` at ``peak`` (row, col).

    The energy is the mean of ``cc²`` over all shifts outside the
    ``exclude x exclude`` neighbourhood of the peak (taken circularly).
    """
    ri, ci = _neighbourhood(peak, cc.shape, exclude)
    total = cv2.norm(cc, cv2.NORM_L2SQR)  # float64 accumulation, no temporary
    near = float(np.square(cc[np.ix_(ri, ci)], dtype=np.float64).sum())
    return _signed_pce(float(cc[peak]), total, near, cc.size - len(ri) * len(ci))


def pce_direct(
    conj_spectrum: np.ndarray, fp: FingerprintSpectrum, peak: tuple[int, int], exclude: int = EXCLUDE
) -> tuple[float, float]:
    """Signed PCE at ``peak`` from the spectra alone, without a correlation surface.

    Equal to ``pce_at(IDFT(K̂ conj(Ŵ)), peak)`` up to float32 rounding: the
    total energy by Parseval's theorem, the ``exclude x exclude``
    neighbourhood (and the peak) by a partial inverse DFT,
    ``C[R, S] = Re(E_R · (K̂ conj(Ŵ)) · E_S) / MN`` with ``E`` the complex
    exponentials of the 11 row and 11 column shifts (half-spectrum weighted).

    Parameters
    ----------
    conj_spectrum : ndarray, complex64, shape (M, N // 2 + 1)
        ``conj(rfft2(W, (M, N)))`` of the probe residual.
    fp : FingerprintSpectrum
    peak : (row, col)
    exclude : int, optional

    Returns
    -------
    pce : float
    value : float
        The correlation ``C[peak]``.
    """
    rows, cols = fp.shape
    ri, ci = _neighbourhood(peak, fp.shape, exclude)
    col_exp = _exponentials(cols, ci, half=True)  # (N//2+1, J)
    spectrum = fp.spectrum
    step = max(1, _BLOCK // spectrum.shape[1])
    partial = np.empty((rows, len(ci)), np.complex64)
    block = np.empty((min(step, rows), spectrum.shape[1]), np.complex64)
    total = 0.0
    with _calling_thread_blas():
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            p = np.multiply(spectrum[r0:r1], conj_spectrum[r0:r1], out=block[: r1 - r0])
            np.matmul(p, col_exp, out=partial[r0:r1])
            total += 2.0 * float(np.vdot(p, p).real) - float(np.vdot(p[:, 0], p[:, 0]).real)
            if cols % 2 == 0:  # the Nyquist column stands only for itself
                total -= float(np.vdot(p[:, -1], p[:, -1]).real)
    row_exp = _exponentials(rows, ri).astype(np.complex128)  # (M, I)
    near = np.einsum("mi,mj->ij", row_exp, partial.astype(np.complex128)).real / (rows * cols)  # no BLAS threads
    value = float(near[np.searchsorted(ri, peak[0]), np.searchsorted(ci, peak[1])])
    pce = _signed_pce(value, total / (rows * cols), float(np.square(near).sum()), rows * cols - near.size)
    return pce, value


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


def _score_one(al: _Aligned, fp: FingerprintSpectrum, max_shift: int, exclude: int):
    rows, cols = _candidates(al.expected, al.res.shape, fp.shape, max_shift)
    if len(rows) * len(cols) == 1:  # one alignment: no surface needed
        at = al.expected
        peak = (at[0] % fp.shape[0], at[1] % fp.shape[1])
        value, dot = pce_direct(al.conj_spectrum, fp, peak, exclude)
    else:
        cc = _irfft2(fp.spectrum * al.conj_spectrum, fp.shape)
        window = cc[np.ix_(rows % fp.shape[0], cols % fp.shape[1])]
        i, j = np.unravel_index(int(np.argmax(window)), window.shape)
        at = (int(rows[i]), int(cols[j]))
        peak = (at[0] % fp.shape[0], at[1] % fp.shape[1])
        value, dot = pce_at(cc, peak, exclude), float(cc[peak])
    shift = (at[0] - al.expected[0], at[1] - al.expected[1])
    return value, _ncc(al, fp, peak, dot), peak, shift, len(rows) * len(cols)


def _ncc(al: _Aligned, fp: FingerprintSpectrum, peak: tuple[int, int], dot: float) -> float:
    """Normalised (mean-removed) correlation of the residual with the fingerprint region at ``peak``.

    ``dot`` is the raw correlation ``C[peak]`` already computed. The region's
    statistics are the fingerprint's own for an equal-size residual at zero
    shift, else cached per region.
    """
    n = al.res.size
    if al.res.shape == fp.shape and peak == (0, 0):
        mb, sb = fp.mean, fp.sum_sq
    else:
        mb, sb = fp.region_stats(peak, al.res.shape)
    vb = sb - n * mb * mb
    denom = math.sqrt(max(al.centred_sq, 0.0) * max(vb, 0.0))
    return float((dot - n * al.mean * mb) / denom) if denom > 0 else 0.0


def score(
    residual: np.ndarray | ResidualSpectrum,
    fp: FingerprintSpectrum,
    *,
    max_shift: int = 0,
    rotations: bool = True,
    exclude: int = EXCLUDE,
    surface: bool = False,
    turned: bool | None = None,
) -> MatchScore:
    """Score a residual against a fingerprint.

    Parameters
    ----------
    residual : ndarray, float32, shape (m, n), or ResidualSpectrum
        Pass a :class:`ResidualSpectrum` to reuse the residual's transforms
        across fingerprints.
    fp : FingerprintSpectrum
    max_shift : int, optional
        Search the peak within ``±max_shift`` rows and columns of the centre
        alignment (for cropped images); 0 reads the PCE at the centre
        alignment only (zero shift when the sizes agree), computed directly
        from the spectra (:func:`pce_direct`).
    rotations : bool, optional
        When the residual is portrait and the fingerprint landscape (or the
        reverse), try the residual rotated by 90 and by 270 degrees and keep
        the better one.
    exclude : int, optional
        Neighbourhood excluded from the energy.
    surface : bool, optional
        Also return the correlation surface around the peak (an inverse FFT;
        see :func:`correlation_surface` to ask only for matches).
    turned : bool or None, optional
        Whether the image's full frame is in the other orientation than the
        fingerprint's full frame (portrait against landscape). The frames,
        not a crop's shape, say which way an image was taken: a 520x512 crop
        of a landscape image is still landscape. None: judged from the
        residual's and the fingerprint's shapes.

    Returns
    -------
    MatchScore
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    probe = residual if isinstance(residual, ResidualSpectrum) else ResidualSpectrum(residual)
    (rows, cols), shape = probe.shape, fp.shape
    if turned is None:
        turned = rows != cols and ((rows > cols) != (shape[0] > shape[1]))
    mismatch = rotations and turned
    best = None
    total = 0
    for angle in (90, 270) if mismatch else (0,):
        value, ncc, peak, shift, n = _score_one(probe.aligned(angle, shape), fp, max_shift, exclude)
        total += n
        if best is None or value > best[0]:
            best = (value, ncc, peak, shift, angle)
    value, ncc, peak, shift, angle = best
    result = MatchScore(
        pce=value,
        ncc=ncc,
        peak=peak,
        shift=shift,
        n_shifts=total,
        p_fa=false_alarm_probability(value, total),
        rotation=angle,
    )
    return replace(result, surface=correlation_surface(probe, fp, result)) if surface else result


SURFACE = 41
"""Side of the correlation-surface patch kept for reports."""


def correlation_surface(
    residual: np.ndarray | ResidualSpectrum, fp: FingerprintSpectrum, match: MatchScore
) -> np.ndarray:
    """The correlation surface around a scored match's peak, for reports (one inverse FFT).

    Returns
    -------
    ndarray, float32, shape (SURFACE, SURFACE)
        Peak in the centre, in units of the noise standard deviation.
    """
    probe = residual if isinstance(residual, ResidualSpectrum) else ResidualSpectrum(residual)
    al = probe.aligned(match.rotation, fp.shape)
    return _surface(_irfft2(fp.spectrum * al.conj_spectrum, fp.shape), match.peak, match.pce)


def _surface(cc: np.ndarray, peak: tuple[int, int], pce: float) -> np.ndarray:
    """``SURFACE x SURFACE`` patch of ``cc`` around ``peak`` (circular), in units of the noise std."""
    half = SURFACE // 2
    rows = np.arange(peak[0] - half, peak[0] + half + 1) % cc.shape[0]
    cols = np.arange(peak[1] - half, peak[1] + half + 1) % cc.shape[1]
    patch = cc[np.ix_(rows, cols)].astype(np.float32)
    value = float(cc[peak])
    sigma = abs(value) / math.sqrt(abs(pce)) if pce and value else float(patch.std()) or 1.0
    return patch / np.float32(sigma)
