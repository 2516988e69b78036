"""Synthetic cameras for demonstrations, tests and benchmarks.

A synthetic camera is a PRNU factor ``K`` (white Gaussian, std about 0.01:
within the 0.003-0.015 of real sensors). An exposure of a scene ``S`` gives
``I = S (1 + K) + shot noise + read noise``, clipped and JPEG-encoded like a
camera's output. Scenes are flat fields (for fingerprints) or "dead leaves"
(occluding discs of random size and colour: a standard model of natural image
statistics).

References
----------
.. [1] A. B. Lee, D. Mumford, J. Huang, "Occlusion models for natural images:
   a statistical study of a scale-invariant dead leaves model", Int. J.
   Computer Vision 41, 35-59, 2001. :doi:`10.1023/A:1011109015675`
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["synthetic_prnu", "flat_field", "dead_leaves", "expose", "encode_jpeg"]


def synthetic_prnu(shape: tuple[int, int], rng: np.random.Generator, std: float = 0.01) -> np.ndarray:
    """White Gaussian PRNU factor, float32 (rows, cols)."""
    return rng.normal(0.0, std, size=shape).astype(np.float32)


def flat_field(shape: tuple[int, int], rng: np.random.Generator, level: float = 180.0) -> np.ndarray:
    """A bright, nearly uniform RGB scene with mild vignetting, float32 (rows, cols, 3)."""
    rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    r2 = ((y - rows / 2) / rows) ** 2 + ((x - cols / 2) / cols) ** 2
    base = level * (1.0 - 0.3 * r2)
    tint = rng.uniform(0.9, 1.05, size=3).astype(np.float32)
    return base[:, :, None] * tint[None, None, :]


def dead_leaves(shape: tuple[int, int], rng: np.random.Generator, n: int = 600) -> np.ndarray:
    """A dead-leaves RGB scene [1]_: ``n`` discs, radii ~ 1/r^3, float32 (rows, cols, 3)."""
    rows, cols = shape
    img = np.full((rows, cols, 3), rng.uniform(40, 200, size=3), np.float32)
    rmin, rmax = 3.0, max(rows, cols) / 4
    u = rng.uniform(size=n)
    radii = (rmin**-2 - u * (rmin**-2 - rmax**-2)) ** -0.5  # density ~ r^-3 on [rmin, rmax]
    for r in np.sort(radii)[::-1]:
        center = (int(rng.integers(0, cols)), int(rng.integers(0, rows)))
        colour = tuple(float(c) for c in rng.uniform(20, 235, size=3))
        cv2.circle(img, center, int(r), colour, thickness=-1, lineType=cv2.LINE_AA)
    return cv2.GaussianBlur(img, (0, 0), 0.7)


def expose(
    scene: np.ndarray, k: np.ndarray, rng: np.random.Generator, read_noise: float = 1.5, gain: float = 0.25
) -> np.ndarray:
    """Sensor output ``S (1 + K)`` with Poisson-like shot noise and read noise, uint8 RGB."""
    signal = scene * (1.0 + k[:, :, None])
    shot = rng.normal(0.0, 1.0, size=scene.shape).astype(np.float32) * np.sqrt(np.maximum(signal, 0) * gain)
    noisy = signal + shot + rng.normal(0.0, read_noise, size=scene.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB uint8 image at IJG ``quality`` (OpenCV/libjpeg)."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()
