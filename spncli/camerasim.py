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

For the v2 network (:func:`simulate_v2`) the content is also full-resolution
photographs (the Dresden ``_0`` naturals, downscaled x2 or more to erase their
own sensor noise), the PRNU also fingerprints estimated from the Dresden ``_0``
flat-fields (:func:`write_flat_fingerprints`), and the input residual is the
compression-aware one, computed by :func:`spncli.conditioning.network_inputs`
exactly as inference computes it. Files of the report units (``_1``) are
refused: they must never reach training (:func:`check_training_file`).

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

from .conditioning import condition_vector, network_inputs, pool_survival
from .jpegdomain import read_luma_coefficients
from .jpegtables import parse_jpeg
from .residual import GREY_WEIGHTS, ResidualParams, denoise_noise, grey_residual
from .synthetic import dead_leaves

__all__ = [
    "ContentPool",
    "PrnuPool",
    "Sample",
    "simulate",
    "simulate_v2",
    "GAMMA",
    "REPORT_UNITS",
    "ReportUnitInTraining",
    "check_training_file",
    "is_report_unit",
    "training_folder",
    "write_flat_fingerprints",
]

GAMMA = 1 / 2.2
_BAYER = {  # pattern name -> (OpenCV conversion, offsets of R and B in the 2x2 cell)
    "RGGB": (cv2.COLOR_BayerRG2RGB, (0, 0), (1, 1)),
    "BGGR": (cv2.COLOR_BayerBG2RGB, (1, 1), (0, 0)),
    "GRBG": (cv2.COLOR_BayerGR2RGB, (0, 1), (1, 0)),
    "GBRG": (cv2.COLOR_BayerGB2RGB, (1, 0), (0, 1)),
}

REPORT_UNITS = "_1"
"""Camera units of the report split: the Dresden ``<Make>_<Model>_1`` units choose nothing and train nothing."""


class ReportUnitInTraining(ValueError):
    """A file of a report unit (``_1``) was offered to training."""


def is_report_unit(path: str | Path) -> bool:
    """Whether a file is of a Dresden report unit, ``<Make>_<Model>_1_<number>`` (device: all before the last ``_``)."""
    stem = Path(path).stem
    device = stem.rsplit("_", 1)[0] if "_" in stem else ""
    return device.endswith(REPORT_UNITS) and device.count("_") >= 2


def training_folder(folder: str | Path, pattern: str = "*") -> tuple[list[Path], list[Path]]:
    """Files of a folder that may train (sorted), and the report-unit files left out (recorded, never silent)."""
    files = sorted(Path(folder).glob(pattern)) if Path(folder).is_dir() else []
    return [p for p in files if not is_report_unit(p)], [p for p in files if is_report_unit(p)]


def check_training_file(path: str | Path) -> Path:
    """Return ``path``, or raise :class:`ReportUnitInTraining` for a file of a Dresden report unit (``_1``)."""
    if is_report_unit(path):
        device = Path(path).stem.rsplit("_", 1)[0]
        raise ReportUnitInTraining(
            f"{path}: file of the report unit {device} (units ending {REPORT_UNITS} must never reach training; "
            "allowed: the selection units _0, CBSD68, Praktica fingerprints)"
        )
    return Path(path)


class ContentPool:
    """Clean scene content: images downscaled by ``downscale`` (>= 2, erasing their own sensor noise
    and JPEG traces) and dead leaves.

    Parameters
    ----------
    folders : list of Path
        Folders of PNG/JPEG content images (may be empty or absent): CBSD68,
        the Dresden naturals. Files of report units (``_1``) are left out and
        listed in ``excluded`` (:func:`training_folder`); ``files`` lists what was kept.
    dead_leaves_fraction : float
        Share of scenes drawn from the dead-leaves generator.
    downscale : float
        Area-downscaling factor, at least 2.
    """

    def __init__(self, folders=(), dead_leaves_fraction: float = 0.3, downscale: float = 2.0):
        if downscale < 2:
            raise ValueError(f"content downscale must be at least 2 (erases the content's own noise), got {downscale}")
        self.images = []
        self.files: list[Path] = []
        self.excluded: list[Path] = []
        for folder in folders:
            kept, excluded = training_folder(folder)
            self.excluded += excluded
            for p in kept:
                img = cv2.imread(str(check_training_file(p)), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
                if img is not None:
                    self.files.append(p)
                    small = cv2.resize(img, None, fx=1 / downscale, fy=1 / downscale, interpolation=cv2.INTER_AREA)
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
    folder : Path, list of Path, or None
        Folders of PNG fingerprints decoded ``(png - 127.5)/32.5``: the
        ``praktica-fingerprints`` and those of :func:`write_flat_fingerprints`.
        Files of report units (``_1``) are left out and listed in ``excluded``.
    std_range : (float, float)
        Physical strength drawn uniformly (std of K).
    """

    def __init__(self, folder=None, std_range=(0.003, 0.015)):
        self.patterns = []
        self.files: list[Path] = []
        self.excluded: list[Path] = []
        folders = [] if folder is None else [folder] if isinstance(folder, (str, Path)) else list(folder)
        for f in folders:
            kept, excluded = training_folder(f, "*.png")
            self.excluded += excluded
            for p in kept:
                png = cv2.imread(str(check_training_file(p)), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
                if png is not None:
                    self.files.append(p)
                    k = (png.astype(np.float32) - 127.5) / 32.5
                    self.patterns.append((k - k.mean()) / k.std())
        self.std_range = std_range

    def draw(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """A PRNU factor K (size, size) float32 with a random physical strength."""
        std = rng.uniform(*self.std_range)
        if self.patterns and rng.uniform() < 0.7:
            k = self.patterns[int(rng.integers(len(self.patterns)))]
            if min(k.shape) < size:
                k = np.tile(k, (-(-size // k.shape[0]), -(-size // k.shape[1])))
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
    survival: np.ndarray | None = None  # (SURVIVAL_CHANNELS, P/8, P/8), v2 only


def _tone(x: np.ndarray) -> np.ndarray:
    """sRGB-like gamma with a mild S-curve; x linear in 0..1."""
    y = np.power(np.clip(x, 0, 1), GAMMA)
    return np.clip(y + 0.08 * np.sin(2 * np.pi * y) / (2 * np.pi), 0, 1)


def _camera_jpeg(scene: np.ndarray, k: np.ndarray, rng: np.random.Generator, camera_quality: int | None) -> np.ndarray:
    """The camera: raw photo-response with PRNU ``k``, noise, demosaicing, tone curve, its own JPEG (BGR uint8)."""
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
    return decoded


def _recompress(
    decoded: np.ndarray, k: np.ndarray, rng: np.random.Generator, quality: int
) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Crop the camera image at a random 0-7 offset, re-compress it at ``quality`` (4:2:0) on the crop's grid.

    Returns the evidence bytes, their decoded RGB pixels (float32) and ``k`` cropped alike.
    """
    dr, dc = (int(v) for v in rng.integers(0, 8, size=2))  # re-compression grid offset
    crop = decoded.shape[0] - 8
    ok, data = cv2.imencode(
        ".jpg",
        np.ascontiguousarray(decoded[dr : dr + crop, dc : dc + crop]),
        [
            cv2.IMWRITE_JPEG_QUALITY,
            int(quality),
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
        ],
    )
    data = data.tobytes()
    final = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32)
    return data, np.ascontiguousarray(final), k[dr : dr + crop, dc : dc + crop]


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
    decoded = _camera_jpeg(scene, k, rng, camera_quality)
    crop = size - 8
    data, final, k = _recompress(decoded, k, rng, quality)
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


def simulate_v2(
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
    """A v2 training pair: double compression, the evidence JPEG on its own grid, the compression-aware input.

    The camera's JPEG (:func:`_camera_jpeg`) is cropped at a random offset
    (0-7 pixels each way, so its grid no longer meets the evidence's), then
    compressed again at ``quality`` (4:2:0) with the evidence grid starting at
    the crop's origin, as a cropped photo re-saved by an application. The
    input residual and survival map are :func:`spncli.conditioning.network_inputs`
    of that file (full frame, its own grid, centre patch at offsets that are
    multiples of 8); the target is the PRNU term ``γ·I·K`` of the same patch.

    Parameters
    ----------
    scene : ndarray (S, S, 3) float32 0..255
        Clean content, ``S = patch + 40`` (the patch sits at offset 16 of the evidence file).
    k : ndarray (S, S) float32
    quality, camera_quality, patch, scale, params
        As :func:`simulate`.
    """
    size = scene.shape[0]
    if patch % 8 or size - 8 < patch:
        raise ValueError(f"patch {patch} must be a multiple of 8 and at most the scene side {size} - 8")
    decoded = _camera_jpeg(scene, k, rng, camera_quality)
    data, final, k = _recompress(decoded, k, rng, quality)
    residual, survival, info = network_inputs(
        grey_residual(final, params), read_luma_coefficients(data), (patch, patch), params
    )
    r0, c0 = info["crop_offsets"]
    if r0 % 8 or c0 % 8:
        raise ValueError(f"patch offsets {r0, c0} are not on the 8x8 grid (scene side {size}, patch {patch})")
    sl = (slice(r0, r0 + patch), slice(c0, c0 + patch))
    target = GAMMA * np.tensordot(final, GREY_WEIGHTS, axes=([2], [0])) * k
    return Sample(
        image=np.ascontiguousarray((final[sl].transpose(2, 0, 1) / 255.0 - 0.5), dtype=np.float32),
        residual=(residual / scale)[None].astype(np.float32),
        target=(target[sl] / scale)[None].astype(np.float32),
        cond=condition_vector(int(quality), parse_jpeg(data).tables[0]),
        quality=int(quality),
        survival=pool_survival(survival),
    )


def write_flat_fingerprints(
    flats: str | Path,
    out: str | Path,
    units: str = "_0",
    crop: tuple[int, int] | None = None,
    exclude_centre: tuple[int, int] | None = None,
) -> list[Path]:
    """Estimate a fingerprint per camera unit from its flat-fields; write it as a unit-std PNG.

    The PNG has the Praktica encoding (``K = (png - 127.5) / 32.5``, ``K``
    divided by its standard deviation first), so :class:`PrnuPool` reads both
    alike. Only devices ending in ``units`` are used; a report-unit file
    (``_1``) is refused even if ``units`` asks for it.

    Parameters
    ----------
    flats : Path
        Folder of flat-field images named ``<device>_<number>.*`` (Dresden ``ff-jpg``).
    out : Path
        Folder to write ``<device>.png`` into (created; never the evidence folder).
    units : str
        Suffix of the devices to use.
    crop : (rows, cols) or None
        Centre crop (faster; None: full frame).
    exclude_centre : (rows, cols) or None
        Training fingerprints: estimate only the full-height strip left of
        this centre region (cut on the 8x8 grid), so that a network trained
        on them has never seen the PRNU of the region that validates it
        (:class:`spncli.training.SelectionValidation` scores that centre crop).

    Returns
    -------
    list of Path
        The PNGs written.
    """
    from .evidence import load_image
    from .fingerprint import FingerprintAccumulator
    from .geometry import centre_crop
    from .provenance import atomic_path

    from .geometry import crop_offsets

    files = [p for p in training_folder(flats)[0] if p.stem.rsplit("_", 1)[0].endswith(units)]
    devices = sorted({p.stem.rsplit("_", 1)[0] for p in files})
    Path(out).mkdir(parents=True, exist_ok=True)
    written = []
    for device in devices:
        acc = FingerprintAccumulator()
        for p in files:
            if p.stem.rsplit("_", 1)[0] == device:
                pixels = load_image(check_training_file(p)).pixels
                if exclude_centre is not None:
                    left = crop_offsets(pixels.shape, exclude_centre)[1] // 8 * 8
                    pixels = pixels[:, :left]
                acc.add(np.ascontiguousarray(centre_crop(pixels, crop)))
        kk = acc.finalize()
        kk = (kk - kk.mean()) / max(float(kk.std()), 1e-12)
        png = np.clip(np.rint(127.5 + 32.5 * kk), 0, 255).astype(np.uint8)
        target = Path(out) / f"{device}.png"
        with atomic_path(target) as tmp:
            ok, buf = cv2.imencode(".png", png)
            Path(tmp).write_bytes(buf.tobytes())
        written.append(target)
    return written
