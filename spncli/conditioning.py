"""The restoration network's condition: the compression level read from the file's tables.

Shared by inference (:mod:`spncli.restoration`) and the training-pair simulator
(:mod:`spncli.camerasim`), so that neither imports the other. numpy only.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .geometry import crop_offsets
from .jpegdomain import AwareSettings, LumaCoefficients, compression_aware_residual, survival_map
from .residual import ResidualParams

__all__ = [
    "COND_QUALITY_SCALE",
    "NETWORK_AWARE_SETTINGS",
    "NoQuantizationTables",
    "SURVIVAL_CHANNELS",
    "condition_vector",
    "network_inputs",
    "pool_survival",
]

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


SURVIVAL_CHANNELS = 2
"""Channels of the survival map (:func:`spncli.jpegdomain.survival_map`): binary and 1/q-weighted."""

NETWORK_AWARE_SETTINGS = replace(AwareSettings(), wiener="never")
"""The compression-aware residual the v2 network refines: the shipped weighting, before any Wiener filter."""


def network_inputs(
    grey: np.ndarray,
    coefficients: LumaCoefficients,
    crop: tuple[int, int] | None = None,
    params: ResidualParams = ResidualParams(),
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The v2 network's residual and survival inputs, computed as inference computes them.

    One function for training (:func:`spncli.camerasim.simulate_v2`) and
    inference (:mod:`spncli.restoration`): the compression-aware residual of
    the full frame on the file's own 8x8 grid, centre-cropped, CFA zero-mean,
    no Wiener filter (:data:`NETWORK_AWARE_SETTINGS`); and the per-block
    survival map of the file expanded to pixels and cropped to the same region,
    so that pooling it over 8x8 cells of any tile that starts on a multiple of 8
    of a crop whose offsets are multiples of 8 gives the file's blocks exactly.

    Parameters
    ----------
    grey : ndarray (rows, cols) float32
        Full-frame grey residual before post-processing.
    coefficients : LumaCoefficients
        Of the same file.
    crop : (rows, cols) or None
        Centre crop (:func:`spncli.geometry.crop_offsets`).
    params : ResidualParams

    Returns
    -------
    residual : ndarray (h, w) float32
    survival : ndarray (h, w, SURVIVAL_CHANNELS) float32
        Block-constant survival of the region, per pixel.
    info : dict
        :func:`spncli.jpegdomain.compression_aware_residual`'s record, plus the crop offsets.
    """
    residual, info = compression_aware_residual(
        grey, coefficients, crop=crop, params=params, settings=NETWORK_AWARE_SETTINGS
    )
    rows, cols = grey.shape
    r0, c0 = (0, 0) if crop is None else crop_offsets((rows, cols), crop)
    h, w = residual.shape
    blocks = survival_map(coefficients)
    b0, b1 = r0 // 8, c0 // 8
    sub = blocks[b0 : -(-(r0 + h) // 8), b1 : -(-(c0 + w) // 8)]
    pix = np.repeat(np.repeat(sub, 8, axis=0), 8, axis=1)
    survival = np.ascontiguousarray(pix[r0 - 8 * b0 : r0 - 8 * b0 + h, c0 - 8 * b1 : c0 - 8 * b1 + w])
    return residual, survival, info | {"crop_offsets": [int(r0), int(c0)]}


def pool_survival(survival: np.ndarray) -> np.ndarray:
    """(h, w, C) per-pixel survival, sides multiples of 8 -> (C, h/8, w/8): the mean of each 8x8 cell."""
    h, w, c = survival.shape
    if h % 8 or w % 8:
        raise ValueError(f"survival map sides must be multiples of 8, got {h}x{w}")
    return np.ascontiguousarray(survival.reshape(h // 8, 8, w // 8, 8, c).mean(axis=(1, 3)).transpose(2, 0, 1))
