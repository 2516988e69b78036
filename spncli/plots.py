"""Small pictures drawn with OpenCV (no plotting library): evaluation bars, residual details, thumbnails."""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["detail_png", "eval_bars", "png_bytes", "preview_png", "similarity_png", "thumbnail_jpeg"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def png_bytes(img: np.ndarray) -> bytes:
    """PNG encoding of a uint8 image (BGR or grey)."""
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def preview_png(w: np.ndarray, max_side: int | None = None) -> bytes:
    """8-bit PNG of a residual, clipped at ±3 standard deviations (optionally downscaled)."""
    s = float(w.std()) or 1.0
    img = np.clip((w / (6 * s) + 0.5) * 255.0, 0, 255).astype(np.uint8)
    if max_side and max(img.shape) > max_side:
        f = max_side / max(img.shape)
        img = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    return png_bytes(img)


def detail_png(w: np.ndarray, side: int = 256, percentiles: tuple[float, float] = (1.0, 99.0)) -> bytes:
    """8-bit PNG of the residual's centre ``side`` x ``side`` crop at 1:1, contrast-stretched.

    A whole residual downscaled for display averages its noise away into a
    near-uniform grey; a 1:1 crop stretched between its 1st and 99th
    percentiles shows the texture an examiner expects of sensor noise (and
    any scene edges the denoiser left in it).
    """
    rows, cols = w.shape[:2]
    r, c = max(0, (rows - side) // 2), max(0, (cols - side) // 2)
    crop = np.asarray(w[r : r + side, c : c + side], np.float32)
    lo, hi = np.percentile(crop, percentiles)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return png_bytes(np.clip((crop - lo) * scale, 0, 255).astype(np.uint8))


def thumbnail_jpeg(pixels: np.ndarray, max_side: int = 320, quality: int = 85) -> bytes:
    """Small JPEG of an image as stored (RGB or grey float 0..255, sensor orientation, never rotated)."""
    img = np.clip(pixels, 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 3:
        img = img[:, :, ::-1]  # RGB to OpenCV's BGR
    f = max_side / max(img.shape[:2])
    if f < 1:
        img = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def eval_bars(rows: list[dict], threshold: float, title: str) -> np.ndarray:
    """Grouped bars of the median matching PCE per quality (log scale), classic vs restored.

    Parameters
    ----------
    rows : list of dict
        :func:`spncli.evaluation.summarize` rows.
    threshold : float
        Drawn as a dashed line.

    Returns
    -------
    ndarray, uint8 (H, W, 3), BGR
    """
    width, height, left, bottom, top = 760, 420, 70, 60, 50
    img = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(img, title, (left, 30), _FONT, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    top_val = max([threshold] + [r.get(k) or 0 for r in rows for k in ("classic_median", "restored_median")]) * 2
    lmax = math.log10(max(top_val, 10))

    def y_of(v):
        v = max(v, 1.0)
        return int(height - bottom - (height - bottom - top) * math.log10(v) / lmax)

    for dec in range(int(lmax) + 1):
        y = y_of(10**dec)
        cv2.line(img, (left, y), (width - 20, y), (225, 225, 225), 1)
        cv2.putText(img, f"{10**dec:g}", (10, y + 5), _FONT, 0.45, (90, 90, 90), 1, cv2.LINE_AA)
    yt = y_of(threshold)
    for x in range(left, width - 20, 12):
        cv2.line(img, (x, yt), (x + 6, yt), (0, 0, 200), 1)
    cv2.putText(img, f"PCE {threshold:g}", (width - 110, yt - 6), _FONT, 0.45, (0, 0, 200), 1, cv2.LINE_AA)
    n = max(len(rows), 1)
    group = (width - 20 - left) / n
    colours = {"classic": (160, 160, 160), "restored": (200, 120, 30)}
    for i, r in enumerate(rows):
        x0 = int(left + i * group + group * 0.15)
        bar = int(group * 0.3)
        for j, method in enumerate(("classic", "restored")):
            v = r.get(f"{method}_median")
            if v is None:
                continue
            x = x0 + j * bar
            cv2.rectangle(img, (x, y_of(v)), (x + bar - 4, height - bottom), colours[method], -1)
            cv2.putText(img, f"{v:.0f}", (x, y_of(v) - 4), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(
            img, str(r["quality"]), (x0 + bar // 2, height - bottom + 20), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA
        )
    for j, (method, colour) in enumerate(colours.items()):
        cv2.rectangle(img, (left + j * 130, height - 25), (left + j * 130 + 14, height - 11), colour, -1)
        cv2.putText(img, method, (left + j * 130 + 20, height - 13), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "median matching PCE (log)", (left + 280, height - 13), _FONT, 0.45, (60, 60, 60), 1, cv2.LINE_AA)
    return img


def similarity_png(z: np.ndarray, order: np.ndarray, sizes: list[int], threshold: float, side: int = 640) -> bytes:
    """The pair scores as a heat map, images ordered by cluster, each cluster of two or more framed.

    Parameters
    ----------
    z : ndarray, shape (N, N)
        Pair scores (z = signed square root of the PCE at zero shift).
    order : ndarray of int, shape (N,)
        Image order (clusters contiguous, in the order of ``sizes``).
    sizes : list of int
        Cluster sizes in that order.
    threshold : float
        The merge threshold on z, marked on the colour bar.

    Returns
    -------
    bytes
        PNG; colour: z clipped to [-3, top], with ``top`` at least twice the threshold.
    """
    n = len(order)
    m = np.asarray(z, np.float64)[np.ix_(order, order)]
    off = m[~np.eye(n, dtype=bool)]
    top = max(2.0 * threshold, float(np.percentile(off, 99)) if off.size else 0.0, 1.0)
    norm = np.clip((m + 3.0) / (top + 3.0) * 255.0, 0, 255).astype(np.uint8)
    np.fill_diagonal(norm, 255)
    cell = max(1, side // max(n, 1))
    img = cv2.applyColorMap(cv2.resize(norm, (n * cell, n * cell), interpolation=cv2.INTER_NEAREST),
                            cv2.COLORMAP_VIRIDIS)  # fmt: skip
    if img.shape[0] > side:
        img = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
    f = img.shape[0] / n
    start = 0
    for size in sizes:
        if size > 1:
            a, b = int(round(start * f)), int(round((start + size) * f)) - 1
            cv2.rectangle(img, (a, a), (b, b), (60, 60, 255), 1)
        start += size
    h = img.shape[0]
    pad_top, pad_right = 30, 120
    canvas = np.full((h + pad_top + 10, h + pad_right, 3), 255, np.uint8)
    canvas[pad_top : pad_top + h, :h] = img
    cv2.putText(canvas, f"{n} images ordered by cluster (framed: clusters)", (0, 20), _FONT, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)  # fmt: skip
    bar = cv2.applyColorMap(np.linspace(255, 0, h).astype(np.uint8)[:, None].repeat(14, axis=1), cv2.COLORMAP_VIRIDIS)
    x0 = h + 10
    canvas[pad_top : pad_top + h, x0 : x0 + 14] = bar

    def y_of(v: float) -> int:
        return pad_top + int(round((1.0 - (v + 3.0) / (top + 3.0)) * (h - 1)))

    for v, label in ((top, f"z {top:.0f}"), (0.0, "z 0"), (-3.0, "z -3")):
        cv2.putText(canvas, label, (x0 + 18, y_of(v) + 4), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    yt = y_of(threshold)
    cv2.line(canvas, (x0 - 4, yt), (x0 + 18, yt), (0, 0, 200), 2)
    cv2.putText(canvas, f"merge {threshold:.2f}", (x0 + 18, yt - 6), _FONT, 0.4, (0, 0, 200), 1, cv2.LINE_AA)
    return png_bytes(canvas)
