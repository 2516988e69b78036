"""Loading evidence images: read once, hash, sniff, bound, decode in sensor orientation.

Every command reads its images through :func:`load_image`. The file is read
into memory once; its SHA-256 is computed over exactly the bytes that are
decoded. Only regular files are opened (a FIFO, socket, device or symbolic
link is refused from its ``lstat`` without being opened, so nothing hangs),
and the file's size is checked against a byte bound before it is read. The
format is recognised by content (signature), never by the file name; formats
recognised but not decoded (AVIF, GIF, BMP, ...) are refused by name. HEIC/HEIF
(the iPhone default) is decoded with ``pillow-heif`` (libheif), its ``irot``/``imir``
display transforms undone so the pixels are the coded (sensor) grid. The
pixel count is read from the header and checked against a bound before any
decoding, so a decompression bomb is refused cheaply. OpenCV is
told to ignore the EXIF orientation: pixels stay in sensor order, which is the
geometry of the sensor pattern noise.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import struct
import sys
import tempfile
import threading
from dataclasses import dataclass, field

import numpy as np

# OpenCV refuses images above this many pixels; keep its own guard above ours.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(2**31 - 1))
import cv2  # noqa: E402

from . import jpegtables  # noqa: E402
from .provenance import RefusedFile, open_regular  # noqa: E402

__all__ = [
    "EvidenceError",
    "Evidence",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_BYTES",
    "MAX_BYTES_ENV",
    "MIN_SIDE",
    "LINK_REFUSED",
    "default_max_bytes",
    "image_format",
    "unsupported_reason",
    "not_regular_reason",
    "sha256_file",
    "repeated_image",
    "sniff",
    "load_image",
    "read_bytes",
    "decode",
    "read_exif",
]

DEFAULT_MAX_PIXELS = 200_000_000
"""Largest image (pixels) decoded by default: 200 MP, above any camera sold today."""

DEFAULT_MAX_BYTES = 2**31 - 1
"""Largest file (bytes) read by default, and at most: OpenCV cannot decode a buffer of 2 GiB or more."""

MAX_BYTES_ENV = "SPN_MAX_BYTES"
"""Environment variable carrying ``spn --max-bytes`` to this process and to local worker processes."""

MIN_SIDE = 64
"""Smallest side (pixels) for which a noise residual means anything."""

FORMATS = ("jpeg", "png", "tiff", "webp", "heic")
"""Formats decoded (names as :func:`sniff` returns them)."""

LINK_REFUSED = ("symbolic link, not followed (a link is never followed, even inside the folder; name its target "
                "to read it)")

_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
_BMP_HEADERS = {12, 16, 40, 52, 56, 64, 108, 124}


def default_max_bytes() -> int:
    """The byte bound in force: ``$SPN_MAX_BYTES`` (set by ``spn --max-bytes``) or :data:`DEFAULT_MAX_BYTES`."""
    try:
        value = int(os.environ.get(MAX_BYTES_ENV, DEFAULT_MAX_BYTES))
    except ValueError:
        return DEFAULT_MAX_BYTES
    return min(max(value, 1), DEFAULT_MAX_BYTES)


def image_format(head: bytes) -> str | None:
    """Name the image format of a file from its first 32 bytes.

    Returns
    -------
    str or None
        One of :data:`FORMATS` for a decoded format; ``"AVIF"``,
        ``"GIF"``, ``"BMP"``, ``"JPEG 2000"``, ``"JPEG XL"`` or ``"PSD"`` for
        an image format recognised but not decoded; None for anything else.
    """
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return "heic"
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"jp2 ", b"jpx ", b"jpm "):
            return "JPEG 2000"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_HEADERS:
        return "BMP"
    if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or head[:4] == b"\xff\x4f\xff\x51":
        return "JPEG 2000"
    if head[:2] == b"\xff\x0a" or head[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return "JPEG XL"
    if head[:4] == b"8BPS":
        return "PSD"
    return None


def unsupported_reason(fmt: str) -> str:
    """The one-line reason for an image format recognised but not decoded."""
    return (
        f"format not supported: {fmt} (spn decodes JPEG, PNG, TIFF, WebP and HEIC/HEIF; convert losslessly, "
        "e.g. to PNG)"
    )


def unreadable_folder_reason(exc: OSError) -> str:
    """Why a folder's files were not walked (it cannot be listed)."""
    return f"folder that cannot be read ({exc.strerror or exc}): nothing in it was walked"


def not_regular_reason(mode: int) -> str:
    """The one-line reason for a non-regular file (from its ``st_mode``)."""
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
    )
    kind = next((name for test, name in kinds if test(mode)), "not a file")
    return f"not a regular file ({kind}): refused without opening it"


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
        ``"jpeg"``, ``"png"``, ``"tiff"``, ``"webp"`` or ``"heic"`` (by signature).
    samples : ndarray
        The samples as decoded, shape (rows, cols, channels), channels 1 (grey)
        or 3 (RGB order), alpha dropped: uint8 or uint16 (float32 on the 0..255
        scale is accepted too). A 48 MP photo's 8-bit samples take 144 MB, its
        float pixels 576 MB. Once the float pixels are made they replace the
        samples, which become a zero-byte stand-in of the same shape and type.
    pixels : ndarray (property)
        float32, same shape, scaled to 0..255 whatever the bit depth: converted
        from ``samples`` on first use and kept.
    bit_depth : int
        8 or 16.
    saturation : float
        The value (on the 0..255 scale) at which a pixel is clipped.
    jpeg : jpegtables.JpegStructure or None
        Marker-walk result for JPEG files.
    quality : jpegtables.QualityEstimate or None
        IJG-equivalent quality for JPEG files.
    exif : dict
        ``make``, ``model``, ``serial``, ``orientation`` where present (the
        orientation is recorded, never applied); for HEIC also
        ``heif_transforms``, the container's display transforms (undone).
    warnings : list of str
        What the decoder reported while decoding (e.g. libjpeg's "Corrupt JPEG
        data: premature end of data segment" for a file whose scan data is cut
        or damaged: the missing part decodes grey). The image is still used;
        every output records these and the command prints them.
    """

    path: str
    sha256: str
    size_bytes: int
    format: str
    samples: np.ndarray
    bit_depth: int
    saturation: float
    jpeg: jpegtables.JpegStructure | None = None
    quality: jpegtables.QualityEstimate | None = None
    exif: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    _pixels: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)
    _released: bool = field(default=False, init=False, repr=False, compare=False)

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            s = self.samples
            if s.dtype == np.float32:
                self._pixels = s
            else:
                pixels = s.astype(np.float32)
                if s.dtype == np.uint16:
                    pixels *= 255.0 / 65535.0
                self._pixels = pixels
                self.samples = np.broadcast_to(s.dtype.type(0), s.shape)  # not held twice
        return self._pixels

    def _held_eight_bit(self) -> np.ndarray | None:
        """The decoded 8-bit samples while they are held (not yet replaced by the float pixels), else None."""
        return self.samples if self._pixels is None and self.samples.dtype == np.uint8 else None

    def denoiser_samples(self) -> np.ndarray:
        """What the CPU residual reads: the 8-bit samples as decoded, else the float pixels.

        :func:`spncli.residual.grey_residual` converts 8-bit samples to float32 a channel (or a band
        of rows) at a time, with the same values the float pixels hold, so its result is bit for bit
        the same while the image's float copy (4 bytes a sample) is never made.
        """
        held = self._held_eight_bit()
        return self.pixels if held is None else held

    def eight_bit(self) -> np.ndarray:
        """The image as 8-bit samples: the decoded ones while they are held, else the pixels saturated to 0..255."""
        held = self._held_eight_bit()
        return cv2.convertScaleAbs(self.pixels) if held is None else held

    def pixel_sha256(self) -> str:
        """SHA-256 of the decoded samples (type and shape included), whether they are still held or the float
        pixels replaced them (8- and 16-bit samples are recovered exactly from those); 16-bit samples that are
        all multiples of 257 (an 8-bit image saved at 16 bits) are hashed as the 8-bit ones. Two files holding
        one photograph in other bytes (re-wrapped, extra bytes after the end, re-saved losslessly) have the
        same digest.

        Raises
        ------
        ValueError
            After :meth:`release_pixels` (nothing is left to hash).
        """
        if self._released:
            raise ValueError(f"{self.path}: pixels released; take the pixel digest before release_pixels")
        held = self.samples
        if self._pixels is not None and held.dtype != np.float32:  # the samples were replaced: recover them
            scale = 65535.0 / 255.0 if held.dtype == np.uint16 else 1.0
            held = np.rint(self._pixels * scale).astype(held.dtype)
        if held.dtype == np.uint16 and not (held % 257).any():  # an 8-bit image saved at 16 bits (x 257)
            held = (held // 257).astype(np.uint8)
        digest = hashlib.sha256(f"{held.dtype.str} {held.shape}".encode())
        digest.update(np.ascontiguousarray(held))
        return digest.hexdigest()

    def release_pixels(self) -> None:
        """Drop the samples and pixels for zero-byte read-only stand-ins of the same shape (``shape`` holds)."""
        self.samples = np.broadcast_to(np.uint8(0), self.samples.shape)
        self._pixels = np.broadcast_to(np.float32(0), self.samples.shape)
        self._released = True

    @property
    def shape(self) -> tuple[int, int]:
        return self.samples.shape[:2]

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
            "channels": int(self.samples.shape[2]),
            "bit_depth": self.bit_depth,
            "jpeg_quality": None if q is None else q.quality,
            "jpeg_quality_exact": None if q is None else q.exact,
            "exif": self.exif,
            "decoder_warnings": list(self.warnings),
        }


def _open_regular(path: str | os.PathLike, max_bytes: int | None = None) -> tuple[int, os.stat_result]:
    """An open descriptor of a regular evidence file and its ``fstat``; never through a link, never blocking.

    The entry is ``lstat``-ed first, so a symbolic link, FIFO, socket, device or folder is refused
    without being opened (a FIFO cannot hang the caller), then opened by
    :func:`spncli.provenance.open_regular` and checked again on the descriptor. Raises :class:`EvidenceError` naming the
    reason, or ``FileNotFoundError`` (a dangling link too).
    """
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        raise EvidenceError(path, LINK_REFUSED)
    if stat.S_ISDIR(st.st_mode):
        try:
            with os.scandir(path):
                pass
        except OSError as exc:  # walked folders that cannot be listed are reported by this line
            raise EvidenceError(path, unreadable_folder_reason(exc)) from None
        raise EvidenceError(path, "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise EvidenceError(path, not_regular_reason(st.st_mode))
    if max_bytes is not None:
        _check_size(path, st.st_size, max_bytes)
    try:  # the entry may have changed since lstat
        fd, st = open_regular(path)
    except RefusedFile as exc:
        if exc.reason == "link":
            raise EvidenceError(path, LINK_REFUSED) from None
        raise EvidenceError(path, not_regular_reason(exc.st.st_mode) if exc.st else str(exc.strerror)) from None
    if max_bytes is not None and st.st_size > max_bytes:
        os.close(fd)
        _check_size(path, st.st_size, max_bytes)
    return fd, st


def repeated_image(ev: Evidence, seen: dict[str, str], pixel_sha256: str | None = None) -> str | None:
    """Why ``ev`` repeats an image already in ``seen`` (its bytes, or its decoded pixels in other bytes: a
    re-wrapped or losslessly re-saved copy is still one photograph), naming the first; None, and ``ev`` recorded
    in ``seen``, when it is new. For analyses where a copy would count twice (pooling, clustering, fingerprints).
    ``pixel_sha256``: :meth:`Evidence.pixel_sha256` if the caller has it already."""
    digest = pixel_sha256 or ev.pixel_sha256()
    pixels = "pixels " + digest  # one dict holds both kinds of key
    for key, what, shown in ((ev.sha256, "same bytes as", f"SHA-256 {ev.sha256[:16]}..."),
                             (pixels, "same decoded pixels as", f"pixel SHA-256 {digest[:16]}...")):
        if key in seen:
            return f"{what} {seen[key]} ({shown})"
    seen[ev.sha256] = seen[pixels] = ev.path
    return None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of an evidence file, read in chunks (for files not otherwise loaded).

    Read as :func:`read_bytes` reads: a link, a FIFO, a device or a folder raises
    :class:`EvidenceError` without being opened; a missing file ``FileNotFoundError``.
    """
    fd, _ = _open_regular(path)
    h = hashlib.sha256()
    with open(fd, "rb", closefd=True) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _tiff_tags(data: bytes) -> dict[int, int]:
    """ImageWidth (256), ImageLength (257) and Orientation (274) of a TIFF's first directory (the one decoded)."""
    endian = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(endian + "I", data, 4)
    (count,) = struct.unpack_from(endian + "H", data, ifd)
    tags = {}
    for i in range(count):
        tag, typ, _n, value = struct.unpack_from(endian + "HHI4s", data, ifd + 2 + 12 * i)
        if tag in (256, 257, 274):
            fmt = "H" if typ == 3 else "I"
            tags[tag] = struct.unpack_from(endian + fmt, value)[0]
    return tags


def _tiff_size(data: bytes) -> tuple[int, int]:
    dims = _tiff_tags(data)
    if 256 not in dims or 257 not in dims:
        raise ValueError("TIFF without ImageWidth/ImageLength")
    return dims[257], dims[256]


_UNDO_ORIENTATION = {
    1: lambda x: x,
    2: lambda x: x[:, ::-1],
    3: lambda x: x[::-1, ::-1],
    4: lambda x: x[::-1],
    5: lambda x: np.swapaxes(x, 0, 1),
    6: lambda x: np.rot90(x, 1),
    7: lambda x: np.swapaxes(x, 0, 1)[::-1, ::-1],
    8: lambda x: np.rot90(x, -1),
}
"""The inverse of each TIFF/EXIF orientation's display transform: OpenCV's TIFF decoder applies the
orientation whatever ``IMREAD_IGNORE_ORIENTATION`` says, so it is undone (tested for all eight, and for
0 and 9, which it keeps as stored)."""


def _sensor_orientation_tiff(img: np.ndarray, data: bytes) -> np.ndarray:
    """A decoded TIFF back in the order its samples are stored (sensor orientation)."""
    orientation = _tiff_tags(data).get(274, 1)  # values outside 1..8 (0 from some writers): OpenCV keeps the order
    return np.ascontiguousarray(_UNDO_ORIENTATION.get(orientation, _UNDO_ORIENTATION[1])(img))


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
    fmt = image_format(data[:32])
    if fmt == "heic":
        rows, cols = _heif_primary(data)[1:3]
        return "heic", rows, cols, None
    if fmt is not None:
        raise ValueError(unsupported_reason(fmt))
    raise ValueError("not an image: no JPEG, PNG, TIFF, WebP or HEIC signature")


def _heif_primary(data: bytes):
    """The primary image of a HEIF container, parsed without decoding pixels.

    Returns
    -------
    image : pillow_heif.HeifImage
        Not yet decoded (pixels are decoded on first access).
    rows, cols : int
        Size of the coded (sensor) grid: the displayed size with any 90/270 degree ``irot`` undone.
    transforms : list
        The container's display transforms in the order libheif applies them, e.g.
        ``[["irot", 270], ["imir", 1]]`` (ISO/IEC 23008-12 ``irot`` angles are anti-clockwise).
    """
    try:
        import pillow_heif
    except ImportError:
        raise ValueError("HEIC/HEIF needs the pillow-heif package, which is not installed") from None
    try:
        heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=False)
        image = heif[heif.primary_index]
        cols, rows = image.size
        transforms = [list(t) for t in image._c_image.transformations]  # noqa: SLF001 (no public accessor)
    except Exception as exc:  # libheif reports any malformed container as one of several types
        raise ValueError(f"unreadable HEIC/HEIF header ({' '.join(str(exc).split())})") from None  # one line
    if any(t[0] == "irot" and t[1] % 180 for t in transforms):
        rows, cols = cols, rows
    return image, rows, cols, transforms


def _decode_heic(data: bytes) -> tuple[np.ndarray, dict]:
    """HEIC pixels in sensor orientation (``irot``/``imir`` undone; EXIF orientation recorded, not applied).

    libheif always applies the container's transforms when decoding; they are
    undone here in reverse order, so the array is the coded grid, the
    geometry of the sensor pattern noise. A clean-aperture crop (``clap``)
    cannot be undone and is recorded in ``heif_transforms``.
    """
    image, _rows, _cols, transforms = _heif_primary(data)
    img = np.asarray(image)
    for name, value in reversed(transforms):
        if name == "irot":
            img = np.rot90(img, -(int(value) // 90))
        elif name == "imir":
            img = np.flip(img, 0 if int(value) == 0 else 1)
    exif = read_exif(image.info["exif"]) if image.info.get("exif") else {}
    if transforms:
        exif["heif_transforms"] = transforms
    return np.ascontiguousarray(img), exif


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


def load_image(
    path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int | None = None
) -> Evidence:
    """Read, hash and decode one image in sensor orientation.

    Parameters
    ----------
    path : path-like
        JPEG, PNG, TIFF, WebP or HEIC/HEIF; 8- or 16-bit; grey, colour or with alpha.
    max_pixels : int, optional
        Refuse images whose header declares more pixels than this.
    max_bytes : int, optional
        Refuse files larger than this, before reading them (default:
        :func:`default_max_bytes`).

    Returns
    -------
    Evidence

    Raises
    ------
    EvidenceError
        One line naming the file and the reason: unreadable, not a regular
        file, a link, empty, too many bytes, not an image, a format not
        supported, truncated, too many pixels, too small, or undecodable.
    """
    return decode(read_bytes(path, max_bytes=max_bytes), str(path), max_pixels=max_pixels)


def read_bytes(path: str | os.PathLike, *, max_bytes: int | None = None) -> bytes:
    """The whole file, or :class:`EvidenceError` with a one-line reason.

    The entry is ``lstat``-ed first: a symbolic link, FIFO, socket, device or
    folder is refused without being opened (so a FIFO cannot hang the
    batch), and a file larger than ``max_bytes`` (default:
    :func:`default_max_bytes`) is refused before it is read. The file is then
    opened without following links and without blocking, and checked again
    on the open descriptor.
    """
    limit = default_max_bytes() if max_bytes is None else min(max_bytes, DEFAULT_MAX_BYTES)
    try:
        fd, st = _open_regular(path, limit)
        with open(fd, "rb", closefd=True) as f:
            data = f.read(st.st_size + 1)  # not a buffer of ``limit`` bytes
            if len(data) > st.st_size:  # grew since fstat: read on, up to the bound
                data += f.read(limit + 1 - len(data))
        _check_size(path, len(data), limit)  # grew while being read
        return data
    except PermissionError:
        raise EvidenceError(path, "cannot read: permission denied") from None
    except FileNotFoundError:
        raise EvidenceError(path, "no such file (missing, moved, or a dangling link)") from None
    except OSError as exc:
        raise EvidenceError(path, f"cannot read: {exc.strerror or exc}") from None


def _check_size(path, size: int, limit: int) -> None:
    if size > limit:
        raise EvidenceError(path, f"{size:,} bytes exceeds the bound of {limit:,} bytes (--max-bytes)")


_STDERR = threading.Lock()
_CAPTURE: list[int] = []  # the saved standard error while a capture runs (for a child forked meanwhile)


def _after_fork_in_child() -> None:
    """A child forked during a capture gets its standard error back and a free lock."""
    global _STDERR
    if _CAPTURE:
        with contextlib.suppress(OSError):
            os.dup2(_CAPTURE[0], 2)
        _CAPTURE.clear()
    _STDERR = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def decoder_messages():
    """libjpeg's warnings printed on the process's standard error while the block decodes a JPEG.

    libjpeg reports damaged scan data ("Corrupt JPEG data: premature end of
    data segment", "... bad Huffman code") only as warnings on ``stderr``,
    without the file's name. File descriptor 2 is pointed at a temporary file
    for the block (a file, not a pipe: a flood of warnings cannot block the
    decoder), one block at a time. Only lines that begin with one of
    libjpeg's own messages (:data:`_DECODER_PREFIXES`) are taken; everything
    else (another thread's output, a progress bar's frames) is written on
    afterwards byte for byte, in order. A child forked meanwhile gets its
    standard error back (``os.register_at_fork``).
    """
    lines: list[str] = []
    with _STDERR, tempfile.TemporaryFile() as sink:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no standard error at all (a closed descriptor): nothing to catch
            yield lines
            return
        try:
            _CAPTURE.append(saved)
            os.dup2(sink.fileno(), 2)
            try:
                yield lines
            finally:
                os.dup2(saved, 2)
                _CAPTURE.clear()
        finally:  # also when the block raised: its messages are taken and everything else passed on
            os.close(saved)
            _sort_captured(sink, lines)


def _sort_captured(sink, lines: list[str]) -> None:
    """Take libjpeg's messages from what :func:`decoder_messages` captured into ``lines``; write the rest on."""
    sink.seek(0)
    passed = []
    for line in sink.read().splitlines(keepends=True):
        text = line.decode("utf-8", "replace").strip()
        if text.startswith(_DECODER_PREFIXES):
            if text not in lines and len(lines) < 20:
                lines.append(text)
        else:
            passed.append(line)
    if passed:
        with contextlib.suppress(OSError):  # a closed pipe (spn ... 2>&1 | head) loses them, as it would
            os.write(2, b"".join(passed))


_DECODER_PREFIXES = ("Corrupt JPEG data", "Premature end of JPEG file", "Invalid SOS parameters for sequential JPEG",
                     "Inconsistent progression sequence", "Unsupported marker type",
                     "Warning: unknown JFIF revision number", "Bogus marker length", "Bogus Huffman table",
                     "Huffman table 0x", "Invalid JPEG file structure")  # fmt: skip
"""Start of libjpeg's messages for damaged or unusual JPEG data (jerror.h)."""


def decode(data: bytes, path: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Evidence:
    """Hash, sniff, bound and decode image bytes already in memory (``path`` labels errors).

    See :func:`load_image`; raises :class:`EvidenceError` likewise.
    """
    if not data:
        raise EvidenceError(path, "empty file (0 bytes)")
    if len(data) > DEFAULT_MAX_BYTES:
        _check_size(path, len(data), DEFAULT_MAX_BYTES)
    digest = hashlib.sha256(data).hexdigest()
    try:
        fmt, rows, cols, structure = sniff(data)
    except ValueError as exc:
        raise EvidenceError(path, str(exc)) from None
    if rows * cols > max_pixels:
        raise EvidenceError(
            path, f"{cols}x{rows} (cols x rows) = {rows * cols:,} pixels exceeds the bound of {max_pixels:,} "
            "(--max-pixels)"
        )
    if min(rows, cols) < MIN_SIDE:
        raise EvidenceError(path, f"{cols}x{rows} (cols x rows) is too small: both sides must be at least "
                                  f"{MIN_SIDE} pixels")
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR | cv2.IMREAD_IGNORE_ORIENTATION
    if fmt == "png" or fmt == "tiff":
        flags = cv2.IMREAD_UNCHANGED  # keeps 16 bits and alpha; never applies orientation
    exif = read_exif(data) if fmt in ("jpeg", "tiff") else {}
    if fmt == "heic":
        try:
            img, exif = _decode_heic(data)
        except Exception as exc:  # libheif's decoding errors, whatever their type
            raise EvidenceError(path, f"HEIC data could not be decoded ({exc})") from None
        if img.ndim == 3 and img.shape[2] in (3, 4):
            img = img[:, :, 2::-1]  # RGB(A) to OpenCV's BGR, alpha dropped
    elif fmt == "jpeg":
        with decoder_messages() as messages:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    else:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None or img.size == 0:
        raise EvidenceError(path, f"{fmt.upper()} data could not be decoded (corrupt or unsupported)")
    if fmt == "tiff":
        img = _sensor_orientation_tiff(img, data)
    if img.shape[:2] != (rows, cols):
        raise EvidenceError(path, f"decoded size {img.shape[1]}x{img.shape[0]} differs from the header's {cols}x{rows} "
                                  "(cols x rows)")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.dtype == np.uint8:
        depth = 8
    elif img.dtype == np.uint16:
        depth = 16
    else:
        raise EvidenceError(path, f"unsupported sample type {img.dtype} (allowed: 8- or 16-bit integer)")
    channels = img.shape[2]
    if channels == 3:  # OpenCV's BGR to RGB, in place where it may: one contiguous pass (a reversed-stride view
        own = img.flags.writeable and img.flags.c_contiguous  # casts slowly; HEIC's planes are read-only)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img if own else None)
    elif channels == 4:  # BGRA to RGB, alpha dropped
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif channels == 2:
        img = np.ascontiguousarray(img[:, :, :1])  # grey + alpha
    quality = jpegtables.estimate_quality(structure) if structure is not None else None
    return Evidence(
        path=path,
        sha256=digest,
        size_bytes=len(data),
        format=fmt,
        samples=np.ascontiguousarray(img),
        bit_depth=depth,
        saturation=255.0,
        jpeg=structure,
        quality=quality,
        exif=exif,
        warnings=messages if fmt == "jpeg" else [],
    )
