"""Centre crops and orientation, applied identically to residuals and fingerprints."""

from __future__ import annotations

import re

import numpy as np

__all__ = ["parse_crop", "crop_offsets", "centre_crop"]

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


def crop_offsets(shape: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """Top-left (row, col) of a centre crop, rounded down to even numbers.

    Even offsets keep the 2x2 colour-filter-array phase of the crop equal to
    that of the full frame, so the crop of a residual and the crop of a
    fingerprint line up on the same CFA sub-lattices.
    """
    (rows, cols), (h, w) = shape[:2], size
    if h > rows or w > cols:
        raise ValueError(f"crop {h}x{w} (rows x cols) is larger than the image, {rows}x{cols}")
    return ((rows - h) // 2) & ~1, ((cols - w) // 2) & ~1


def centre_crop(x: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Centre crop of the first two axes (a view); ``size=None`` returns ``x``."""
    if size is None:
        return x
    r, c = crop_offsets(x.shape, size)
    return x[r : r + size[0], c : c + size[1]]
