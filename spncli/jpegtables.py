"""JPEG marker walking, quantization tables and IJG-equivalent quality.

The quality of a JPEG file is not stored in the file: only its quantization
tables are. This module walks the marker segments of the *main* image (APPn
segments, which hold the EXIF thumbnail and its own tables, are skipped
whole), maps the tables to colour components through the SOF segment, and
finds the Independent JPEG Group (IJG) quality whose scaled Annex K tables
match them, exactly or by least error.

References
----------
.. [1] ITU-T Rec. T.81 (1992), "Information technology - Digital compression
   and coding of continuous-tone still images", Annex B (syntax) and Annex K
   (example quantization tables).
.. [2] Independent JPEG Group, libjpeg ``jcparam.c``: ``jpeg_quality_scaling``
   and ``jpeg_add_quant_table`` (integer scaling of the Annex K tables).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "JpegFormatError",
    "JpegStructure",
    "QualityEstimate",
    "parse_jpeg",
    "ijg_tables",
    "estimate_quality",
]

# Annex K, tables K.1 (luminance) and K.2 (chrominance), row-major order.
_ANNEX_K_LUMA = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.int64,
)
_ANNEX_K_CHROMA = np.full((8, 8), 99, dtype=np.int64)
_ANNEX_K_CHROMA[:4, :4] = [
    [17, 18, 24, 47],
    [18, 21, 26, 66],
    [24, 26, 56, 99],
    [47, 66, 99, 99],
]


def _zigzag_order() -> np.ndarray:
    """Row-major index of the k-th coefficient in zig-zag order (T.81 fig. A.6)."""
    order = []
    for s in range(15):
        diag = [(r, s - r) for r in range(8) if 0 <= s - r < 8]
        if s % 2 == 0:
            diag.reverse()  # even anti-diagonals run bottom-left to top-right
        order.extend(r * 8 + c for r, c in diag)
    return np.array(order, dtype=np.intp)


ZIGZAG = _zigzag_order()

# SOF markers: C0-C3, C5-C7, C9-CB, CD-CF (C4 is DHT, C8 is JPG, CC is DAC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


class JpegFormatError(ValueError):
    """The bytes are not a well-formed JPEG stream (the message says where)."""


@dataclass(frozen=True)
class Component:
    """One colour component of the frame header (T.81 B.2.2)."""

    ident: int
    h_sampling: int
    v_sampling: int
    table_id: int


@dataclass
class JpegStructure:
    """What the marker walk found in the main image.

    Attributes
    ----------
    tables : dict of int to ndarray
        Quantization tables by destination id, each 8x8 int64 in row-major
        (natural) order, as in force when the first scan starts.
    precision : dict of int to int
        8 or 16: the element precision each table was stored with.
    components : list of Component
        Frame components in SOF order.
    height, width : int
        Frame size in pixels (rows, columns).
    progressive : bool
        Whether the frame is progressive (SOF2, SOF6, SOF10, SOF14).
    sof_marker : int
        The SOF marker byte (0xC0 baseline, 0xC1 extended, 0xC2 progressive...).
    has_eoi : bool
        Whether an end-of-image marker follows the first scan (a truncated file
        lacks it).
    """

    tables: dict[int, np.ndarray] = field(default_factory=dict)
    precision: dict[int, int] = field(default_factory=dict)
    components: list[Component] = field(default_factory=list)
    height: int = 0
    width: int = 0
    progressive: bool = False
    sof_marker: int = 0
    has_eoi: bool = False


def _parse_dqt(segment: bytes, out: JpegStructure) -> None:
    pos = 0
    while pos < len(segment):
        pq, tq = segment[pos] >> 4, segment[pos] & 0x0F
        pos += 1
        if pq not in (0, 1) or tq > 3:
            raise JpegFormatError(f"DQT: bad precision/destination byte (Pq={pq}, Tq={tq})")
        size = 128 if pq else 64
        if pos + size > len(segment):
            raise JpegFormatError("DQT: table runs past the end of its segment")
        raw = np.frombuffer(segment[pos : pos + size], dtype=">u2" if pq else "u1")
        pos += size
        if not raw.all():
            raise JpegFormatError(
                f"DQT: quantization table {tq} has {int((raw == 0).sum())} zero entries "
                "(invalid: every entry must be 1 or more, T.81 B.2.4.1)"
            )
        table = np.empty(64, dtype=np.int64)
        table[ZIGZAG] = raw
        out.tables[tq] = table.reshape(8, 8)
        out.precision[tq] = 16 if pq else 8


def _parse_sof(marker: int, segment: bytes, out: JpegStructure) -> None:
    if len(segment) < 6:
        raise JpegFormatError("SOF: segment too short")
    out.sof_marker = marker
    out.progressive = marker in _PROGRESSIVE_SOF
    out.height = int.from_bytes(segment[1:3], "big")
    out.width = int.from_bytes(segment[3:5], "big")
    n = segment[5]
    if len(segment) < 6 + 3 * n:
        raise JpegFormatError("SOF: component list truncated")
    out.components = [
        Component(segment[6 + 3 * i], segment[7 + 3 * i] >> 4, segment[7 + 3 * i] & 0x0F, segment[8 + 3 * i])
        for i in range(n)
    ]


def parse_jpeg(data: bytes) -> JpegStructure:
    """Walk the marker segments of a JPEG stream up to its first scan.

    Parameters
    ----------
    data : bytes
        The whole file.

    Returns
    -------
    JpegStructure
        Tables, components, frame size and flags of the main image. APPn and
        COM segments are skipped by their length, so tables inside an EXIF
        thumbnail are never taken for the main image's.

    Raises
    ------
    JpegFormatError
        If the stream does not start with SOI, a segment runs past the end of
        the data, or no frame header or scan is found.
    """
    if data[:2] != b"\xff\xd8":
        raise JpegFormatError("no JPEG start-of-image marker")
    out = JpegStructure()
    pos, n = 2, len(data)
    while True:
        if pos >= n:
            raise JpegFormatError("file ends before the first scan (truncated)")
        if data[pos] != 0xFF:
            raise JpegFormatError(f"expected a marker at byte {pos}, found 0x{data[pos]:02X}")
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            raise JpegFormatError("file ends inside a marker (truncated)")
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker == 0xD9:
            raise JpegFormatError("end-of-image before any scan")
        if pos + 2 > n:
            raise JpegFormatError("file ends inside a segment length (truncated)")
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2 or pos + length > n:
            raise JpegFormatError(f"segment 0xFF{marker:02X} runs past the end of the file (truncated)")
        segment = data[pos + 2 : pos + length]
        if marker == 0xDB:
            _parse_dqt(segment, out)
        elif marker in _SOF_MARKERS:
            _parse_sof(marker, segment, out)
        elif marker == 0xDA:
            if not out.components:
                raise JpegFormatError("scan before any frame header (SOF)")
            missing = {c.table_id for c in out.components} - set(out.tables)
            if missing:
                raise JpegFormatError(f"components use undefined quantization tables {sorted(missing)}")
            out.has_eoi = data.rfind(b"\xff\xd9", pos + length) >= 0
            return out
        pos += length


def ijg_tables(quality: int, *, force_baseline: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Luminance and chrominance tables that libjpeg writes at ``quality``.

    Parameters
    ----------
    quality : int
        IJG quality, 1 to 100.
    force_baseline : bool, optional
        Clamp entries to 255 (8-bit tables), as libjpeg and OpenCV do by
        default; otherwise clamp to 32767 (16-bit tables).

    Returns
    -------
    luma, chroma : ndarray
        8x8 int64 tables in row-major order.
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    top = 255 if force_baseline else 32767
    return tuple(np.clip((base * scale + 50) // 100, 1, top) for base in (_ANNEX_K_LUMA, _ANNEX_K_CHROMA))


@dataclass(frozen=True)
class QualityEstimate:
    """IJG-equivalent quality of a JPEG's quantization tables.

    Attributes
    ----------
    quality : int
        Best-fitting IJG quality (1-100).
    exact : bool
        True when every table equals the IJG table at that quality.
    fit_error : float
        Mean absolute difference, in quantization steps, between the file's
        tables and the IJG tables at ``quality`` (0.0 when exact).
    per_table : dict of int to int
        Best IJG quality of each table on its own (luma base for the table of
        the first component, chroma base for the others).
    """

    quality: int
    exact: bool
    fit_error: float
    per_table: dict[int, int]


def _table_roles(structure: JpegStructure) -> dict[int, int]:
    """Map each used table id to 0 (luminance base) or 1 (chrominance base)."""
    roles: dict[int, int] = {}
    for i, comp in enumerate(structure.components):
        roles.setdefault(comp.table_id, 0 if i == 0 else 1)
    return roles


_CANDIDATES = {
    fb: np.stack([np.stack(ijg_tables(q, force_baseline=fb)) for q in range(1, 101)]) for fb in (True, False)
}  # shape (100, 2, 8, 8): quality-1, role


def estimate_quality(structure: JpegStructure) -> QualityEstimate:
    """Estimate the IJG quality from the tables the frame's components use.

    Parameters
    ----------
    structure : JpegStructure
        Result of :func:`parse_jpeg`.

    Returns
    -------
    QualityEstimate
        The quality whose IJG tables are nearest (mean absolute difference
        over all used tables); ``exact`` when they are equal.

    Notes
    -----
    Tables stored with 16-bit precision are compared with unclamped (16-bit)
    IJG tables, 8-bit ones with tables clamped to 255, as libjpeg writes them.
    Camera tables are not IJG tables: for them the estimate is approximate
    and ``fit_error`` says how far off the nearest IJG table is.
    """
    roles = _table_roles(structure)
    total = np.zeros(100)
    per_table: dict[int, int] = {}
    for tid, role in roles.items():
        cands = _CANDIDATES[structure.precision[tid] == 8][:, role]
        err = np.abs(cands - structure.tables[tid]).mean(axis=(1, 2))
        per_table[tid] = int(np.argmin(err)) + 1
        total += err
    total /= len(roles)
    best = int(np.argmin(total))
    return QualityEstimate(
        quality=best + 1, exact=bool(total[best] == 0), fit_error=float(total[best]), per_table=per_table
    )
