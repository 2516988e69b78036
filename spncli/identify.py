"""Camera-identification workflows over evidence files: gather, extract, fingerprint, match.

The functions here tie the signal modules to files and provenance. They never
print: per-file failures go to an ``on_error(path, reason)`` callback and
progress to an ``on_progress(path)`` callback, so that the CLI (or any other
caller) decides how to show them.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .evidence import DEFAULT_MAX_PIXELS, Evidence, EvidenceError, load_image
from .fingerprint import FingerprintAccumulator
from .geometry import centre_crop
from .pce import FingerprintSpectrum, MatchScore, ResidualSpectrum, correlation_surface, score
from .provenance import tool_info, utc_now
from .residual import ResidualParams, extract_residual
from .store import Fingerprint

__all__ = [
    "IMAGE_SUFFIXES",
    "gather_inputs",
    "cropped_pixels",
    "residual_of",
    "build_fingerprint",
    "MatchSettings",
    "Matcher",
    "decision_text",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".tif", ".tiff", ".webp"})
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"RIFF")


def _looks_like_image(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return any(head.startswith(sig) for sig in _SIGNATURES)


def gather_inputs(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Files named directly, and the image files below named folders.

    Folders are walked recursively in sorted order; a file below a folder is
    taken when its name has an image suffix or its first bytes carry a JPEG,
    PNG, TIFF or WebP signature. Symbolic links are not followed out of the folder,
    and each real file is yielded once. Files named directly are always
    yielded (so that a bad one gets its error line).
    """
    seen: set[Path] = set()
    for item in paths:
        p = Path(item)
        if not p.is_dir():
            yield p
            continue
        root = p.resolve()
        for dirpath, dirnames, filenames in os.walk(p, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                f = Path(dirpath) / name
                real = f.resolve()
                if not real.is_relative_to(root) or real in seen or not real.is_file():
                    continue
                if _looks_like_image(f):
                    seen.add(real)
                    yield f


def cropped_pixels(ev: Evidence, crop: tuple[int, int] | None) -> np.ndarray:
    """The evidence pixels after the centre crop (if any), contiguous.

    Raises
    ------
    EvidenceError
        If the crop is larger than the image.
    """
    try:
        return np.ascontiguousarray(centre_crop(ev.pixels, crop))
    except ValueError as exc:
        raise EvidenceError(ev.path, str(exc)) from None


def residual_of(ev: Evidence, params: ResidualParams, crop: tuple[int, int] | None) -> np.ndarray:
    """Noise residual of an evidence image, after the centre crop (if any); see :func:`cropped_pixels`."""
    return extract_residual(cropped_pixels(ev, crop), params)


def _quality_stats(qualities: list[int]) -> dict:
    if not qualities:
        return {"jpeg_images": 0}
    return {
        "jpeg_images": len(qualities),
        "quality_min": min(qualities),
        "quality_median": statistics.median(qualities),
        "quality_max": max(qualities),
    }


def build_fingerprint(
    paths: Iterable[Path],
    camera: str,
    *,
    params: ResidualParams = ResidualParams(),
    crop: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_error: Callable[[str, str], None] = lambda path, reason: None,
    on_progress: Callable[[str], None] = lambda path: None,
) -> tuple[np.ndarray, dict]:
    """Estimate a camera fingerprint from images, one at a time.

    Parameters
    ----------
    paths : iterable of Path
    camera : str
        Camera id recorded in the metadata.
    params : ResidualParams
    crop : (rows, cols) or None
        Centre crop applied to every image before extraction.
    max_pixels : int
    on_error, on_progress : callable
        Called with a file that failed (and the reason), or that is done.

    Returns
    -------
    k : ndarray, float32
    meta : dict
        Camera id, EXIF make/model/serial, image count and size, each source
        file's path and SHA-256 and quality, quality statistics, parameters,
        tool version, UTC times.

    Raises
    ------
    ValueError
        If no image could be used.
    """
    started = utc_now()
    acc = FingerprintAccumulator(params)
    sources, qualities, exif_seen = [], [], []
    for path in paths:
        try:
            ev = load_image(path, max_pixels=max_pixels)
            pixels = np.ascontiguousarray(centre_crop(ev.pixels, crop))
            acc.check(pixels)
            acc.add(pixels, ev.saturation)
        except EvidenceError as exc:
            on_error(exc.path, exc.reason)
            continue
        except ValueError as exc:
            on_error(str(path), str(exc))
            continue
        q = ev.quality.quality if ev.quality else None
        if q is not None:
            qualities.append(q)
        sources.append(
            {
                "path": str(path),
                "name": Path(path).name,
                "sha256": ev.sha256,
                "jpeg_quality": q,
                "rows": ev.shape[0],
                "cols": ev.shape[1],
            }
        )
        exif_seen.append(ev.exif)
        on_progress(str(path))
    if acc.count == 0:
        raise ValueError(f"no usable image for camera {camera!r}")
    k = acc.finalize()

    def agreed(key):
        values = {e.get(key) for e in exif_seen}
        return values.pop() if len(values) == 1 else (sorted(v for v in values if v) or [None])

    meta = {
        "camera": camera,
        "make": agreed("make"),
        "model": agreed("model"),
        "serial": agreed("serial"),
        "image_count": acc.count,
        "rows": int(k.shape[0]),
        "cols": int(k.shape[1]),
        "crop": list(crop) if crop else None,
        "sources": sources,
        "quality": _quality_stats(qualities),
        "saturated_fraction_mean": float(np.mean(acc.saturated_fraction)),
        "estimator": "ML: sum(W*I)/sum(I^2) per channel, saturated pixels weight 0 (Chen et al. 2008)",
        "residual_params": params.as_dict(),
        "seed": None,
        "deterministic": True,
        "started_utc": started,
        "finished_utc": utc_now(),
        **{"tool_" + key: value for key, value in tool_info().items()},
    }
    return k, meta


@dataclass(frozen=True)
class MatchSettings:
    """How images are scored against fingerprints (recorded in every result)."""

    threshold: float = 60.0
    crop: tuple[int, int] | None = None
    max_shift: int = 0
    rotations: bool = True
    params: ResidualParams = ResidualParams()

    def as_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "crop": list(self.crop) if self.crop else None,
            "max_shift": self.max_shift,
            "rotations": self.rotations,
            "residual_params": self.params.as_dict(),
        }


def decision_text(pce: float, threshold: float) -> str:
    """``"consistent"`` when PCE exceeds the threshold, else ``"not consistent"``.

    A PCE under the threshold does not exclude the camera: the image may be
    small, dark, saturated, strongly compressed, resized or cropped.
    """
    return "consistent" if pce > threshold else "not consistent"


class Matcher:
    """Score residuals against a set of fingerprints, reusing each one's transform.

    The fingerprints' transforms (centre-cropped as the settings say) are
    computed once here; the spatial fingerprints are not kept, so a Matcher
    is as large as the fingerprints and can be shipped once to worker
    processes.

    Parameters
    ----------
    fingerprints : iterable of Fingerprint
        Consumed once (a generator keeps one spatial fingerprint in memory at a time).
    settings : MatchSettings
    restorer : spncli.restoration.Restorer or None
        When given, images are scored with the restored residual.
    """

    def __init__(self, fingerprints: Iterable[Fingerprint], settings: MatchSettings, restorer=None):
        self.settings = settings
        self.restorer = restorer
        self.cameras = []
        self.spectra = {}
        for fp in fingerprints:
            self.cameras.append((fp.camera, fp.sha256))
            k = fp.k
            if settings.crop is not None:
                k = centre_crop(k, (min(settings.crop[0], k.shape[0]), min(settings.crop[1], k.shape[1])))
            self.spectra[fp.camera] = FingerprintSpectrum(k)

    def residual(self, ev: Evidence) -> tuple[np.ndarray, bool]:
        """The residual scored for an image (classic or restored), after the crop."""
        s = self.settings
        crop = None
        if s.crop is not None:  # crop to what the image allows in its own orientation
            crop = (min(s.crop[0], ev.shape[0]), min(s.crop[1], ev.shape[1]))
        if self.restorer is None:
            return residual_of(ev, s.params, crop), False
        return self.restorer.restore(ev, cropped_pixels(ev, crop), params=s.params)[0], True

    def match(self, ev: Evidence, *, surfaces: bool = False, residual=None) -> list[dict]:
        """One result record per fingerprint for an evidence image.

        With ``surfaces``, records of pairs above the threshold carry the
        correlation surface around the peak under the key ``"_surface"``.
        ``residual`` may pass ``self.residual(ev)`` computed already.
        """
        s = self.settings
        w, restored = self.residual(ev) if residual is None else residual
        records = []
        probe = ResidualSpectrum(w)  # the residual's transform, once for every camera and rotation
        for camera, fp_sha in self.cameras:
            spectrum = self.spectra[camera]
            m: MatchScore = score(probe, spectrum, max_shift=s.max_shift, rotations=s.rotations)
            record = {
                "image": ev.path,
                "sha256": ev.sha256,
                "camera": camera,
                "pce": round(m.pce, 4),
                "ncc": round(m.ncc, 6),
                "decision": decision_text(m.pce, s.threshold),
                "threshold": s.threshold,
                "peak_row": m.peak[0],
                "peak_col": m.peak[1],
                "shift_row": m.shift[0],
                "shift_col": m.shift[1],
                "n_shifts": m.n_shifts,
                "p_fa": m.p_fa,
                "rotation": m.rotation,
                "rows": int(w.shape[0]),
                "cols": int(w.shape[1]),
                "jpeg_quality": ev.quality.quality if ev.quality else None,
                "restored": restored,
                "fingerprint_sha256": fp_sha,
            }
            if surfaces and m.pce > s.threshold:  # the surface (an inverse FFT) only for matches
                record["_surface"] = correlation_surface(probe, spectrum, m)
            records.append(record)
        return records
