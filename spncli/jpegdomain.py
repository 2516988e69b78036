"""Compression-aware noise residual: keep what the JPEG file says survived quantization.

A JPEG stores each 8x8 luma block as DCT coefficients divided by a
quantization step and rounded. A coefficient rounded to zero carries no trace
of the sensor pattern noise (PRNU) any more: whatever a denoiser finds there is
the decoder's and the denoiser's own error. The file itself says which
coefficients survived. The compression-aware residual therefore

1. takes the grey wavelet residual of the full frame *before* post-processing
   (:func:`spncli.residual.grey_residual`),
2. transforms it by the 8x8 DCT-II on the file's own block grid (from the
   file's origin, so always on the full frame, cropped afterwards),
3. keeps the coefficients whose quantized luma coefficient in the file is
   non-zero, optionally weighted by the inverse quantization step (the
   quantization noise of a kept coefficient has variance ``q²/12``), and
   transforms back,
4. removes the CFA row/column means [2]_ and applies the spectral Wiener
   filter [2]_ only where a per-image criterion calls for it: by default the
   fraction of AC luma coefficients the file kept in the analysed region
   (content and quality together, read from the file; not a quality
   threshold), chosen on held-out units (:class:`AwareSettings`).

The quantized coefficients are read losslessly with ``jpeglib`` [3]_ (libjpeg's
``jpeg_read_coefficients``); the DCT is vectorised numpy in float32.

Non-JPEG inputs have no coefficients: callers fall back to the classic
residual and record ``residual_kind = "classic"``.

References
----------
.. [1] J. Lukáš, J. Fridrich, M. Goljan, "Digital camera identification from
   sensor pattern noise", IEEE Trans. Inf. Forensics Security 1(2), 205-214,
   2006. :doi:`10.1109/TIFS.2006.873602`
.. [2] M. Chen, J. Fridrich, M. Goljan, J. Lukáš, "Determining image origin
   and integrity using sensor noise", IEEE Trans. Inf. Forensics Security
   3(1), 74-90, 2008. :doi:`10.1109/TIFS.2007.916285`
.. [3] M. Beneš, N. Hofer, R. Böhme, "The effect of the JPEG implementation on
   the cover-source mismatch error in image steganalysis", EUSIPCO 2022.
   :doi:`10.23919/EUSIPCO55093.2022.9909843`
.. [4] G. K. Wallace, "The JPEG still picture compression standard", IEEE
   Trans. Consumer Electronics 38(1), 1992. :doi:`10.1109/30.125072`
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from dataclasses import asdict, dataclass

import numpy as np

from .geometry import centre_crop, crop_offsets
from .residual import ResidualParams, sample_std, wiener_dft, zero_mean_cfa

__all__ = [
    "RESIDUAL_KINDS",
    "WEIGHTINGS",
    "WIENER_POLICIES",
    "WIENER_CRITERIA",
    "NoCoefficients",
    "LumaCoefficients",
    "read_luma_coefficients",
    "dct_matrix",
    "block_dct",
    "block_idct",
    "survival_weights",
    "survival_map",
    "filter_residual",
    "wiener_criterion",
    "AwareSettings",
    "compression_aware_residual",
    "coefficients_of",
]

RESIDUAL_KINDS = ("classic", "compression-aware")
"""Residual kinds every output records under ``residual_kind``."""

WEIGHTINGS = ("binary", "inverse-q", "inverse-q2")
"""How the kept DCT coefficients are weighted: 1, ``q_min/q`` or ``(q_min/q)²`` (0 where the file has 0)."""

WIENER_POLICIES = ("auto", "always", "never")
"""Spectral Wiener filter of the compression-aware residual: per image by criterion, always, never."""


class NoCoefficients(ValueError):
    """A JPEG whose luma coefficients cannot be used (CMYK/YCCK, unreadable): callers fall back to classic."""


@dataclass(frozen=True)
class LumaCoefficients:
    """Quantized luma DCT coefficients of a JPEG file and its luma quantization table.

    Attributes
    ----------
    coef : ndarray, int16, shape (ceil(rows/8), ceil(cols/8), 8, 8)
        ``coef[i, j, v, u]``: block row ``i``, block column ``j``, vertical
        frequency ``v``, horizontal frequency ``u`` (natural order, not
        zig-zag) [4]_. Blocks of the encoder's padding beyond the image are
        dropped.
    qt : ndarray, int32, shape (8, 8)
        Luma quantization steps in the same natural order.
    rows, cols : int
        Image size in pixels.
    """

    coef: np.ndarray
    qt: np.ndarray
    rows: int
    cols: int

    def _blocks(self, region: tuple[int, int, int, int] | None) -> np.ndarray:
        """The coefficient blocks meeting ``region`` (r0, c0, r1, c1) in pixels; all of them for None."""
        if region is None:
            return self.coef
        r0, c0, r1, c1 = region
        return self.coef[r0 // 8 : -(-r1 // 8), c0 // 8 : -(-c1 // 8)]

    def surviving_fraction(self, region: tuple[int, int, int, int] | None = None) -> float:
        """Fraction of non-zero AC coefficients, over all blocks or those meeting ``region`` (r0, c0, r1, c1)."""
        c = self._blocks(region)
        nonzero = np.count_nonzero(c) - np.count_nonzero(c[:, :, 0, 0])
        return float(nonzero / max(c.shape[0] * c.shape[1] * 63, 1))

    def textured_fraction(self, region: tuple[int, int, int, int] | None = None, std_above: float = 4.0) -> float:
        """Fraction of blocks whose dequantized AC part varies by more than ``std_above`` grey levels.

        A block's AC standard deviation follows from its coefficients by
        Parseval's theorem for the orthonormal 8x8 DCT [4]_:
        ``sqrt(sum over AC of (coef * q)**2 / 64)``. A flat-field photo (sky,
        wall, a calibration target) has almost no such block at any quality;
        natural scenes have many.
        """
        blocks = self._blocks(region)
        q = self.qt.astype(np.float32)
        q[0, 0] = 0.0  # the DC term is the block's mean, not its spread
        bound, textured = 64.0 * std_above**2, 0
        for i in range(0, blocks.shape[0], 64):  # 64 block rows at a time: small temporaries at any size
            c = blocks[i : i + 64].astype(np.float32) * q
            textured += int(np.count_nonzero(np.einsum("ijvu,ijvu->ij", c, c) > bound))
        return float(textured / max(blocks.shape[0] * blocks.shape[1], 1))


def read_luma_coefficients(data: bytes) -> LumaCoefficients:
    """Read the quantized luma DCT coefficients of JPEG bytes with ``jpeglib`` [3]_.

    ``jpeglib`` reads from a path only: the bytes are written to a private
    temporary folder (never beside the evidence) and removed at once.

    Parameters
    ----------
    data : bytes
        The whole JPEG file, as hashed by the caller.

    Returns
    -------
    LumaCoefficients

    Raises
    ------
    NoCoefficients
        If the data is not a JPEG whose first component is luma (CMYK and
        YCCK files are refused, naming the colour space), or libjpeg cannot
        read its coefficients.
    """
    import jpeglib

    if data[:3] != b"\xff\xd8\xff":
        raise NoCoefficients("not a JPEG file (no SOI marker): no DCT coefficients to read")
    # jpeglib reads a path: the bytes already read and hashed go to a private temporary folder (mode 0700),
    # removed at once; messages name the evidence's bytes, not that path (a record must not hold a random name)
    with tempfile.TemporaryDirectory(prefix="spn-jpegdomain-") as tmp:
        path = os.path.join(tmp, "evidence.jpg")
        with open(path, "wb") as f:
            f.write(data)
        try:
            jpeg = jpeglib.read_dct(path)
            if jpeg.has_black:
                raise NoCoefficients("CMYK/YCCK JPEG: no luma plane (allowed: greyscale or YCbCr JPEG)")
            y, qt, tables = np.asarray(jpeg.Y), np.asarray(jpeg.qt), list(jpeg.quant_tbl_no)
            rows, cols = int(jpeg.height), int(jpeg.width)
        except (OSError, RuntimeError) as exc:
            why = str(exc).replace(path, "the file's bytes")
            raise NoCoefficients(f"DCT coefficients could not be read ({why})") from None
    bh, bw = -(-rows // 8), -(-cols // 8)
    if y.ndim != 4 or y.shape[0] < bh or y.shape[1] < bw or y.shape[2:] != (8, 8):
        raise NoCoefficients(f"luma coefficient array {y.shape} does not cover the {cols}x{rows} image")
    return LumaCoefficients(
        coef=np.ascontiguousarray(y[:bh, :bw], dtype=np.int16),
        qt=np.asarray(qt[tables[0]], dtype=np.int32),
        rows=rows,
        cols=cols,
    )


def dct_matrix(n: int = 8) -> np.ndarray:
    """Orthonormal DCT-II matrix ``D`` (float32, n x n): a block's transform is ``D @ B @ D.T`` [4]_."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    d[0] /= np.sqrt(2.0)
    return d.astype(np.float32)


_D = dct_matrix()


def _blocks(x: np.ndarray) -> np.ndarray:
    """(8a, 8b) -> (a, b, 8, 8) view-free copy of the 8x8 blocks."""
    a, b = x.shape[0] // 8, x.shape[1] // 8
    return x.reshape(a, 8, b, 8).transpose(0, 2, 1, 3)


def _unblocks(c: np.ndarray) -> np.ndarray:
    a, b = c.shape[:2]
    return np.ascontiguousarray(c.transpose(0, 2, 1, 3)).reshape(8 * a, 8 * b)


def block_dct(x: np.ndarray) -> np.ndarray:
    """8x8 block DCT-II of an array whose sides are multiples of 8.

    Parameters
    ----------
    x : ndarray, shape (8a, 8b)

    Returns
    -------
    ndarray, float32, shape (a, b, 8, 8)
        ``[i, j, v, u]`` as in :class:`LumaCoefficients` (unquantized, and
        without JPEG's level shift of 128).
    """
    if x.ndim != 2 or x.shape[0] % 8 or x.shape[1] % 8:
        raise ValueError(f"block_dct needs a 2-D array with sides multiple of 8, got shape {x.shape}")
    return _D @ _blocks(np.asarray(x, dtype=np.float32)) @ _D.T


def block_idct(c: np.ndarray) -> np.ndarray:
    """Inverse of :func:`block_dct`: (a, b, 8, 8) coefficients -> (8a, 8b) float32 pixels."""
    return _unblocks(_D.T @ np.asarray(c, dtype=np.float32) @ _D)


def survival_weights(coefficients: LumaCoefficients, weighting: str = "binary", zeroed: float = 0.0) -> np.ndarray:
    """Weight of each DCT coefficient of the residual: ``zeroed`` where the file's coefficient is 0.

    Parameters
    ----------
    coefficients : LumaCoefficients
    weighting : {"binary", "inverse-q", "inverse-q2"}
        Kept coefficients get 1, ``q_min/q`` or ``(q_min/q)²`` (``q`` the
        coefficient's quantization step, ``q_min`` the table's smallest).
    zeroed : float
        Weight of the coefficients the file rounded to zero, in 0..1 (0: a
        pure mask). The wavelet denoiser is not aligned with the 8x8 DCT, so
        its residual at a zeroed coefficient still carries a little of the
        sensor pattern of the neighbouring kept ones; a small weight keeps it.

    Returns
    -------
    ndarray, float32, shape of ``coefficients.coef``
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting {weighting!r} is not one of {', '.join(WEIGHTINGS)}")
    if not (0.0 <= zeroed <= 1.0):
        raise ValueError(f"zeroed weight must be in 0..1, got {zeroed}")
    kept = coefficients.coef != 0
    w = kept.astype(np.float32)
    if weighting != "binary":
        q = coefficients.qt.astype(np.float32)
        ratio = np.float32(q.min()) / q
        if weighting == "inverse-q2":
            ratio = ratio * ratio
        w *= ratio
    if zeroed:
        w[~kept] = np.float32(zeroed)
    return w


def survival_map(coefficients: LumaCoefficients) -> np.ndarray:
    """Per-block survival of the AC luma coefficients, at 1/8 resolution.

    Returns
    -------
    ndarray, float32, shape (bh, bw, 2)
        Channel 0: fraction of the 63 AC coefficients of each block that the
        file keeps non-zero. Channel 1: the same fraction weighted by
        ``q_min/q`` (:func:`survival_weights`, ``"inverse-q"``), normalised by
        the sum of the AC weights, so that both are 1 for a block that kept everything.
    """
    ac = np.ones((8, 8), np.float32)
    ac[0, 0] = 0.0
    binary = survival_weights(coefficients, "binary") * ac
    weighted = survival_weights(coefficients, "inverse-q") * ac
    norm = float((survival_weights(LumaCoefficients(np.ones((1, 1, 8, 8), np.int16), coefficients.qt, 8, 8),
                                   "inverse-q")[0, 0] * ac).sum())
    return np.stack([binary.sum(axis=(2, 3)) / 63.0, weighted.sum(axis=(2, 3)) / norm], axis=-1).astype(np.float32)


def filter_residual(
    grey: np.ndarray, coefficients: LumaCoefficients, weighting: str = "binary", zeroed: float = 0.0
) -> np.ndarray:
    """Restrict a full-frame grey residual to the DCT coefficients that survived in the file.

    Parameters
    ----------
    grey : ndarray, float32, shape (rows, cols)
        Grey residual of the *full* decoded frame, before post-processing.
    coefficients : LumaCoefficients
        Of the same file; its block grid starts at pixel (0, 0).
    weighting, zeroed
        See :func:`survival_weights`.

    Returns
    -------
    ndarray, float32, shape (rows, cols)
        The residual transformed by the 8x8 DCT on the file's grid, weighted,
        transformed back. Partial blocks at the right and bottom edges are
        padded by edge replication (as encoders pad) and cropped afterwards.
    """
    rows, cols = grey.shape
    if (rows, cols) != (coefficients.rows, coefficients.cols):
        raise ValueError(
            f"residual is {cols}x{rows} but the JPEG's coefficients are for {coefficients.cols}x{coefficients.rows} "
            "(compute the compression-aware residual on the full frame, crop afterwards)"
        )
    bh, bw = coefficients.coef.shape[:2]
    x = np.asarray(grey, dtype=np.float32)
    if (bh * 8, bw * 8) != (rows, cols):
        x = np.pad(x, ((0, bh * 8 - rows), (0, bw * 8 - cols)), mode="edge")
    c = block_dct(x)
    c *= survival_weights(coefficients, weighting, zeroed)
    return np.ascontiguousarray(block_idct(c)[:rows, :cols])


def wiener_criterion(x: np.ndarray, params: ResidualParams = ResidualParams()) -> tuple[float, np.ndarray]:
    """Energy the spectral Wiener filter keeps of a residual, and the filtered residual.

    The filter of [2]_ treats the normalised spectrum magnitude as a signal in
    white noise of the residual's own variance and keeps the noise part, so
    ``‖wiener(x)‖² / ‖x‖²`` is near 1 for a white spectrum and falls as the
    spectrum grows peaked or coloured (JPEG grid, CFA periodicities, the
    low-pass shape of a coarsely quantized residual).

    Parameters
    ----------
    x : ndarray, float32, shape (M, N)
        The residual after CFA zero-mean.
    params : ResidualParams
        Its ``windows`` are used.

    Returns
    -------
    kept : float
        ``‖wiener(x)‖² / ‖x‖²`` (0 for a zero residual).
    filtered : ndarray, float32
        ``wiener(x)``, so that a caller who applies the filter need not compute it twice.
    """
    filtered = wiener_dft(x, sample_std(x), params.windows)
    energy = float(np.square(x, dtype=np.float64).sum())
    kept = float(np.square(filtered, dtype=np.float64).sum()) / energy if energy > 0 else 0.0
    return kept, filtered


WIENER_CRITERIA = ("surviving", "kept")
"""Per-image criteria for the spectral Wiener filter: the fraction of non-zero AC luma coefficients
in the (cropped) region of the file, or :func:`wiener_criterion`'s kept energy."""


@dataclass(frozen=True)
class AwareSettings:
    """Settings of the compression-aware residual (recorded in every output).

    The defaults were chosen on the selection split of
    ``benchmarks/restoration_protocol.py`` (Dresden units ``_0``; 1/q
    weighting; the surviving-fraction criterion at 0.1499, stable in
    leave-one-unit-out: 0.1499, 0.1499, 0.1309) and are reported on the
    ``_1`` units, which chose nothing. A zeroed-coefficient weight of 0.25
    (binary) was a candidate too and lost on ``_0`` (objective 2.228 against
    2.235 for 1/q with weight 0), so the default stays the pure mask.

    Attributes
    ----------
    weighting : str
        One of :data:`WEIGHTINGS`.
    wiener : str
        One of :data:`WIENER_POLICIES`. ``"auto"`` applies the spectral Wiener
        filter when the image's ``criterion`` is at least ``wiener_above``.
    criterion : str
        One of :data:`WIENER_CRITERIA`.
    wiener_above : float
        Threshold of the criterion for ``"auto"``, in 0..1.
    zeroed_weight : float
        Weight of the DCT coefficients the file rounded to zero, 0..1
        (:func:`survival_weights`).
    """

    weighting: str = "inverse-q"
    wiener: str = "auto"
    criterion: str = "surviving"
    wiener_above: float = 0.1499
    zeroed_weight: float = 0.0

    def __post_init__(self):
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting {self.weighting!r} is not one of {', '.join(WEIGHTINGS)}")
        if not (0.0 <= self.zeroed_weight <= 1.0 and math.isfinite(self.zeroed_weight)):
            raise ValueError(f"zeroed_weight must be in 0..1, got {self.zeroed_weight}")
        if self.wiener not in WIENER_POLICIES:
            raise ValueError(f"wiener policy {self.wiener!r} is not one of {', '.join(WIENER_POLICIES)}")
        if self.criterion not in WIENER_CRITERIA:
            raise ValueError(f"Wiener criterion {self.criterion!r} is not one of {', '.join(WIENER_CRITERIA)}")
        if not (0.0 <= self.wiener_above <= 1.0 and math.isfinite(self.wiener_above)):
            raise ValueError(f"wiener_above must be in 0..1, got {self.wiener_above}")

    def as_dict(self) -> dict:
        return asdict(self)


def compression_aware_residual(
    grey: np.ndarray,
    coefficients: LumaCoefficients,
    *,
    crop: tuple[int, int] | None = None,
    params: ResidualParams = ResidualParams(),
    settings: AwareSettings = AwareSettings(),
) -> tuple[np.ndarray, dict]:
    """Compression-aware residual of a JPEG image, centre-cropped afterwards.

    Parameters
    ----------
    grey : ndarray, float32, shape (rows, cols)
        Full-frame grey residual before post-processing
        (:func:`spncli.residual.grey_residual` of the decoded file).
    coefficients : LumaCoefficients
        Read from the same file (:func:`read_luma_coefficients`).
    crop : (rows, cols) or None
        Centre crop (even offsets, :func:`spncli.geometry.centre_crop`)
        applied after the DCT-domain filter, before the post-processing.
    params : ResidualParams
        ``zero_mean`` and ``windows`` are used; the Wiener decision is
        ``settings.wiener``'s, not ``params.wiener_dft``.
    settings : AwareSettings

    Returns
    -------
    residual : ndarray, float32, shape crop or (rows, cols)
    info : dict
        ``residual_kind`` ("compression-aware"), the settings, the
        surviving AC fraction of the cropped region, the kept-energy
        criterion (when computed), and whether the Wiener filter was applied
        (``wiener_applied``).
    """
    x = filter_residual(grey, coefficients, settings.weighting, settings.zeroed_weight)
    rows, cols = x.shape
    region = (0, 0, rows, cols)
    if crop is not None:
        r0, c0 = crop_offsets((rows, cols), crop)
        x = centre_crop(x, crop)
        region = (r0, c0, r0 + crop[0], c0 + crop[1])
    x = zero_mean_cfa(x) if params.zero_mean else np.array(x, dtype=np.float32)
    surviving = coefficients.surviving_fraction(region)
    kept = filtered = None
    if settings.wiener == "always" or (settings.wiener == "auto" and settings.criterion == "kept"):
        kept, filtered = wiener_criterion(x, params)
    value = surviving if settings.criterion == "surviving" else kept
    apply = settings.wiener == "always" or (settings.wiener == "auto" and value >= settings.wiener_above)
    if apply and filtered is None:
        filtered = wiener_dft(x, sample_std(x), params.windows)
    info = {
        "residual_kind": "compression-aware",
        "aware_settings": settings.as_dict(),
        "surviving_ac_fraction": round(surviving, 6),
        "wiener_kept_energy": None if kept is None else round(kept, 6),
        "wiener_applied": bool(apply),
        "luma_qt": coefficients.qt.tolist(),
    }
    return np.ascontiguousarray(filtered if apply else x, dtype=np.float32), info


COEFFICIENT_READ = "DCT coefficient read: "
"""Start of a decoder warning given while :func:`coefficients_of` read the file (the pixels' have none)."""


def coefficients_of(ev, data: bytes | None = None) -> LumaCoefficients:
    """Luma coefficients of an evidence JPEG, from the very bytes that were hashed.

    Parameters
    ----------
    ev : spncli.evidence.Evidence
        A decoded JPEG.
    data : bytes, optional
        Its bytes when already in memory (e.g. a probe re-compressed in
        memory); otherwise the file at ``ev.path`` is read again and must
        still have the SHA-256 recorded when it was decoded.

    Raises
    ------
    NoCoefficients
        Not a JPEG, or its coefficients cannot be used (the caller may fall back).
    spncli.evidence.EvidenceError
        One line naming the file: unreadable, changed since it was read, or
        coefficients for another size than the pixels.

    Notes
    -----
    libjpeg's messages while the coefficients are read (damaged scan data) are taken as the pixels'
    are (:func:`spncli.evidence.decoder_messages`) and added to ``ev.warnings`` where new, after
    :data:`COEFFICIENT_READ`.
    """
    from .evidence import EvidenceError, decoder_messages, read_bytes

    if ev.format != "jpeg":
        raise NoCoefficients(f"{ev.format.upper()} has no JPEG DCT coefficients (allowed: JPEG)")
    if data is None:
        data = read_bytes(ev.path)
    if hashlib.sha256(data).hexdigest() != ev.sha256:
        raise EvidenceError(ev.path, "file changed since it was read (SHA-256 differs): DCT coefficients refused")
    messages: list[str] = []
    try:  # libjpeg's warnings, as for the pixels: recorded, not printed unattributed
        with decoder_messages() as messages:
            lc = read_luma_coefficients(data)
    finally:  # kept even where the read fails (the image then falls back to the classic residual); labelled, so
        # that the same damage seen by the two readers (their byte counts can differ) does not read as two
        ev.warnings.extend(f"{COEFFICIENT_READ}{m}" for m in messages
                           if m not in ev.warnings and f"{COEFFICIENT_READ}{m}" not in ev.warnings)  # fmt: skip
    if (lc.rows, lc.cols) != tuple(ev.shape):
        raise EvidenceError(
            ev.path, f"JPEG coefficients are for {lc.cols}x{lc.rows}, pixels are {ev.shape[1]}x{ev.shape[0]}"
        )
    return lc
