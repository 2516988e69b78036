"""Sensor-noise residual extraction (Lukáš, Fridrich & Goljan).

The residual of an image is what a wavelet denoiser removes from it. It
carries the multiplicative sensor pattern noise (PRNU) ``I·K`` together with
scene content and random noise. Linear artefacts shared by every camera of a
model (colour-filter-array interpolation, JPEG block grid) are then removed
by making each 2x2 CFA sub-lattice zero-mean along rows and columns and by
Wiener-filtering the Fourier spectrum.

The maths is done in float32 with OpenCV separable filters for the local
variances and a DWT on OpenCV filters (symmetric extension, as in MATLAB and
PyWavelets) (:mod:`spncli.wavelet`). Images up to
:data:`CONCURRENT_MAX_PIXELS` are denoised a channel per thread; larger ones in bands of rows with a
margin that covers the denoiser's whole reach (:func:`band_margin`), so each band's residual is
bit-identical to the whole image's and memory stays a few band-sized arrays per thread.

References
----------
.. [1] J. Lukáš, J. Fridrich, M. Goljan, "Digital camera identification from
   sensor pattern noise", IEEE Trans. Inf. Forensics Security 1(2), 205-214,
   2006. :doi:`10.1109/TIFS.2006.873602`
.. [2] M. K. Mihcak, I. Kozintsev, K. Ramchandran, "Spatially adaptive
   statistical modeling of wavelet image coefficients and its application to
   denoising", Proc. ICASSP 1999. :doi:`10.1109/ICASSP.1999.757535`
.. [3] M. Chen, J. Fridrich, M. Goljan, J. Lukáš, "Determining image origin
   and integrity using sensor noise", IEEE Trans. Inf. Forensics Security
   3(1), 74-90, 2008. :doi:`10.1109/TIFS.2007.916285`
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import pywt

from . import wavelet

__all__ = [
    "ResidualParams",
    "GREY_WEIGHTS",
    "wiener_shrink",
    "denoise_noise",
    "rgb_to_grey",
    "zero_mean_cfa",
    "wiener_dft",
    "ccs_half_spectrum",
    "postprocess",
    "sample_std",
    "noise_residual_channels",
    "extract_residual",
    "grey_residual",
    "set_channel_threads",
    "band_margin",
    "CONCURRENT_MAX_PIXELS",
    "BAND_SAMPLES",
    "NOISE_FLOOR",
    "rounding_variance",
]

_CHANNEL_THREADS = 1
CONCURRENT_MAX_PIXELS = 16_000_000
"""Largest plane whose channels :func:`grey_residual` denoises concurrently: each thread holds one
channel's wavelet working set (about five planes), so larger images are denoised in bands of rows
(:data:`BAND_SAMPLES`) by several threads, or whole, one channel at a time, by one."""

BAND_SAMPLES = 12_500_000
"""Most pixels in the core of one band of a large image (a 48 MP frame, 6000 rows of 8000, is four bands
of 1504 rows: the band count is rounded up to a multiple of the threads, so that they finish together).
Measured 2026-11-28, 2 cores, 48 MP grey residual from the 8-bit samples: 3.5-3.9 s in four bands (peak
748-779 MiB for the process), 4.4 s in six of 1056 rows (704-709 MiB), 3.8-3.9 s in three of 2000.

Each band also computes :func:`band_margin` rows on either side: 34 % more work at 1024 rows, 69 % at
512. Measured on 2 cores, 48 MP (8000x6000), grey residual with two band threads: 2.8-3.1 s (peak
1120-1198 MiB with the float pixels) in bands of 1024 rows, 3.0-3.4 s (1023-1030 MiB) in bands of 512,
against 4.8-6.1 s (1425 MiB) one channel at a time with OpenCV's own threads. With one thread (a
worker process) bands would only add that work, so the image is denoised whole, a channel at a time;
the result is the same bit for bit either way. At 12 MP bands and channel threads took the same time
(0.94 s), so images up to :data:`CONCURRENT_MAX_PIXELS` keep the channel threads."""


def rounding_variance(bit_depth: int) -> float:
    """The variance of rounding to ``bit_depth`` bits, on the 0..255 scale of the pixels: :data:`NOISE_FLOOR`
    for 8 bits; a 16-bit image's samples are 257 times finer."""
    step = 255.0 / (2**bit_depth - 1)
    return step * step / 12.0


NOISE_FLOOR = rounding_variance(8)
"""The variance of rounding to 8 bits on the 0..255 scale (1/12). Pixels that vary less than this over an
analysed region hold no sensor noise to measure (a uniform or clipped image), and a residual variance below it
is no measurement of noise: pooling caps its weights here, clustering refuses such an image. Real photographs'
residuals vary more (Dresden flat-fields at 512x512: 0.41 and above as published, 0.29 and above per channel
re-compressed at Q50 to Q5); a uniform JPEG's residual varies by 1e-13."""


def set_channel_threads(n: int) -> int:
    """Denoise up to ``n`` colour channels of an image at once (threads); returns the previous setting.

    The channels are independent and summed in a fixed order, so the residual is bit-identical to
    the one-at-a-time result. Each thread runs OpenCV single-threaded (measured on 2 cores, 6 MP: the
    whole residual takes 0.71 s one channel at a time, 0.49 s with two channel threads and 0.44 s with
    three; a whole ``spn extract`` process 1.50 s, 1.30 s and 1.36 s, best of 5, while each thread adds
    a channel's working set to the peak). Process-wide, like ``cv2.setNumThreads``: the in-process
    runner of a batch sets the core count (at most 3 are used); worker processes keep 1 (the cluster
    provides the parallelism).
    """
    global _CHANNEL_THREADS
    if n < 1:
        raise ValueError(f"channel threads must be >= 1, got {n}")
    previous, _CHANNEL_THREADS = _CHANNEL_THREADS, int(n)
    return previous

GREY_WEIGHTS = np.array([0.29893602, 0.58704307, 0.11402090], dtype=np.float32)
"""R, G, B weights of the grey conversion (MATLAB ``rgb2gray``), as in [3]_."""


@dataclass(frozen=True)
class ResidualParams:
    """Every setting of the residual extraction (recorded in each output).

    Attributes
    ----------
    sigma : float
        Assumed standard deviation of the noise on the 0..255 scale (σ=5 in
        [1]_ and the reference implementation).
    wavelet : str
        PyWavelets name of the wavelet (``"db4"``: the 8-tap Daubechies).
    levels : int
        Decomposition levels.
    windows : tuple of int
        Square window sizes whose minimum local variance estimates each
        coefficient's signal variance [2]_.
    zero_mean : bool
        Remove row and column means of each 2x2 CFA sub-lattice.
    wiener_dft : bool
        Wiener-filter the Fourier spectrum with the residual's own variance.
    """

    sigma: float = 5.0
    wavelet: str = "db4"
    levels: int = 4
    windows: tuple[int, ...] = (3, 5, 7, 9)
    zero_mean: bool = True
    wiener_dft: bool = True

    def __post_init__(self):
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be a finite number > 0, got {self.sigma}")
        if self.wavelet not in pywt.wavelist(kind="discrete"):
            raise ValueError(f"wavelet {self.wavelet!r} is not a discrete PyWavelets wavelet (e.g. 'db4', 'db8')")
        if not 1 <= self.levels <= 8:
            raise ValueError(f"levels must be in 1..8, got {self.levels}")
        if not self.windows or any(w < 1 or w % 2 == 0 for w in self.windows):
            raise ValueError(f"windows must be odd sizes >= 1, got {self.windows}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["windows"] = list(self.windows)
        return d


def wiener_shrink(x: np.ndarray, noise_var: float, windows=(3, 5, 7, 9), *, inplace: bool = False) -> np.ndarray:
    """Noise part of ``x`` under a locally adaptive Wiener model.

    The signal variance of each sample is the minimum over ``windows`` of
    ``max(0, local_mean(x²) - noise_var)`` (zero padding at the borders) [2]_,
    the local mean a direct separable filter, so that a sample's value does
    not depend on where the filtered region starts (a band of rows equals the
    whole image bit for bit);
    the noise estimate is ``x · noise_var / (signal_var + noise_var)``.

    Parameters
    ----------
    x : ndarray, float32, shape (M, N)
    noise_var : float
    windows : sequence of odd int
    inplace : bool, optional
        Write the result into ``x`` (float32, C-contiguous), saving one array.

    Returns
    -------
    ndarray, float32, shape (M, N)
    """
    energy = np.square(x, dtype=np.float32)
    local = None
    for w in windows:
        # a direct separable mean, not cv2.boxFilter: the box filter keeps running column sums whose rounding
        # depends on the region's first row, so a band of rows would differ from the whole image in rare pixels
        k = np.full(w, 1.0 / w, np.float32)
        m = cv2.sepFilter2D(energy, -1, k, k, borderType=cv2.BORDER_CONSTANT)
        local = m if local is None else np.minimum(local, m, out=local)
    # noise_var / (max(0, local - nv) + nv) == noise_var / max(local, nv)
    np.maximum(local, np.float32(noise_var), out=local)
    np.divide(np.float32(noise_var), local, out=local)
    if inplace:
        return np.multiply(x, local, out=x)
    local *= x
    return local


def denoise_noise(channel: np.ndarray, params: ResidualParams) -> np.ndarray:
    """Wavelet noise residual of one channel (the part a denoiser removes) [1]_.

    Parameters
    ----------
    channel : ndarray, float32, shape (M, N)
        Pixel values on the 0..255 scale.
    params : ResidualParams

    Returns
    -------
    ndarray, float32, shape (M, N)
        Detail coefficients replaced by their Wiener noise estimate, the
        approximation band zeroed, transformed back.
    """
    rows, cols = channel.shape
    coeffs = wavelet.wavedec2(np.ascontiguousarray(channel, dtype=np.float32), params.wavelet, params.levels)
    nv = params.sigma**2
    coeffs[0][...] = 0.0
    for level in coeffs[1:]:  # in place: the coefficients are this function's own arrays
        for d in level:
            wiener_shrink(d, nv, params.windows, inplace=True)
    out = wavelet.waverec2(coeffs, params.wavelet, consume=True)
    return np.ascontiguousarray(out[:rows, :cols], dtype=np.float32)


BAND_THREADS = 4
"""Most bands denoised at once (each thread holds about 180 MB at 48 MP besides the image): two on a
2-core machine, up to four where there are more cores."""


def band_margin(params: ResidualParams) -> int:
    """Rows beyond which a pixel cannot change :func:`denoise_noise`'s output, rounded up to ``2**levels``.

    The analysis and synthesis filters of length ``L`` reach ``(L - 1)(2**levels - 1)`` samples in
    all, and the local-variance window of the coarsest level ``(max(windows) // 2) 2**levels`` more
    [1]_ [2]_. A band cut this far from the rows it keeps, on a multiple of ``2**levels`` (so that every
    level decimates in the same phase as the whole image), gives bit-identical rows there (db4, 4
    levels, windows up to 9: 176 rows; one changed pixel was measured to reach 154).
    """
    length = pywt.Wavelet(params.wavelet).dec_len
    step = 1 << params.levels
    reach = (length - 1) * (step - 1) + (max(params.windows) // 2) * step
    return -(-reach // step) * step


def _banded_grey(pixels: np.ndarray, params: ResidualParams, threads: int) -> np.ndarray:
    """Grey residual of a large image in bands of rows, ``threads`` (two or more) bands at a time (see
    :func:`band_margin`; with one thread :func:`grey_residual` denoises the image whole).

    The fewest bands of at most :data:`BAND_SAMPLES` core samples, rounded up to a multiple of ``threads``
    so that the threads finish together; every band's rows are the whole image's bit for bit, so the
    result is the same whatever the layout and the core count (tested).
    """
    rows, cols = pixels.shape[:2]
    step = 1 << params.levels
    margin = band_margin(params)
    core = -(-max(BAND_SAMPLES // max(cols, 1), 1) // step) * step
    bands = -(-rows // core)
    bands = -(-bands // threads) * threads
    # at least twice the margin, so that a short, wide image is one band, not the same rows three times
    per_band = -(-rows // bands)
    core = max(2 * margin, -(-per_band // step) * step)
    grey = np.zeros((rows, cols), np.float32)

    def band(r0: int) -> None:
        r1 = min(rows, r0 + core)
        a, b = max(0, r0 - margin), min(rows, r1 + margin)
        out = grey[r0:r1]
        for c, weight in enumerate(GREY_WEIGHTS if pixels.shape[2] == 3 else (1.0,)):
            w = denoise_noise(pixels[a:b, :, c], params)
            cv2.scaleAdd(w[r0 - a : r1 - a], float(weight), out, dst=out)
            del w

    opencv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with ThreadPoolExecutor(threads, thread_name_prefix="spn-band") as pool:
            try:
                list(pool.map(band, range(0, rows, core)))
            except BaseException:  # e.g. out of memory: the bands still queued are not started
                pool.shutdown(cancel_futures=True)
                raise
    finally:
        cv2.setNumThreads(opencv_threads)
    return grey


def rgb_to_grey(x: np.ndarray) -> np.ndarray:
    """Weighted sum of the channels of an (M, N, 3) array; (M, N, 1) is squeezed."""
    if x.ndim == 2:
        return x
    if x.shape[2] == 1:
        return x[:, :, 0]
    return np.tensordot(x, GREY_WEIGHTS, axes=([2], [0])).astype(np.float32, copy=False)


def zero_mean_cfa(x: np.ndarray, *, copy: bool = True) -> np.ndarray:
    """Remove the column means, then the row means, of each 2x2 sub-lattice [3]_.

    Suppresses linear patterns that the colour-filter array and its
    interpolation leave in every camera of a model. Works in place on a copy,
    or on ``x`` itself (float32) with ``copy=False``.
    """
    y = np.array(x, dtype=np.float32, copy=True) if copy or x.dtype != np.float32 else x
    for r in (0, 1):
        for c in (0, 1):
            sub = y[r::2, c::2]
            sub -= sub.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
            sub -= sub.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    return y


def _ccs_edge_magnitudes(ccs: np.ndarray) -> np.ndarray:
    """|Y| of the half plane's columns 0 and N/2 (shape (M, 2)) from OpenCV's packed CCS spectrum (M, N even).

    CCS packs these two columns down the rows, so each is read whole.
    """
    m, n = ccs.shape
    edges = np.empty((m, 2), np.float32)
    for j, col in enumerate((ccs[:, 0], ccs[:, n - 1])):
        # column packing: Re Y(0); (Re, Im) Y(i) for i = 1..M/2-1; Re Y(M/2)
        mag = np.empty(m // 2 + 1, np.float32)
        mag[0], mag[-1] = abs(col[0]), abs(col[m - 1])
        mag[1:-1] = np.hypot(col[1 : m - 1 : 2], col[2 : m - 1 : 2])
        edges[: m // 2 + 1, j] = mag
        edges[m // 2 + 1 :, j] = mag[1:-1][::-1]  # Hermitian: |Y(M - i)| = |Y(i)|
    return edges


def _ccs_half_magnitude(ccs: np.ndarray, rows: slice, edges: np.ndarray) -> np.ndarray:
    """|Y| on ``rows`` of the half plane (N/2 + 1 columns) from a packed CCS spectrum and its
    :func:`_ccs_edge_magnitudes`."""
    n = ccs.shape[1]
    band = ccs[rows]
    half = np.empty((band.shape[0], n // 2 + 1), np.float32)
    # hypot, as for the edges: cv2.magnitude rounds some values differently by the arrays' alignment in memory,
    # so the same band gave results differing in the last bit from one call to the next
    np.abs(band[:, 1 : n - 1].view(np.complex64), out=half[:, 1 : n // 2])
    half[:, 0] = edges[rows, 0]
    half[:, n // 2] = edges[rows, 1]
    return half


def _hermitian(packed: np.ndarray) -> np.ndarray:
    """Full complex DFT of a real sequence from OpenCV's packed (CCS) form of it."""
    n = packed.shape[0]
    half = np.zeros(n // 2 + 1, np.complex64)
    half[0] = packed[0]
    m = (n - 1) // 2
    half.real[1 : m + 1] = packed[1 : 2 * m : 2]
    half.imag[1 : m + 1] = packed[2 : 2 * m + 1 : 2]
    if n % 2 == 0:
        half[n // 2] = packed[n - 1]
    full = np.empty(n, np.complex64)
    full[: half.shape[0]] = half
    full[half.shape[0] :] = np.conj(half[n - np.arange(half.shape[0], n)])  # X[n - k] = conj X[k]
    return full


def ccs_half_spectrum(packed: np.ndarray) -> np.ndarray:
    """The ``numpy.fft.rfft2`` half spectrum (complex64, (M, N // 2 + 1)) from OpenCV's packed 2-D real DFT."""
    rows, cols = packed.shape
    out = np.empty((rows, cols // 2 + 1), np.complex64)
    m = (cols - 1) // 2
    # CCS: columns 0 and N-1 (N even) hold packed real columns, the rest (Re, Im) pairs
    out[:, 1 : m + 1] = packed[:, 1 : 2 * m + 1].view(np.complex64)
    out[:, 0] = _hermitian(packed[:, 0])
    if cols % 2 == 0:
        out[:, cols // 2] = _hermitian(packed[:, cols - 1])
    return out


def _ccs_apply_edge_gains(ccs: np.ndarray, edge_gains: np.ndarray) -> None:
    """Multiply the packed columns 0 and N-1 of a CCS spectrum in place by the half plane's gains of its
    columns 0 and N/2 (``edge_gains``, shape (M, 2))."""
    m, n = ccs.shape
    for j, c in ((0, 0), (1, n - 1)):
        g = edge_gains[: m // 2 + 1, j]
        ccs[0, c] *= g[0]
        ccs[m - 1, c] *= g[-1]
        ccs[1 : m - 1, c] *= np.repeat(g[1:-1], 2)


GAIN_BAND_ROWS = 512
"""Rows of the half plane whose Wiener gain :func:`wiener_dft` computes at a time (with the window's
reach on either side), so that its temporaries are a few megabytes instead of a few copies of the
half plane (96 MB each at 48 MP). The gain is the whole plane's bit for bit (the local means are
direct separable filters, see :func:`wiener_shrink`; the magnitudes are ``hypot``, which rounds the
same wherever an array lies in memory)."""


def _gain(mag: np.ndarray, noise_var: float, windows) -> np.ndarray:
    """Wiener gain ``shrunk / |Y|`` of normalised magnitudes, 0 where ``|Y|`` is 0."""
    gain = wiener_shrink(mag, noise_var, windows)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(gain, mag, out=gain)
    gain[~np.isfinite(gain)] = 0.0
    return gain


def _ccs_wiener(spec: np.ndarray, noise_var: float, windows) -> None:
    """Apply the Wiener gain of :func:`wiener_dft` to a packed CCS spectrum in place, in bands of rows."""
    m, n = spec.shape
    scale = np.float32(1.0 / np.sqrt(m * n))
    edges = _ccs_edge_magnitudes(spec)
    edge_gains = np.empty((m, 2), np.float32)
    reach = max(windows) // 2
    rows = max(GAIN_BAND_ROWS, reach)  # the rows carried above a band are the previous band's last `reach`
    above = np.empty((0, n // 2 + 1), np.float32)  # magnitudes of the rows just above the band, before their gain
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        below = _ccs_half_magnitude(spec, slice(r0, min(m, r1 + reach)), edges)  # not yet filtered
        below *= scale
        mag = np.concatenate([above, below])
        a = r0 - above.shape[0]
        above = below[max(0, r1 - r0 - reach) : r1 - r0].copy()
        gain = _gain(mag, noise_var, windows)[r0 - a : r1 - a]
        del mag, below
        inner = gain[:, 1 : n // 2]
        spec[r0:r1, 1 : n - 1 : 2] *= inner  # real and imaginary parts (the edge columns are packed by rows)
        spec[r0:r1, 2 : n - 1 : 2] *= inner
        edge_gains[r0:r1] = gain[:, [0, n // 2]]
    _ccs_apply_edge_gains(spec, edge_gains)


def wiener_dft(x: np.ndarray, sigma: float, windows=(3, 5, 7, 9), *, spectrum: bool = False, inplace: bool = False):
    """Wiener-filter the Fourier spectrum of ``x`` to flatten periodic peaks [3]_.

    The normalised spectrum magnitude ``|F|/sqrt(MN)`` is treated as a signal
    in white noise of variance ``sigma²``; its noise part (see
    :func:`wiener_shrink`) replaces the magnitude, phases are kept. Peaks
    (JPEG grid, CFA periodicities) are attenuated, a flat spectrum passes.
    The gain is estimated on the half plane of the real spectrum.

    Parameters
    ----------
    x : ndarray, float32, shape (M, N)
    sigma : float
        Usually the standard deviation of ``x`` itself.
    spectrum : bool, optional
        Also return the filtered half spectrum, which is the transform of the
        result: a caller who correlates the result (:class:`spncli.pce.ResidualSpectrum`)
        need not transform it again.
    inplace : bool, optional
        Transform ``x`` itself (float32, C-contiguous, even sides) instead of a copy: its values are lost.

    Returns
    -------
    ndarray, float32, shape (M, N)
        Or ``(result, half)`` with ``spectrum``: ``half`` is ``numpy.fft.rfft2`` of the
        result (complex64, shape (M, N // 2 + 1)), up to the result's float32 rounding.
    """
    if sigma <= 0:
        zeros = np.zeros_like(x, dtype=np.float32)
        return (zeros, np.zeros((x.shape[0], x.shape[1] // 2 + 1), np.complex64)) if spectrum else zeros
    own = inplace and x.dtype == np.float32 and x.flags.c_contiguous
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[0] % 2 == 0 and x.shape[1] % 2 == 0:  # OpenCV's packed real transform: the fastest here
        spec = cv2.dft(x, dst=x) if own else cv2.dft(x)
        _ccs_wiener(spec, float(sigma) ** 2, windows)
        half = ccs_half_spectrum(spec) if spectrum else None
        y = cv2.dft(spec, dst=spec, flags=cv2.DFT_INVERSE | cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)  # in place
        return (y, half) if spectrum else y
    spec = np.fft.rfft2(x.astype(np.float64))
    mag = np.abs(spec).astype(np.float32)
    mag *= np.float32(1.0 / np.sqrt(x.size))
    spec *= _gain(mag, float(sigma) ** 2, windows)
    del mag
    y = np.fft.irfft2(spec, s=x.shape).astype(np.float32)
    return (y, spec.astype(np.complex64)) if spectrum else y


def sample_std(x: np.ndarray, ddof: int = 1, rows: int = 256) -> float:
    """Standard deviation of ``x`` (divisor ``x.size - ddof``), accumulated in float64 ``rows`` rows at
    a time: no temporary of ``x``'s size (192 MB at 48 MP for ``numpy.std`` of float32)."""
    flat = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)
    n = flat.size
    if n - ddof <= 0:
        return float("nan")
    mean = sum(float(np.sum(flat[i : i + rows], dtype=np.float64)) for i in range(0, flat.shape[0], rows)) / n
    total = 0.0
    for i in range(0, flat.shape[0], rows):
        d = flat[i : i + rows].astype(np.float64)
        d -= mean
        total += float(np.dot(d.ravel(), d.ravel()))
    return math.sqrt(total / (n - ddof))


def postprocess(x: np.ndarray, params: ResidualParams, *, inplace: bool = False, spectrum: bool = False):
    """Grey residual or fingerprint -> zero-mean CFA -> Wiener DFT, as ``params`` say.

    With ``inplace`` the zero-mean step overwrites ``x`` (for a caller's own temporary). With
    ``spectrum`` returns ``(result, half)``: the result's half spectrum where the Wiener filter
    computed it (:func:`wiener_dft`), else None.
    """
    half = None
    if params.zero_mean:
        x = zero_mean_cfa(x, copy=not inplace)
    if params.wiener_dft:  # in place on the zero-mean step's own copy, or on the caller's temporary
        own = inplace or params.zero_mean
        x = wiener_dft(x, sample_std(x), params.windows, spectrum=spectrum, inplace=own)
        if spectrum:
            x, half = x
    x = np.ascontiguousarray(x, dtype=np.float32)
    return (x, half) if spectrum else x


def noise_residual_channels(pixels: np.ndarray, params: ResidualParams = ResidualParams()):
    """Per-channel wavelet residuals of an image, one channel at a time.

    Parameters
    ----------
    pixels : ndarray, float32, shape (M, N, C)
    params : ResidualParams

    Yields
    ------
    ndarray, float32, shape (M, N)
        The residual of each channel in turn (so that callers can reduce
        them without holding all channels at once).
    """
    for c in range(pixels.shape[2]):
        yield denoise_noise(pixels[:, :, c], params)


def extract_residual(pixels: np.ndarray, params: ResidualParams = ResidualParams(), *, spectrum: bool = False):
    """Noise residual ``W`` of an image, ready for correlation with a fingerprint.

    Parameters
    ----------
    pixels : ndarray, float32 or uint8, shape (M, N, C)
        Pixel values on the 0..255 scale, C = 1 or 3 (RGB); 8-bit samples are converted a channel
        (or a band of rows) at a time, with the same result.
    params : ResidualParams

    spectrum : bool, optional
        Also return the residual's half spectrum where the Wiener step made it (see :func:`postprocess`).

    Returns
    -------
    ndarray, float32, shape (M, N)
        Grey residual after CFA zero-mean and spectral Wiener filtering
        (with ``spectrum``: ``(residual, half spectrum or None)``).
    """
    return postprocess(grey_residual(pixels, params), params, inplace=True, spectrum=spectrum)


def grey_residual(pixels: np.ndarray, params: ResidualParams = ResidualParams()) -> np.ndarray:
    """Grey wavelet residual before post-processing, channels reduced as they come.

    Parameters
    ----------
    pixels : ndarray, float32 or uint8, shape (M, N, C), C = 1 or 3
        On the 0..255 scale; 8-bit samples are converted a channel (or a band of rows) at a time.
    params : ResidualParams

    Returns
    -------
    ndarray, float32, shape (M, N)
    """
    if pixels.shape[0] * pixels.shape[1] > CONCURRENT_MAX_PIXELS and _CHANNEL_THREADS > 1:
        return _banded_grey(pixels, params, min(_CHANNEL_THREADS, BAND_THREADS))
    if pixels.shape[2] == 1:
        return denoise_noise(pixels[:, :, 0], params)
    grey = np.zeros(pixels.shape[:2], np.float32)
    threads = min(_CHANNEL_THREADS, 3)
    if threads > 1:
        opencv_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            with ThreadPoolExecutor(threads, thread_name_prefix="spn-channel") as pool:
                # map() yields in channel order: the same sum, in the same order, as one at a time
                residuals = pool.map(lambda c: denoise_noise(pixels[:, :, c], params), range(3))
                for weight in GREY_WEIGHTS:
                    w = next(residuals)
                    cv2.scaleAdd(w, float(weight), grey, dst=grey)
                    del w
        finally:
            cv2.setNumThreads(opencv_threads)
        return grey
    for c, weight in enumerate(GREY_WEIGHTS):  # not zip(): its reused tuple would hold the last channel's residual
        w = denoise_noise(pixels[:, :, c], params)
        cv2.scaleAdd(w, float(weight), grey, dst=grey)
        del w  # not held while the next channel is computed
    return grey
