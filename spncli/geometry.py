"""Where a crop, or a smaller image, sits in a frame: one rule for images, residuals and fingerprints.

The rule (``GEOMETRY_RULE``): a region of ``h`` rows sits in a frame of
``H`` rows so that its anchor ``A(h) = 2·floor(h/4)`` (the centre rounded down
to an even number) lies on the frame's anchor ``A(H)``; its first row is

    offset(H, h) = A(H) - A(h)

(likewise for columns). Offsets are even, so a crop keeps the 2x2
colour-filter-array phase of the full frame. Because offsets are differences
of one anchor function they compose exactly: a crop of ``c`` taken from a crop
of ``h`` lands where a crop of ``c`` taken from the frame lands,

    offset(H, h) + offset(h, c) = offset(H, c),

so a probe cropped to any size and a fingerprint cropped to any other size
line up without knowing the frame, and a smaller image is placed in a larger
fingerprint by the same rule. (Rounding each centre offset separately, as
``((H - h) // 2) & ~1`` does, loses 2 pixels in the composition: a 513-pixel
probe crop and a 512-pixel fingerprint crop of one frame then miss each other
entirely.) The one exception: when ``h = H - 1`` and ``h ≡ 3 (mod 4)`` the
anchored region would run one pixel past the frame, and the offset is clamped
to 0; alignments through such a crop can be off by 2 pixels (``--max-shift 2``
finds them).
"""

from __future__ import annotations

import re

import numpy as np

__all__ = [
    "GEOMETRY_RULE",
    "parse_crop",
    "anchor",
    "crop_offsets",
    "centre_crop",
    "crop_geometry",
    "alignment_note",
]

GEOMETRY_RULE = "anchor-even/1: offset(H, h) = A(H) - A(h), A(n) = 2*floor(n/4), clamped into the frame"
"""Name and statement of the placement rule, recorded with every fingerprint."""

_CROP = re.compile(r"^\s*(\d+)\s*(?:[xX×]\s*(\d+))?\s*$")


def parse_crop(text: str | None) -> tuple[int, int] | None:
    """Parse ``"512"`` (square) or ``"2000x3008"`` (rows x cols); None passes through.

    Raises
    ------
    ValueError
        Naming the allowed forms.
    """
    if text is None or text == "":
        return None
    m = _CROP.match(text)
    if not m:
        raise ValueError(f"crop {text!r} is not N or HxW (rows x columns), e.g. 512 or 2000x3008")
    rows = int(m.group(1))
    cols = int(m.group(2)) if m.group(2) else rows
    if rows < 16 or cols < 16:
        raise ValueError(f"crop {rows}x{cols} is too small: both sides must be at least 16")
    return rows, cols


def anchor(n: int) -> int:
    """The anchor of a side of ``n`` pixels: its centre rounded down to an even number, ``2·floor(n/4)``."""
    return (n // 2) & ~1


def _offset(full: int, part: int) -> int:
    return min(anchor(full) - anchor(part), (full - part) & ~1)


def crop_offsets(shape: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """Top-left (row, col) of a region of ``size`` placed in ``shape`` by the rule of this module.

    Parameters
    ----------
    shape : tuple of int
        The frame (rows, cols, ...); only the first two are used.
    size : (rows, cols)
        The region, at most the frame in both sides.

    Returns
    -------
    (row, col) : tuple of int
        Even offsets ``A(H) - A(h)`` and ``A(W) - A(w)`` (see the module docstring).

    Raises
    ------
    ValueError
        If the region is larger than the frame.
    """
    (rows, cols), (h, w) = shape[:2], size
    if h > rows or w > cols:
        raise ValueError(f"crop {h}x{w} (rows x cols) is larger than the image, {rows}x{cols}")
    return _offset(rows, h), _offset(cols, w)


def centre_crop(x: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Crop of the first two axes placed by :func:`crop_offsets` (a view); ``size=None`` returns ``x``."""
    if size is None:
        return x
    r, c = crop_offsets(x.shape, size)
    return x[r : r + size[0], c : c + size[1]]


def crop_geometry(frame: tuple[int, int], size: tuple[int, int] | None) -> dict:
    """What a fingerprint records of its geometry: the rule, the frame, and its region in it.

    Parameters
    ----------
    frame : (rows, cols)
        Size of the source images.
    size : (rows, cols) or None
        The crop (None: the whole frame).
    """
    size = tuple(frame[:2]) if size is None else tuple(size)
    return {
        "rule": GEOMETRY_RULE,
        "frame": [int(frame[0]), int(frame[1])],
        "origin": [int(v) for v in crop_offsets(frame, size)],
        "size": [int(size[0]), int(size[1])],
    }


def alignment_note(image: tuple[int, int], frame: tuple[int, int] | None, max_shift: int) -> str | None:
    """A line for a match record when the image's size differs from the fingerprint's source frame.

    Parameters
    ----------
    image : (rows, cols)
        The probe image's size (before any crop).
    frame : (rows, cols) or None
        The frame the fingerprint was estimated from; None when the
        fingerprint did not record it (built by an older version with a crop).
    max_shift : int
        The shift searched around the rule's alignment.

    Returns
    -------
    str or None
        None when the image has the fingerprint's frame (either orientation):
        the alignment is then exact by construction.
    """
    search = (
        f"the peak was searched within ±{max_shift} pixels"
        if max_shift
        else "if it was cropped off-centre, search with --max-shift N (e.g. 300)"
    )
    if frame is None:
        return (
            "the fingerprint does not record its frame (built with a crop by an older version): its placement may "
            f"differ by 2 pixels from this version's rule; {search if max_shift else 'use --max-shift 2'}"
        )
    rows, cols = image[:2]
    if (rows, cols) in ((frame[0], frame[1]), (frame[1], frame[0])):
        return None
    return (
        f"image {rows}x{cols} (rows x cols) differs from the fingerprint's frame {frame[0]}x{frame[1]}: "
        f"placed centred by the geometry rule, which holds for a centre crop of the frame; {search}"
    )
