"""Loading evidence images: read once, hash, sniff, bound, decode in sensor orientation.

Every command reads its images through :func:`load_image`. The file is read
into memory once; its SHA-256 is computed over exactly the bytes that are
decoded. The format is recognised by content (signature), never by the file
name, and the pixel count is read from the header and checked against a bound
before any decoding, so a decompression bomb is refused cheaply. OpenCV is
told to ignore the EXIF orientation: pixels stay in sensor order, which is the
geometry of the sensor pattern noise.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# OpenCV refuses images above this many pixels; keep its own guard above ours.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(2**31 - 1))
import cv2  # noqa: E402

from . import jpegtables  # noqa: E402

__all__ = [
    "EvidenceError",
    "Evidence",
    "DEFAULT_MAX_PIXELS",
    "MIN_SIDE",
    "sha256_file",
    "sniff",
    "load_image",
    "read_bytes",
    "decode",
    "read_exif",
]

DEFAULT_MAX_PIXELS = 200_000_000
"""Largest image (pixels) decoded by default: 200 MP, above any camera sold today."""

MIN_SIDE = 64
"""Smallest side (pixels) for which a noise residual means anything."""

FORMATS = ("jpeg", "png", "tiff", "webp")


class EvidenceError(Exception):
    """An input cannot be used. ``str()`` is one line naming the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class Evidence:
    """One decoded image with its provenance.

    Attributes
    ----------
    path : str
        The path as given.
    sha256 : str
        Hex SHA-256 of the file's bytes.
    size_bytes : int
        File size.
    format : str
        ``"jpeg"``, ``"png"``, ``"tiff"`` or ``"webp"`` (by signature).
    pixels : ndarray
        float32, shape (rows, cols, channels), channels 1 (grey) or 3 (RGB
        order), scaled to 0..255 whatever the bit depth; alpha is dropped.
    bit_depth : int
        8 or 16.
    saturation : float
        The value (on the 0..255 scale) at which a pixel is clipped.
    jpeg : jpegtables.JpegStructure or None
        Marker-walk result for JPEG files.
    quality : jpegtables.QualityEstimate or None
        IJG-equivalent quality for JPEG files.
    exif : dict
        ``make``, ``model``, ``serial``, ``orientation`` where present.
    """

    path: str
    sha256: str
    size_bytes: int
    format: str
    pixels: np.ndarray
    bit_depth: int
    saturation: float
    jpeg: jpegtables.JpegStructure | None = None
    quality: jpegtables.QualityEstimate | None = None
    exif: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape[:2]

    def provenance(self) -> dict:
        """The facts about this input that every dependent output records."""
        q = self.quality
        return {
            "path": self.path,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "format": self.format,
            "rows": int(self.shape[0]),
            "cols": int(self.shape[1]),
            "channels": int(self.pixels.shape[2]),
            "bit_depth": self.bit_depth,
            "jpeg_quality": None if q is None else q.quality,
            "jpeg_quality_exact": None if q is None else q.exact,
            "exif": self.exif,
        }


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks (for files not otherwise loaded)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _tiff_size(data: bytes) -> tuple[int, int]:
    endian = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(endian + "I", data, 4)
    (count,) = struct.unpack_from(endian + "H", data, ifd)
    dims = {}
    for i in range(count):
        tag, typ, _n, value = struct.unpack_from(endian + "HHI4s", data, ifd + 2 + 12 * i)
        if tag in (256, 257):
            fmt = "H" if typ == 3 else "I"
            dims[tag] = struct.unpack_from(endian + fmt, value)[0]
    if 256 not in dims or 257 not in dims:
        raise ValueError("TIFF without ImageWidth/ImageLength")
    return dims[257], dims[256]


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8X":
        cols = int.from_bytes(data[24:27], "little") + 1
        rows = int.from_bytes(data[27:30], "little") + 1
    elif chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise ValueError("bad VP8 key-frame signature")
        cols, rows = (v & 0x3FFF for v in struct.unpack_from("<HH", data, 26))
    elif chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        cols, rows = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    else:
        raise ValueError(f"unknown WebP chunk {chunk!r}")
    return rows, cols


def sniff(data: bytes) -> tuple[str, int, int, jpegtables.JpegStructure | None]:
    """Recognise an image by its signature and read its size from the header.

    Returns
    -------
    format : str
        One of ``"jpeg"``, ``"png"``, ``"tiff"``, ``"webp"``.
    rows, cols : int
        Image size from the header.
    jpeg : JpegStructure or None
        The marker walk, for JPEG.

    Raises
    ------
    ValueError
        With a one-line reason if the data is not a well-formed header of an
        allowed format.
    """
    if data[:3] == b"\xff\xd8\xff":
        structure = jpegtables.parse_jpeg(data)
        if not structure.has_eoi:
            raise jpegtables.JpegFormatError("no end-of-image marker after the scan data (truncated JPEG)")
        return "jpeg", structure.height, structure.width, structure
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ValueError("PNG without an IHDR header (truncated)")
        cols, rows = struct.unpack(">II", data[16:24])
        if b"IEND" not in data[-16:]:
            raise ValueError("PNG without an IEND chunk (truncated)")
        return "png", rows, cols, None
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        try:
            rows, cols = _tiff_size(data)
        except (struct.error, ValueError) as exc:
            raise ValueError(f"unreadable TIFF header ({exc})") from None
        return "tiff", rows, cols, None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        try:
            rows, cols = _webp_size(data)
        except (struct.error, ValueError) as exc:
            raise ValueError(f"unreadable WebP header ({exc})") from None
        return "webp", rows, cols, None
    raise ValueError("not an image: no JPEG, PNG, TIFF or WebP signature")


def read_exif(data: bytes) -> dict:
    """Camera make, model, body serial and orientation from EXIF (piexif); {} if none."""
    import piexif

    try:
        info = piexif.load(data)
    except Exception:  # malformed EXIF is not a reason to refuse the pixels
        return {}

    def text(ifd, tag):
        v = info.get(ifd, {}).get(tag)
        if isinstance(v, bytes):
            v = v.split(b"\x00", 1)[0].decode("ascii", "replace").strip()
        return v or None

    out = {
        "make": text("0th", piexif.ImageIFD.Make),
        "model": text("0th", piexif.ImageIFD.Model),
        "serial": text("Exif", piexif.ExifIFD.BodySerialNumber),
        "orientation": info.get("0th", {}).get(piexif.ImageIFD.Orientation),
    }
    return {k: v for k, v in out.items() if v is not None}


def load_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Evidence:
    """Read, hash and decode one image in sensor orientation.

    Parameters
    ----------
    path : path-like
        JPEG, PNG, TIFF or WebP; 8- or 16-bit; grey, colour or with alpha.
    max_pixels : int, optional
        Refuse images whose header declares more pixels than this.

    Returns
    -------
    Evidence

    Raises
    ------
    EvidenceError
        One line naming the file and the reason: unreadable, empty, not an
        image, truncated, too large, too small, or undecodable.
    """
    return decode(read_bytes(path), str(path), max_pixels=max_pixels)


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file, or :class:`EvidenceError` with a one-line reason."""
    try:
        return Path(path).read_bytes()
    except IsADirectoryError:
        raise EvidenceError(path, "is a directory, not an image file") from None
    except PermissionError:
        raise EvidenceError(path, "cannot read: permission denied") from None
    except FileNotFoundError:
        raise EvidenceError(path, "no such file (missing, moved, or a dangling link)") from None
    except OSError as exc:
        raise EvidenceError(path, f"cannot read: {exc.strerror or exc}") from None


def decode(data: bytes, path: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Evidence:
    """Hash, sniff, bound and decode image bytes already in memory (``path`` labels errors).

    See :func:`load_image`; raises :class:`EvidenceError` likewise.
    """
    if not data:
        raise EvidenceError(path, "empty file (0 bytes)")
    digest = hashlib.sha256(data).hexdigest()
    try:
        fmt, rows, cols, structure = sniff(data)
    except ValueError as exc:
        raise EvidenceError(path, str(exc)) from None
    if rows * cols > max_pixels:
        raise EvidenceError(
            path, f"{cols}x{rows} = {rows * cols:,} pixels exceeds the bound of {max_pixels:,} (--max-pixels)"
        )
    if min(rows, cols) < MIN_SIDE:
        raise EvidenceError(path, f"{cols}x{rows} is too small: both sides must be at least {MIN_SIDE} pixels")
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR | cv2.IMREAD_IGNORE_ORIENTATION
    if fmt == "png" or fmt == "tiff":
        flags = cv2.IMREAD_UNCHANGED  # keeps 16 bits and alpha; never applies orientation
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None or img.size == 0:
        raise EvidenceError(path, f"{fmt.upper()} data could not be decoded (corrupt or unsupported)")
    if img.shape[:2] != (rows, cols):
        raise EvidenceError(path, f"decoded size {img.shape[1]}x{img.shape[0]} differs from the header's {cols}x{rows}")
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    if channels == 4:
        img = img[:, :, :3]  # drop alpha
    elif channels == 2:
        img = img[:, :, :1]  # grey + alpha
    if img.shape[2] == 3:
        img = img[:, :, ::-1]  # OpenCV's BGR to RGB
    if img.dtype == np.uint8:
        depth, scale = 8, 1.0
    elif img.dtype == np.uint16:
        depth, scale = 16, 255.0 / 65535.0
    else:
        raise EvidenceError(path, f"unsupported sample type {img.dtype} (allowed: 8- or 16-bit integer)")
    pixels = np.ascontiguousarray(img, dtype=np.float32)
    if scale != 1.0:
        pixels *= scale
    quality = jpegtables.estimate_quality(structure) if structure is not None else None
    return Evidence(
        path=path,
        sha256=digest,
        size_bytes=len(data),
        format=fmt,
        pixels=pixels,
        bit_depth=depth,
        saturation=255.0,
        jpeg=structure,
        quality=quality,
        exif=read_exif(data) if fmt in ("jpeg", "tiff") else {},
    )
