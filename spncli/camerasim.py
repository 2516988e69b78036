"""Training pairs that look like real cameras: PRNU in the raw domain, then the camera's pipeline.

A clean scene is turned into linear light, sampled by a Bayer colour-filter
array, multiplied by ``1 + K`` (the PRNU acts on the raw photo-response),
given shot and read noise, demosaiced, white-balanced, tone-mapped, JPEG
compressed by the "camera" at a high quality, and then re-compressed at the
degraded quality with a random 8x8 grid offset (double compression). The
target is the PRNU term of the final image, ``γ·I·K`` (γ the slope of the
tone curve in log-log, so that it has the units of the residual).

Real PRNU patterns come from the Praktica fingerprints in
``../shared/data/praktica-fingerprints`` (decoded ``(png - 127.5) / 32.5``
and re-scaled to a physical strength); synthetic white Gaussian ones are
mixed in.

References
----------
.. [1] M. Chen, J. Fridrich, M. Goljan, J. Lukáš, "Determining image origin
   and integrity using sensor noise", IEEE TIFS 3(1), 2008 (the model
   ``I = I0 + I0·K + Θ``). :doi:`10.1109/TIFS.2007.916285`
.. [2] T. Brooks et al., "Unprocessing images for learned raw denoising",
   CVPR 2019 (inverting a camera pipeline to synthesise raw data).
   :doi:`10.1109/CVPR.2019.01129`
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .conditioning import condition_vector
from .jpegtables import parse_jpeg
from .residual import GREY_WEIGHTS, ResidualParams, denoise_noise
from .synthetic import dead_leaves

__all__ = ["ContentPool", "PrnuPool", "Sample", "simulate", "GAMMA"]

GAMMA = 1 / 2.2
_BAYER = {  # pattern name -> (OpenCV conversion, offsets of R and B in the 2x2 cell)
    "RGGB": (cv2.COLOR_BayerRG2RGB, (0, 0), (1, 1)),
    "BGGR": (cv2.COLOR_BayerBG2RGB, (1, 1), (0, 0)),
    "GRBG": (cv2.COLOR_BayerGR2RGB, (0, 1), (1, 0)),
    "GBRG": (cv2.COLOR_BayerGB2RGB, (1, 0), (0, 1)),
}


class ContentPool:
    """Clean scene content: CBSD68 images downscaled by 2 (to remove their JPEG traces) and dead leaves.

    Parameters
    ----------
    folders : list of Path
        Folders of PNG/JPEG content images (may be empty or absent).
    dead_leaves_fraction : float
        Share of scenes drawn from the dead-leaves generator.
    """

    def __init__(self, folders=(), dead_leaves_fraction: float = 0.3):
        self.images = []
        for folder in folders:
            for p in sorted(Path(folder).glob("*")):
                img = cv2.imread(str(p), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
                if img is not None:
                    small = cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
                    self.images.append(np.ascontiguousarray(small[:, :, ::-1]).astype(np.float32))
        self.dead_leaves_fraction = dead_leaves_fraction if self.images else 1.0

    def draw(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """An RGB scene (size, size, 3), float32 0..255."""
        if rng.uniform() < self.dead_leaves_fraction:
            return dead_leaves((size, size), rng, n=int(rng.integers(100, 600)))
        img = self.images[int(rng.integers(len(self.images)))]
        if min(img.shape[:2]) < size:
            img = cv2.resize(img, None, fx=size / min(img.shape[:2]) * 1.01, fy=size / min(img.shape[:2]) * 1.01)
        r = int(rng.integers(0, img.shape[0] - size + 1))
        c = int(rng.integers(0, img.shape[1] - size + 1))
        out = img[r : r + size, c : c + size]
        if rng.uniform() < 0.5:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)


class PrnuPool:
    """PRNU patterns: real (Praktica fingerprints, unit-normalised) and synthetic.

    Parameters
    ----------
    folder : Path or None
        ``praktica-fingerprints`` folder (PNG, decoded ``(png - 127.5)/32.5``).
    std_range : (float, float)
        Physical strength drawn uniformly (std of K).
    """

    def __init__(self, folder=None, std_range=(0.003, 0.015)):
        self.patterns = []
        if folder is not None and Path(folder).is_dir():
            for p in sorted(Path(folder).glob("*.png")):
                png = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
                if png is not None:
                    k = (png.astype(np.float32) - 127.5) / 32.5
                    self.patterns.append((k - k.mean()) / k.std())
        self.std_range = std_range

    def draw(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """A PRNU factor K (size, size) float32 with a random physical strength."""
        std = rng.uniform(*self.std_range)
        if self.patterns and rng.uniform() < 0.7:
            k = self.patterns[int(rng.integers(len(self.patterns)))]
            r = int(rng.integers(0, k.shape[0] - size + 1))
            c = int(rng.integers(0, k.shape[1] - size + 1))
            k = np.rot90(k[r : r + size, c : c + size], int(rng.integers(4)))
            return np.ascontiguousarray(k, dtype=np.float32) * np.float32(std)
        return rng.normal(0, std, (size, size)).astype(np.float32)


@dataclass
class Sample:
    """One training pair (cropped to ``patch`` from the centre of a larger simulated image)."""

    image: np.ndarray  # (3, P, P) float32, -0.5..0.5
    residual: np.ndarray  # (1, P, P) classic residual / RESIDUAL_SCALE
    target: np.ndarray  # (1, P, P) PRNU term / RESIDUAL_SCALE
    cond: np.ndarray  # (COND_DIM,)
    quality: int


def _tone(x: np.ndarray) -> np.ndarray:
    """sRGB-like gamma with a mild S-curve; x linear in 0..1."""
    y = np.power(np.clip(x, 0, 1), GAMMA)
    return np.clip(y + 0.08 * np.sin(2 * np.pi * y) / (2 * np.pi), 0, 1)


def simulate(
    scene: np.ndarray,
    k: np.ndarray,
    rng: np.random.Generator,
    *,
    quality: int,
    camera_quality: int | None = None,
    patch: int = 96,
    scale: float = 4.0,
    params: ResidualParams = ResidualParams(),
) -> Sample:
    """Simulate a camera image carrying PRNU ``k``, double-compress it, return a training pair.

    Parameters
    ----------
    scene : ndarray (S, S, 3) float32 0..255
        Clean content (S >= patch + 32; S a multiple of 8 plus 8 for the grid offset).
    k : ndarray (S, S) float32
    quality : int
        IJG quality of the re-compression (1-100).
    camera_quality : int or None
        The camera's own JPEG quality (default: drawn in 88-98).
    patch : int
        Side of the returned patch, taken from the centre.
    scale : float
        Residual and target are divided by this (the network's RESIDUAL_SCALE).
    """
    size = scene.shape[0]
    pattern = list(_BAYER)[int(rng.integers(4))]
    code, (rr, rc), (br, bc) = _BAYER[pattern]
    exposure = rng.uniform(0.35, 1.0)
    linear = np.power(scene / 255.0, 1 / GAMMA) * exposure
    wb = np.array([rng.uniform(1.6, 2.4), 1.0, rng.uniform(1.3, 2.0)], np.float32)
    raw = linear[:, :, 1].copy()
    raw[rr::2, rc::2] = linear[rr::2, rc::2, 0] / wb[0]
    raw[br::2, bc::2] = linear[br::2, bc::2, 2] / wb[2]
    full = 4095.0
    electrons = raw * full * (1.0 + k)  # PRNU acts on the photo-response
    shot = rng.normal(0, 1, raw.shape) * np.sqrt(np.maximum(electrons, 0) * rng.uniform(0.3, 1.2))
    read = rng.normal(0, rng.uniform(1.0, 4.0), raw.shape)
    raw16 = np.clip(np.rint(electrons + shot + read), 0, full).astype(np.uint16)
    rgb = cv2.cvtColor(raw16, code)[:, :, ::-1].astype(np.float32) / full  # OpenCV's "RGB" Bayer output is BGR
    rgb *= wb[None, None, :]
    out8 = np.clip(np.rint(_tone(rgb) * 255.0), 0, 255).astype(np.uint8)
    cq = camera_quality or int(rng.integers(88, 99))
    ok, cam = cv2.imencode(".jpg", out8[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, cq])
    decoded = cv2.imdecode(cam, cv2.IMREAD_COLOR)
    dr, dc = (int(v) for v in rng.integers(0, 8, size=2))  # re-compression grid offset
    crop = size - 8
    decoded = decoded[dr : dr + crop, dc : dc + crop]
    k = k[dr : dr + crop, dc : dc + crop]
    ok, data = cv2.imencode(
        ".jpg",
        np.ascontiguousarray(decoded),
        [
            cv2.IMWRITE_JPEG_QUALITY,
            int(quality),
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
        ],
    )
    data = data.tobytes()
    final = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32)
    grey_w = np.zeros(final.shape[:2], np.float32)
    for c in range(3):
        grey_w += GREY_WEIGHTS[c] * denoise_noise(final[:, :, c], params)
    grey_i = np.tensordot(final, GREY_WEIGHTS, axes=([2], [0]))
    target = GAMMA * grey_i * k
    o = (crop - patch) // 2
    o -= o % 2  # keep the CFA phase of the crop
    sl = (slice(o, o + patch), slice(o, o + patch))
    luma = parse_jpeg(data).tables[0]
    return Sample(
        image=np.ascontiguousarray((final[sl].transpose(2, 0, 1) / 255.0 - 0.5), dtype=np.float32),
        residual=(grey_w[sl] / scale)[None].astype(np.float32),
        target=(target[sl] / scale)[None].astype(np.float32),
        cond=condition_vector(int(quality), luma),
        quality=int(quality),
    )
