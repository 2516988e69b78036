"""The restoration network's condition: the compression level read from the file's tables.

Shared by inference (:mod:`spncli.restoration`) and the training-pair simulator
(:mod:`spncli.camerasim`), so that neither imports the other. numpy only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["COND_QUALITY_SCALE", "NoQuantizationTables", "condition_vector"]

COND_QUALITY_SCALE = 100.0


class NoQuantizationTables(ValueError):
    """The image carries no JPEG quantization tables and no quality was given: the compression level is unknown."""


def condition_vector(quality: int, luma_table: np.ndarray) -> np.ndarray:
    """Network condition: quality/100, then the 64 luminance-table entries as log(q)/log(255).

    Parameters
    ----------
    quality : int
        IJG-equivalent quality, 1..100 (:func:`spncli.jpegtables.estimate_quality`).
    luma_table : ndarray (8, 8) or (64,)
        The luminance quantization table (natural order), entries 1..65535.

    Returns
    -------
    ndarray (65,) float32
    """
    table = np.asarray(luma_table, float).ravel()
    if table.size != 64:
        raise ValueError(f"a luminance quantization table has 64 entries, not {table.size}")
    return np.concatenate([[quality / COND_QUALITY_SCALE], np.log(np.maximum(table, 1)) / np.log(255.0)]).astype(
        np.float32
    )
