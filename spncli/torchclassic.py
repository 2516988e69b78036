"""The classic PRNU pipeline in torch, for a CUDA GPU: residual, fingerprint, batched PCE.

The same maths as the numpy reference path (:mod:`spncli.residual`,
:mod:`spncli.wavelet`, :mod:`spncli.fingerprint`, :mod:`spncli.pce`), written
once for any torch device; ``--device cuda`` uses it (:mod:`spncli.device`).
The numpy path stays the reference: this module is tested against it on
Dresden images (residuals to float32 rounding, PCE within 1% relative).

* Residual [1]_: a 4-level DWT with symmetric extension, laid out like
  ``pywt.wavedec2`` (polyphase convolutions on symmetrically indexed
  copies, analysis and synthesis), all colour channels at once;
  the approximation band zeroed and each detail band replaced by its locally
  adaptive Wiener noise estimate [2]_ (minimum over 3, 5, 7, 9 windows of the
  local energy, zero padding counted; separable sums of shifted slices);
  reconstruction; grey conversion; each 2x2 CFA sub-lattice made zero-mean
  along columns then rows; the Fourier magnitude Wiener-filtered with the
  residual's own standard deviation [3]_.
* Fingerprint [3]_: the ML estimate ``K = Σ W I / Σ I²`` per channel,
  saturated pixels weight 0, the running sums kept on the device.
* PCE [4]_: one residual against many fingerprints at once. At zero shift no
  correlation surface is formed: the energy by Parseval's theorem and the
  11x11 neighbourhood by a partial inverse DFT (batched matrix products);
  with a shift search, the surface of each camera by an inverse FFT.
  Rotations (90 and 270 degrees) as in :func:`spncli.pce.score`.

Floating-point: TF32 is switched off for the convolutions and products here
(it would cost three decimal digits), and restored afterwards.

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
.. [4] M. Goljan, J. Fridrich, T. Filler, "Large scale test of sensor
   fingerprint camera identification", Proc. SPIE 7254, Media Forensics and
   Security, 72540I, 2009. :doi:`10.1117/12.805701`
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import pywt
import torch
import torch.nn.functional as F

from .fingerprint import FingerprintAccumulator
from .pce import EXCLUDE, FingerprintSpectrum, MatchScore, _align, _candidates, false_alarm_probability
from .residual import GREY_WEIGHTS, ResidualParams

__all__ = [
    "cuda_available",
    "backend_name",
    "wavedec2",
    "waverec2",
    "wiener_shrink",
    "denoise_noise",
    "grey_residual",
    "zero_mean_cfa",
    "wiener_dft",
    "postprocess",
    "extract_residual",
    "to_device",
    "to_numpy",
    "TorchFingerprintAccumulator",
    "DeviceSpectra",
    "score_many",
]

CHUNK_BYTES = 1 << 30
"""Bytes of spectrum products formed at once when scoring many cameras (1 GiB)."""


def cuda_available() -> bool:
    """Whether torch sees a usable CUDA device."""
    return bool(torch.cuda.is_available())


def backend_name(device: str | torch.device) -> str:
    """``"torch 2.x on NVIDIA H100 ..."`` or ``"torch 2.x on CPU"``."""
    dev = torch.device(device)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    return f"torch {torch.__version__} on {where}"


@contextmanager
def _exact():
    """TF32 off for convolutions and matrix products (restored afterwards)."""
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


def to_device(x, device, dtype=torch.float32) -> torch.Tensor:
    """A numpy array or tensor as a ``dtype`` tensor on ``device``."""
    return x.to(device=device, dtype=dtype) if isinstance(x, torch.Tensor) else torch.as_tensor(
        np.ascontiguousarray(x), dtype=dtype, device=device
    )


# --- wavelet transform -------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _filters(wavelet: str) -> tuple[np.ndarray, ...]:
    w = pywt.Wavelet(wavelet)
    if w.dec_len % 2:
        raise ValueError(f"wavelet {wavelet!r} has an odd filter length; use an orthogonal one such as 'db4'")
    return tuple(np.asarray(f, dtype=np.float64) for f in (w.dec_lo, w.dec_hi, w.rec_lo, w.rec_hi))


def _bank(wavelet: str, like: torch.Tensor) -> dict:
    """Polyphase kernels of ``wavelet`` as conv weights, on ``like``'s device and dtype.

    Analysis ``a[k] = Σ_m f[m] x_sym[2k + 1 - m]`` is a correlation with the
    reversed filter at stride 2: split into the even and odd samples it is an
    unstrided correlation of two channels with the even and odd taps.
    Synthesis ``y[2q + p] = Σ_o g[L - 2 + p - 2o] c[q + o]`` is, for each
    parity ``p``, a "valid" correlation with every other tap of ``g``.
    """
    dlo, dhi, rlo, rhi = _filters(wavelet)
    length, half = len(dlo), len(dlo) // 2
    dec = np.stack([dlo[::-1], dhi[::-1]])  # (2 bands, L)
    dec = np.stack([dec[:, 0::2], dec[:, 1::2]], axis=1)  # (2 bands, 2 phases, L/2)
    rec = np.array([[g[length - 2 + p :: -2][:half] for g in (rlo, rhi)] for p in (0, 1)])  # (parity, lo/hi, L/2)
    kernels = {
        "dec_cols": dec.reshape(2, 2, 1, half),
        "dec_rows": np.tile(dec, (2, 1, 1)).reshape(4, 2, half, 1),
        "rec_rows": np.tile(rec, (2, 1, 1)).reshape(4, 2, half, 1),
        "rec_cols": rec.reshape(2, 2, 1, half),
    }
    return {"L": length} | {
        k: torch.as_tensor(np.ascontiguousarray(v), dtype=like.dtype, device=like.device) for k, v in kernels.items()
    }


def _symmetric_phases(n: int, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the even and odd samples of ``x_sym[2 - L .. n + L - 2]`` (half-sample symmetric,
    repeated for short signals; one more sample where the count is odd)."""
    i = torch.arange(2 - length, n + length - 1 + (n + 1) % 2, device=device) % (2 * n)
    i = torch.where(i >= n, 2 * n - 1 - i, i)
    return i[0::2], i[1::2]


def _phases(x: torch.Tensor, dim: int, length: int) -> torch.Tensor:
    """(B, C, ...) -> (B, 2C, ...): each channel's even and odd symmetric-extended samples along ``dim``."""
    even, odd = _symmetric_phases(x.shape[dim], length, x.device)
    b, c = x.shape[:2]
    both = torch.stack([x.index_select(dim, even), x.index_select(dim, odd)], dim=2)
    return both.reshape(b, 2 * c, *both.shape[3:])


def _analysis(x: torch.Tensor, bank: dict) -> tuple[torch.Tensor, ...]:
    """One level on (B, M, N): ``a[k] = Σ_m f[m] x_sym[2k + 1 - m]`` along columns, then rows."""
    length = bank["L"]
    rows, cols = x.shape[1:]
    lohi = F.conv2d(_phases(x.unsqueeze(1), 3, length), bank["dec_cols"])[..., : (cols + length - 1) // 2]
    bands = F.conv2d(_phases(lohi, 2, length), bank["dec_rows"], groups=2)[:, :, : (rows + length - 1) // 2]
    return bands[:, 0], bands[:, 1], bands[:, 2], bands[:, 3]  # ll, lh, hl, hh


def _synthesis(a, lh, hl, hh, bank: dict) -> torch.Tensor:
    """Inverse of one level: ``y[2k + m - L + 2] += c[k] g[m]`` (the valid part), rows then columns."""
    b = a.shape[0]
    parts = F.conv2d(torch.stack([a, lh, hl, hh], dim=1), bank["rec_rows"], groups=2)  # lo even/odd, hi even/odd
    n, w = parts.shape[2:]
    lohi = parts.reshape(b, 2, 2, n, w).transpose(2, 3).reshape(b, 2, 2 * n, w)
    parts = F.conv2d(lohi, bank["rec_cols"])  # (B, 2 parities, H, n)
    h, n = parts.shape[2:]
    return parts.permute(0, 2, 3, 1).reshape(b, h, 2 * n)


def wavedec2(x: torch.Tensor, wavelet: str, level: int) -> list:
    """Multilevel 2-D DWT (symmetric extension) of a batch (B, M, N), laid out like ``pywt.wavedec2``.

    Returns
    -------
    list
        ``[cA_n, (cH_n, cV_n, cD_n), ..., (cH_1, cV_1, cD_1)]``, each (B, m, n).
    """
    bank = _bank(wavelet, x)
    a, details = x, []
    for _ in range(level):
        a, lh, hl, hh = _analysis(a, bank)
        details.append((lh, hl, hh))
    return [a] + details[::-1]


def waverec2(coeffs: list, wavelet: str) -> torch.Tensor:
    """Inverse of :func:`wavedec2`; trims like ``pywt.waverec2``."""
    a = coeffs[0]
    bank = _bank(wavelet, a)
    for lh, hl, hh in coeffs[1:]:
        a = _synthesis(a[:, : lh.shape[1], : lh.shape[2]], lh, hl, hh, bank)
    return a


# --- residual ----------------------------------------------------------------------------------


def _box_means(energy: torch.Tensor, windows) -> torch.Tensor:
    """Minimum over ``windows`` of the w x w local mean of (B, M, N), zero padding counted.

    Separable, and the windows nested: the row sums of width w grow from
    those of the next smaller window by two shifted slices; each window's
    column sums are then w slices (far fewer passes than a pooling per window).
    """
    rows, cols = energy.shape[1:]
    h = max(windows) // 2
    padded = F.pad(energy, (h, h, h, h))
    local = row = None
    done = 0
    for w in sorted(windows):
        k = w // 2
        if row is None:
            row = padded[:, :, h - k : h - k + cols].clone()
            for o in range(-k + 1, k + 1):
                row += padded[:, :, h + o : h + o + cols]
        else:
            for o in range(done + 1, k + 1):
                row += padded[:, :, h - o : h - o + cols]
                row += padded[:, :, h + o : h + o + cols]
        done = k
        col = row[:, h - k : h - k + rows].clone()
        for o in range(-k + 1, k + 1):
            col += row[:, h + o : h + o + rows]
        col *= 1.0 / (w * w)
        local = col if local is None else torch.minimum(local, col, out=local)
    return local


def wiener_shrink(x: torch.Tensor, noise_var: float, windows=(3, 5, 7, 9)) -> torch.Tensor:
    """Noise part of ``x`` (B, M, N): ``x · nv / max(min_w local_mean_w(x²), nv)``, zero padding [2]_."""
    local = _box_means(x * x, windows)
    return x * (noise_var / local.clamp_min_(noise_var))


def denoise_noise(channels: torch.Tensor, params: ResidualParams) -> torch.Tensor:
    """Wavelet noise residual of each channel of a batch (B, M, N) on the 0..255 scale [1]_."""
    rows, cols = channels.shape[-2:]
    coeffs = wavedec2(channels, params.wavelet, params.levels)
    nv = params.sigma**2
    coeffs[0] = torch.zeros_like(coeffs[0])
    coeffs[1:] = [tuple(wiener_shrink(d, nv, params.windows) for d in level) for level in coeffs[1:]]
    return waverec2(coeffs, params.wavelet)[:, :rows, :cols]


def _channels(pixels, device, dtype) -> torch.Tensor:
    """(M, N, C) pixels (numpy or tensor) as a (C, M, N) tensor on ``device``."""
    x = to_device(pixels, device, dtype)
    return x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).contiguous()


def _grey(channels: torch.Tensor) -> torch.Tensor:
    if channels.shape[0] == 1:
        return channels[0]
    weights = torch.as_tensor(GREY_WEIGHTS, dtype=channels.dtype, device=channels.device)
    return torch.tensordot(weights, channels, dims=([0], [0]))


def grey_residual(pixels, params: ResidualParams = ResidualParams(), device="cuda", dtype=torch.float32):
    """Grey wavelet residual before post-processing, as :func:`spncli.residual.grey_residual`.

    Parameters
    ----------
    pixels : ndarray or tensor, shape (M, N, C), C = 1 or 3
    params : ResidualParams
    device : str or torch.device
    dtype : torch.dtype
        float32 (as the numpy path) or float64.

    Returns
    -------
    tensor, shape (M, N), on ``device``
    """
    with _exact():
        return _grey(denoise_noise(_channels(pixels, device, dtype), params))


def zero_mean_cfa(x: torch.Tensor) -> torch.Tensor:
    """Column means, then row means, of each 2x2 sub-lattice removed (a copy) [3]_."""
    y = x.clone()
    for r in (0, 1):
        for c in (0, 1):
            sub = y[r::2, c::2]
            sub -= sub.mean(dim=0, keepdim=True, dtype=torch.float64).to(y.dtype)
            sub -= sub.mean(dim=1, keepdim=True, dtype=torch.float64).to(y.dtype)
    return y


def wiener_dft(x: torch.Tensor, sigma: float, windows=(3, 5, 7, 9)) -> torch.Tensor:
    """Fourier magnitude ``|F|/sqrt(MN)`` replaced by its Wiener noise part, phases kept [3]_."""
    if sigma <= 0:
        return torch.zeros_like(x)
    spec = torch.fft.rfft2(x)
    mag = spec.abs() * (1.0 / math.sqrt(x.numel()))
    gain = wiener_shrink(mag.unsqueeze(0), float(sigma) ** 2, windows)[0]
    gain = torch.where(mag > 0, gain / mag, torch.zeros_like(mag))
    return torch.fft.irfft2(spec * gain, s=tuple(x.shape))


def postprocess(x: torch.Tensor, params: ResidualParams) -> torch.Tensor:
    """Zero-mean CFA, then Wiener DFT with the residual's own standard deviation, as ``params`` say."""
    with _exact():
        if params.zero_mean:
            x = zero_mean_cfa(x)
        if params.wiener_dft:
            x = wiener_dft(x, float(x.to(torch.float64).std()), params.windows)
        return x


def extract_residual(pixels, params: ResidualParams = ResidualParams(), device="cuda", dtype=torch.float32):
    """Noise residual ``W`` of an image, as :func:`spncli.residual.extract_residual`, on ``device``.

    Parameters
    ----------
    pixels : ndarray or tensor, shape (M, N, C)
        On the 0..255 scale, C = 1 or 3 (RGB).

    Returns
    -------
    tensor, shape (M, N), ``dtype``, on ``device``
    """
    return postprocess(grey_residual(pixels, params, device, dtype), params)


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """A float32 numpy copy on the host."""
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())


# --- fingerprint -------------------------------------------------------------------------------


class TorchFingerprintAccumulator(FingerprintAccumulator):
    """Running sums of the ML fingerprint estimator on a torch device [3]_.

    Same interface and results as :class:`spncli.fingerprint.FingerprintAccumulator`
    (whose size check it shares): ``K = Σ W I / Σ I²`` per channel,
    saturated pixels weight 0; the sums stay on ``device``.
    """

    def __init__(self, params: ResidualParams = ResidualParams(), device="cuda", dtype=torch.float32):
        super().__init__(params)
        self.device, self.dtype = torch.device(device), dtype

    def add(self, pixels: np.ndarray, saturation: float = 255.0) -> None:
        """Add one image (M, N, C) on the 0..255 scale, in sensor orientation."""
        self.check(pixels)
        with _exact():
            x = _channels(pixels, self.device, self.dtype)
            if self._num is None:
                self.shape = tuple(pixels.shape)
                self._num, self._den = torch.zeros_like(x), torch.zeros_like(x)
            w = denoise_noise(x, self.params)
            sat = x >= float(np.float32(saturation - 0.5))  # as spncli.fingerprint.saturation_mask
            weighted = torch.where(sat, torch.zeros_like(x), x)
            self._num += w * weighted
            self._den += weighted * weighted
            self.saturated_fraction.append(int(sat.sum()) / x.numel())
        self.count += 1

    def finalize(self) -> np.ndarray:
        """The post-processed grey fingerprint ``K`` (float32, host)."""
        if self.count == 0:
            raise ValueError("no image was added to the fingerprint")
        with _exact():
            k = torch.where(self._den > 0, self._num / self._den, torch.zeros_like(self._num))
            return to_numpy(postprocess(_grey(k), self.params))


# --- batched PCE -------------------------------------------------------------------------------


class DeviceSpectra:
    """Fingerprint spectra uploaded to a device once, kept while they fit ``budget`` bytes.

    Keyed by the :class:`spncli.pce.FingerprintSpectrum` object (weakly): when
    the host drops a transform (:class:`spncli.spectra.SpectrumCache` over its
    budget), its device copy goes with it.
    """

    def __init__(self, device, budget: int | None = None):
        self.device = torch.device(device)
        if budget is None and self.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self.device)
            budget = int(free * 0.5)
        self.budget = budget
        self.held = weakref.WeakKeyDictionary()
        self.held_bytes = 0
        self.uploads = 0

    def get(self, fp: FingerprintSpectrum) -> torch.Tensor:
        hit = self.held.get(fp)
        if hit is not None:
            return hit
        t = torch.as_tensor(fp.spectrum, device=self.device)
        self.uploads += 1
        size = t.numel() * t.element_size()
        if self.budget is None or self.held_bytes + size <= self.budget:
            self.held[fp] = t
            self.held_bytes += size
            weakref.finalize(fp, self._release, size)
        return t

    def _release(self, size: int) -> None:
        self.held_bytes -= size


_DEVICE_SPECTRA: dict[str, DeviceSpectra] = {}


def device_spectra(device) -> DeviceSpectra:
    """This process's :class:`DeviceSpectra` for ``device`` (created on first use)."""
    key = str(torch.device(device))
    if key not in _DEVICE_SPECTRA:
        _DEVICE_SPECTRA[key] = DeviceSpectra(key)
    return _DEVICE_SPECTRA[key]


@lru_cache(maxsize=64)
def _exp_cached(n: int, shifts: tuple[int, ...], half: bool, device: str, dtype: torch.dtype) -> torch.Tensor:
    """``exp(+2πi k s / n)`` (frequencies by shifts); ``half``: the half spectrum's, mirrors weighted 2."""
    k = np.arange(n // 2 + 1 if half else n, dtype=np.int64)
    e = np.exp(1j * (np.outer(k, np.array(shifts, np.int64)) % n) * (2.0 * np.pi / n))
    if half:
        e[1 : (n + 1) // 2] *= 2.0
    return torch.as_tensor(e, dtype=dtype, device=device)


def _neighbourhood(peak, shape, exclude) -> tuple[np.ndarray, np.ndarray]:
    half = exclude // 2
    return tuple(np.unique(np.arange(p - half, p + half + 1) % n) for p, n in zip(peak, shape))


def _signed(value: float, total: float, near: float, count: int) -> float:
    energy = (total - near) / max(count, 1)
    return 0.0 if energy <= 0 else math.copysign(value * value / energy, value)


def _direct(products: torch.Tensor, shape, peak, exclude) -> list[tuple[float, float]]:
    """(PCE, C[peak]) at ``peak`` of each (C, M, N//2+1) product, by Parseval and a partial inverse DFT."""
    rows, cols = shape
    ri, ci = _neighbourhood(peak, shape, exclude)
    dev = str(products.device)
    col_exp = _exp_cached(cols, tuple(int(c) for c in ci), True, dev, torch.complex64)
    row_exp = _exp_cached(rows, tuple(int(r) for r in ri), False, dev, torch.complex128)
    partial = torch.matmul(products, col_exp)  # (C, M, J)
    near = torch.einsum("mi,cmj->cij", row_exp, partial.to(torch.complex128)).real / (rows * cols)
    power = products.real.square() + products.imag.square()
    total = 2.0 * power.sum(dim=(1, 2), dtype=torch.float64) - power[:, :, 0].sum(dim=1, dtype=torch.float64)
    if cols % 2 == 0:  # the Nyquist column stands only for itself
        total -= power[:, :, -1].sum(dim=1, dtype=torch.float64)
    total /= rows * cols
    at = (int(np.searchsorted(ri, peak[0])), int(np.searchsorted(ci, peak[1])))
    values = near[:, at[0], at[1]].tolist()
    nears = near.square().sum(dim=(1, 2)).tolist()
    count = rows * cols - len(ri) * len(ci)
    return [(_signed(v, t, n, count), v) for v, t, n in zip(values, total.tolist(), nears)]


def _searched(products: torch.Tensor, shape, rows: np.ndarray, cols: np.ndarray, exclude) -> list[tuple]:
    """(PCE, C[peak], peak, at) of each product: the best of the searched shifts on its surface."""
    cc = torch.fft.irfft2(products, s=tuple(shape))  # (C, M, N)
    r_idx = torch.as_tensor(rows % shape[0], device=cc.device)
    c_idx = torch.as_tensor(cols % shape[1], device=cc.device)
    window = cc.index_select(1, r_idx).index_select(2, c_idx).flatten(1)
    best = window.argmax(dim=1).tolist()
    totals = cc.square().sum(dim=(1, 2), dtype=torch.float64).tolist()
    out = []
    for i, flat in enumerate(best):
        a, b = divmod(flat, len(cols))
        at = (int(rows[a]), int(cols[b]))
        peak = (at[0] % shape[0], at[1] % shape[1])
        ri, ci = _neighbourhood(peak, shape, exclude)
        patch = cc[i][torch.as_tensor(ri, device=cc.device)][:, torch.as_tensor(ci, device=cc.device)]
        near = float(patch.to(torch.float64).square().sum())
        value = float(cc[i, peak[0], peak[1]])
        out.append((_signed(value, totals[i], near, cc[i].numel() - len(ri) * len(ci)), value, peak, at))
    return out


def _ncc(res_mean: float, res_centred: float, n: int, fp: FingerprintSpectrum, peak, size, dot: float) -> float:
    """Mean-removed normalised correlation of the residual with the fingerprint region at ``peak``."""
    if tuple(size) == tuple(fp.shape) and tuple(peak) == (0, 0):
        mb, sb = fp.mean, fp.sum_sq
    else:
        mb, sb = fp.region_stats(peak, size)
    denom = math.sqrt(max(res_centred, 0.0) * max(sb - n * mb * mb, 0.0))
    return float((dot - n * res_mean * mb) / denom) if denom > 0 else 0.0


class _Probe:
    """A residual on the device, rotated and aligned per (rotation, fingerprint shape), spectra kept."""

    def __init__(self, residual, device):
        self.residual = to_device(residual, device)
        self.shape = tuple(self.residual.shape)
        self._aligned: dict = {}

    def aligned(self, rotation: int, shape):
        key = (rotation, tuple(shape))
        if key not in self._aligned:
            t, expected = _align(torch.rot90(self.residual, rotation // 90, dims=(0, 1)), key[1])
            conj = torch.fft.rfft2(t, s=key[1]).conj()
            mean = float(t.to(torch.float64).mean())
            centred = float(t.to(torch.float64).square().sum()) - t.numel() * mean * mean
            self._aligned[key] = (tuple(t.shape), expected, conj, mean, centred)
        return self._aligned[key]


def score_many(
    residual: np.ndarray,
    cameras: Sequence[str],
    spectra: Mapping[str, FingerprintSpectrum],
    turned: Mapping[str, bool | None] | None = None,
    *,
    device="cuda",
    max_shift: int = 0,
    rotations: bool = True,
    exclude: int = EXCLUDE,
    store: DeviceSpectra | None = None,
) -> dict[str, MatchScore]:
    """Score one residual against many fingerprints on ``device``, as :func:`spncli.pce.score` does each.

    Cameras are taken in chunks of about :data:`CHUNK_BYTES` of spectrum
    products; within a chunk those of one shape and orientation are scored
    together (one batched product; at zero shift the PCE by Parseval and a
    partial inverse DFT, else the best searched shift on each surface).

    Parameters
    ----------
    residual : ndarray or tensor, float32, shape (m, n)
        A tensor already on ``device`` is used in place (no transfer).
    cameras : sequence of str
        Camera ids, in order; ``spectra[camera]`` is read once per chunk.
    spectra : mapping of str to FingerprintSpectrum
    turned : mapping of str to bool or None, optional
        Whether the image's frame is in the other orientation than each
        fingerprint's (None: judged from the shapes).
    device : str or torch.device
    max_shift, rotations, exclude
        As :func:`spncli.pce.score`.
    store : DeviceSpectra, optional
        Where the fingerprint spectra live on the device (default: this process's).

    Returns
    -------
    dict of str to MatchScore
        Without surfaces (compute those with :func:`spncli.pce.correlation_surface` for matches).
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    device = torch.device(device)
    store = store or device_spectra(device)
    probe = _Probe(residual, device)
    turned = turned or {}
    out: dict[str, MatchScore] = {}
    per = max(1, CHUNK_BYTES // max(1, probe.residual.numel() * 4))
    with _exact():
        for start in range(0, len(cameras), per):
            groups: dict = {}
            for camera in cameras[start : start + per]:
                fp = spectra[camera]
                t = turned.get(camera)
                if t is None:
                    (r, c), (fr, fc) = probe.shape, fp.shape
                    t = r != c and ((r > c) != (fr > fc))
                angles = (90, 270) if rotations and t else (0,)
                groups.setdefault((tuple(fp.shape), angles), []).append((camera, fp))
            for (shape, angles), members in groups.items():
                stacked = torch.stack([store.get(fp) for _, fp in members])
                best: dict = {}
                for angle in angles:
                    size, expected, conj, mean, centred = probe.aligned(angle, shape)
                    rows, cols = _candidates(expected, size, shape, max_shift)
                    products = stacked * conj
                    if len(rows) * len(cols) == 1:
                        at = (int(expected[0]), int(expected[1]))
                        peak = (at[0] % shape[0], at[1] % shape[1])
                        found = [(p, v, peak, at) for p, v in _direct(products, shape, peak, exclude)]
                    else:
                        found = _searched(products, shape, rows, cols, exclude)
                    del products
                    for (camera, fp), (value, dot, peak, at) in zip(members, found):
                        n_shifts = len(rows) * len(cols)
                        prev = best.get(camera)
                        total = n_shifts + (prev[-1] if prev else 0)
                        if prev is None or value > prev[0]:
                            ncc = _ncc(mean, centred, size[0] * size[1], fp, peak, size, dot)
                            shift = (at[0] - expected[0], at[1] - expected[1])
                            best[camera] = (value, ncc, peak, shift, angle, total)
                        else:
                            best[camera] = prev[:-1] + (total,)
                for camera, (value, ncc, peak, shift, angle, total) in best.items():
                    out[camera] = MatchScore(
                        pce=value, ncc=ncc, peak=tuple(int(p) for p in peak), shift=tuple(int(s) for s in shift),
                        n_shifts=total, p_fa=false_alarm_probability(value, total), rotation=angle,
                    )  # fmt: skip
                del stacked
    return out
