"""Camera-identification workflows over evidence files: gather, extract, fingerprint, match.

The functions here tie the signal modules to files and provenance. They never
print: per-file failures go to an ``on_error(path, reason)`` callback and
progress to an ``on_progress(path)`` callback, so that the CLI (or any other
caller) decides how to show them.
"""

from __future__ import annotations

import collections
import math
import os
import stat
import statistics
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import device as devices
from .conditioning import NoQuantizationTables
from .evidence import (
    DEFAULT_MAX_PIXELS,
    FORMATS,
    Evidence,
    LINK_REFUSED,
    EvidenceError,
    image_format,
    load_image,
    not_regular_reason,
    repeated_image,
    unreadable_folder_reason,
    unsupported_reason,
)
from .fingerprint import FingerprintAccumulator
from .geometry import alignment_note, centre_crop, crop_geometry
from .pce import FingerprintSpectrum, MatchScore, ResidualSpectrum, correlation_surface, score
from .provenance import open_regular, tool_info, utc_now
from .jpegdomain import RESIDUAL_KINDS, AwareSettings, NoCoefficients, coefficients_of, compression_aware_residual
from .residual import ResidualParams
from .residualfile import is_residual_file
from .store import Fingerprint

__all__ = [
    "IMAGE_SUFFIXES",
    "gather_inputs",
    "walk_inputs",
    "fingerprint_frame",
    "cropped_pixels",
    "residual_of",
    "residual_with_info",
    "build_fingerprint",
    "FingerprintRefused",
    "MIN_IMAGES",
    "RECOMMENDED_IMAGES",
    "MatchSettings",
    "Matcher",
    "decision_text",
    "two_test_decision",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".tif", ".tiff", ".webp"})
"""Suffixes of the formats decoded; files with these names are always taken from a walked folder."""

UNSUPPORTED_SUFFIXES = frozenset(
    {".heic", ".heif", ".hif", ".avif", ".gif", ".bmp", ".dib", ".jxl", ".jp2", ".j2k", ".jpx", ".psd"}
)
"""Suffixes of image formats that are recognised but not decoded (each gets an error row, never a silent skip)."""

def _head_reason(path: Path) -> tuple[bool, str | None]:
    """(is an image, reason refused) of a regular file, from its suffix and first bytes."""
    try:
        fd, _ = open_regular(path)
        try:
            head = os.read(fd, 32)
        finally:
            os.close(fd)
    except OSError:
        return True, None  # unreadable, a link or not a regular file: the reader says why
    fmt = image_format(head)
    if fmt in FORMATS:
        return True, None
    if fmt is not None:
        return True, unsupported_reason(fmt)
    return path.suffix.lower() in IMAGE_SUFFIXES | UNSUPPORTED_SUFFIXES, None


def _resolved(path: Path) -> Path | None:
    """The path with every link resolved; None for a link loop."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # "Symlink loop from ..." (RuntimeError before Python 3.13)
        return None


def _entry(f: Path, root: Path, seen: set[Path], residuals: bool = False) -> tuple[Path, str | None] | None:
    """Classify one walked entry without opening anything but regular files; None: not evidence here."""
    try:
        st = os.lstat(f)
    except OSError as exc:
        return f, f"cannot read: {exc.strerror or exc}"
    if stat.S_ISLNK(st.st_mode):
        real = _resolved(f)
        if real is None or not os.path.exists(f):
            return f, "symbolic link whose target does not exist (dangling, or a loop): not followed"
        if not real.is_relative_to(root):
            return f, LINK_REFUSED
        return None  # a link inside the folder: its target is walked under its own name
    if stat.S_ISDIR(st.st_mode):
        return None
    if not stat.S_ISREG(st.st_mode):
        return f, not_regular_reason(st.st_mode)
    real = f.resolve()
    if real in seen:
        return None
    if residuals and is_residual_file(f):  # a saved residual: read with its provenance, or refused in one line
        seen.add(real)
        return f, None
    image, reason = _head_reason(f)
    if not image:
        return None
    seen.add(real)
    return f, reason


def walk_inputs(
    paths: Iterable[str | os.PathLike], *, on_other: Callable[[Path], None] = lambda path: None,
    residuals: bool = False,
) -> Iterator[tuple[Path, str | None]]:
    """Every input named or walked, with the reason it is refused (None: to be read).

    Paths named directly are yielded as given (a symbolic link named
    directly is yielded as its target, the file it names, unless it
    dangles). Folders are walked recursively in sorted order without
    following links; below a folder, an entry is yielded when it is

    * an image by suffix or signature (JPEG, PNG, TIFF, WebP, HEIC/HEIF): reason None;
    * an image of a format recognised by its signature but not decoded
      (AVIF, GIF, BMP, JPEG 2000, JPEG XL, PSD): "format not
      supported: AVIF" (a file with such a suffix but no signature is yielded
      with None: the reader says what it is);
    * not a regular file (FIFO, socket, device): refused without being opened;
    * a symbolic link (to a file or a folder) out of the folder: refused,
      never followed.

    Links inside the folder are not yielded (their targets are, once, under
    their own names); each real file is yielded once. Regular files that are
    not images by name or content go to ``on_other``. With ``residuals``
    (``spn match``), saved residuals (``.npy``) are yielded too, and the
    provenance ``.json`` beside each is not passed to ``on_other``.
    """
    seen: set[Path] = set()
    for item in paths:
        p = Path(item)
        if p.is_symlink() and p.exists():
            p = Path(os.path.realpath(p))  # named by the examiner: read the file it names
        if not p.is_dir():
            try:
                mode = os.lstat(p).st_mode
            except OSError:
                yield p, None  # the reader says why (missing, permission)
                continue
            yield p, None if stat.S_ISREG(mode) else not_regular_reason(mode)
            continue
        root = p.resolve()
        unreadable: list[OSError] = []  # folders os.walk cannot list: each reported, never skipped in silence
        for dirpath, dirnames, filenames in os.walk(p, followlinks=False, onerror=unreadable.append):
            while unreadable:
                exc = unreadable.pop(0)
                yield Path(exc.filename), unreadable_folder_reason(exc)
            dirnames.sort()
            for name in [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
                dirnames.remove(name)  # never descended into; a link out of the folder is reported
                real = _resolved(Path(dirpath) / name)
                if real is None:
                    yield Path(dirpath) / name, "symbolic link loop: not followed"
                elif not real.is_relative_to(root):
                    yield Path(dirpath) / name, LINK_REFUSED
            for name in sorted(filenames):
                f = Path(dirpath) / name
                entry = _entry(f, root, seen, residuals)
                if entry is not None:
                    yield entry
                elif not f.is_symlink() and f.is_file() and _resolved(f) not in seen:
                    if not (residuals and f.suffix.lower() == ".json" and f.with_suffix(".npy").is_file()):
                        on_other(f)
        for exc in unreadable:
            yield Path(exc.filename), unreadable_folder_reason(exc)


def gather_inputs(
    paths: Iterable[str | os.PathLike], *, on_other: Callable[[Path], None] = lambda path: None,
    residuals: bool = False,
) -> Iterator[Path]:
    """The paths of :func:`walk_inputs`, refused ones included, so that each gets its error line.

    A refused entry's reason is found again by the reader
    (:func:`spncli.evidence.read_bytes` refuses non-regular files and links
    without opening them; :func:`spncli.evidence.decode` refuses unsupported
    formats by signature), so every caller's per-file error path reports it.
    """
    for path, _reason in walk_inputs(paths, on_other=on_other, residuals=residuals):
        yield path


def no_images_found(inputs: Iterable[str | os.PathLike], others: int) -> str:
    """The one line for inputs that hold no image file (``others``: the files there that are not images)."""
    listed = ", ".join(str(p) for p in inputs)
    return f"no image files found in {listed}" + (f" ({others} other file(s) there, not images)" if others else "")


def fingerprint_frame(meta: dict, shape: tuple[int, int]) -> tuple[int, int] | None:
    """The source frame (rows, cols) a stored fingerprint records; None if unknown (older, cropped)."""
    frame = (meta.get("geometry") or {}).get("frame")
    if frame:
        return int(frame[0]), int(frame[1])
    return None if meta.get("crop") else (int(shape[0]), int(shape[1]))


def frame_turned(image: tuple[int, int], frame: tuple[int, int] | None) -> bool | None:
    """Whether an image's frame is portrait where the fingerprint's frame is landscape (or the reverse).

    None when either frame is square or the fingerprint's frame is unknown: then the shapes scored decide.
    """
    if frame is None or image[0] == image[1] or frame[0] == frame[1]:
        return None
    return (image[0] > image[1]) != (frame[0] > frame[1])


def cropped_pixels(ev: Evidence, crop: tuple[int, int] | None, *, samples: bool = False) -> np.ndarray:
    """The evidence pixels after the centre crop (if any), contiguous.

    With ``samples``, what the CPU residual reads instead (:meth:`Evidence.denoiser_samples`: the
    8-bit samples where the image has them, so that no float copy of a large image is made).

    Raises
    ------
    EvidenceError
        If the crop is larger than the image.
    """
    return np.ascontiguousarray(_crop_view(ev, ev.denoiser_samples() if samples else ev.pixels, crop))


def _crop_view(ev: Evidence, image: np.ndarray, crop: tuple[int, int] | None) -> np.ndarray:
    """The centre crop of one of ``ev``'s arrays, a view; a crop larger than the image is an EvidenceError."""
    try:
        return centre_crop(image, crop)
    except ValueError as exc:
        raise EvidenceError(ev.path, str(exc)) from None


def residual_of(
    ev: Evidence,
    params: ResidualParams,
    crop: tuple[int, int] | None,
    kind: str = "classic",
    aware: AwareSettings = AwareSettings(),
) -> np.ndarray:
    """Noise residual of an evidence image, after the centre crop (if any); see :func:`residual_with_info`."""
    return residual_with_info(ev, params, crop, kind=kind, aware=aware)[0]


def residual_with_info(
    ev: Evidence,
    params: ResidualParams,
    crop: tuple[int, int] | None,
    *,
    kind: str = "classic",
    aware: AwareSettings = AwareSettings(),
    data: bytes | None = None,
    device: str = "cpu",
    spectrum: bool = False,
) -> tuple[np.ndarray, dict]:
    """Noise residual of an evidence image and what it is (``residual_kind``, Wiener, fallback).

    ``kind="classic"`` crops the pixels first (:func:`cropped_pixels`), then
    extracts. ``kind="compression-aware"`` (:mod:`spncli.jpegdomain`) extracts
    the full frame, filters it on the file's own 8x8 grid, then crops; a
    non-JPEG input, or a JPEG without usable luma coefficients (CMYK), falls
    back to the classic residual and says why under ``fallback``. ``data``
    may pass the file's bytes when already in memory. ``device`` is a
    resolved device (:func:`spncli.device.resolve_device`): ``"cpu"`` is the
    numpy reference path, ``"cuda"`` the torch one. With ``spectrum`` a classic residual's info also
    holds its half spectrum under ``"residual_spectrum"`` (None where none was made; see
    :class:`spncli.pce.ResidualSpectrum`).

    Raises
    ------
    EvidenceError
        If the crop is larger than the image, or the JPEG's coefficients cannot be used.
    ValueError
        If ``kind`` is not one of :data:`spncli.jpegdomain.RESIDUAL_KINDS`.
    """
    if kind not in RESIDUAL_KINDS:
        raise ValueError(f"residual kind {kind!r} is not one of {', '.join(RESIDUAL_KINDS)}")
    fallback = None
    if kind == "compression-aware":
        _crop_view(ev, ev.samples, crop)  # the crop's error, before any work (no copy, no float pixels made)
        try:
            coefficients = coefficients_of(ev, data)
        except NoCoefficients as exc:
            fallback = f"{exc}: classic residual"
        else:
            grey = devices.grey_residual(ev.denoiser_samples() if device == "cpu" else ev.pixels, params, device)
            return compression_aware_residual(grey, coefficients, crop=crop, params=params, settings=aware)
    info = {"residual_kind": "classic", "wiener_applied": params.wiener_dft, "fallback": fallback}
    pixels = cropped_pixels(ev, crop, samples=device == "cpu")
    if spectrum:
        w, info["residual_spectrum"] = devices.classic_residual(pixels, params, device, spectrum=True)
        return w, info
    return devices.classic_residual(pixels, params, device), info


def _quality_stats(qualities: list[int]) -> dict:
    if not qualities:
        return {"jpeg_images": 0}
    return {
        "jpeg_images": len(qualities),
        "quality_min": min(qualities),
        "quality_median": statistics.median(qualities),
        "quality_max": max(qualities),
    }


MIN_IMAGES = 2
"""Fewest images a fingerprint is built from (one image's residual is mostly its scene)."""

RECOMMENDED_IMAGES = 10
"""Below this many images the fingerprint is stored with a warning: its PCEs run low."""


class FingerprintRefused(ValueError):
    """The images cannot make one fingerprint (mixed cameras or sizes, too few, non-finite); nothing is stored."""


_EXIF_KEYS = ("make", "model", "serial")


def _check_source(ev: Evidence, first: Evidence | None, allow_mixed: bool) -> None:
    """Refuse an image whose size, or EXIF make/model/serial, differs from the first image's."""
    if first is None:
        return
    if ev.shape != first.shape:
        raise FingerprintRefused(
            f"{ev.path} is {ev.shape[1]}x{ev.shape[0]} (cols x rows) but {first.path} is "
            f"{first.shape[1]}x{first.shape[0]}: all images of one fingerprint must share size and orientation; "
            "nothing stored"
        )
    if allow_mixed:
        return
    for key in _EXIF_KEYS:
        a, b = first.exif.get(key), ev.exif.get(key)
        if a is not None and b is not None and a != b:
            raise FingerprintRefused(
                f"EXIF {key} {b!r} of {ev.path} differs from {a!r} of {first.path}: images of two cameras? "
                "(use --allow-mixed to build one fingerprint from them anyway); nothing stored"
            )


def _source_record(path, ev: Evidence, pixel_sha256: str) -> dict:
    return {
        "path": os.path.abspath(path),  # absolute when recorded: a relative path names nothing later
        "name": Path(path).name,
        "sha256": ev.sha256,
        "pixel_sha256": pixel_sha256,  # a copy in other bytes is still this source (calibration checks)
        "jpeg_quality": ev.quality.quality if ev.quality else None,
        "rows": ev.shape[0],
        "cols": ev.shape[1],
    }


def build_fingerprint(
    paths: Iterable[Path],
    camera: str,
    *,
    params: ResidualParams = ResidualParams(),
    crop: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
    allow_mixed: bool = False,
    on_error: Callable[[str, str], None] = lambda path, reason: None,
    on_progress: Callable[[str], None] = lambda path: None,
    on_warning: Callable[[str], None] = lambda message: None,
    device: str = "cpu",
) -> tuple[np.ndarray, dict]:
    """Estimate a camera fingerprint from images, one at a time.

    Parameters
    ----------
    paths : iterable of Path
    camera : str
        Camera id recorded in the metadata.
    params : ResidualParams
    crop : (rows, cols) or None
        Crop applied to every image before extraction, placed by the rule of
        :mod:`spncli.geometry` (recorded under ``geometry``).
    max_pixels, max_bytes : int
        Bounds of :func:`spncli.evidence.load_image`.
    allow_mixed : bool
        Accept images whose EXIF make, model or serial differ.
    on_error, on_progress, on_warning : callable
        Called with a file that failed (and the reason), a file that is done,
        or a warning about the fingerprint as a whole (fewer than
        :data:`RECOMMENDED_IMAGES` images).
    device : str
        ``--device`` request (auto, cpu, cuda), resolved here and recorded under ``compute``.

    Returns
    -------
    k : ndarray, float32
    meta : dict
        Camera id, EXIF make/model/serial, image count and size, the geometry
        (rule, frame, crop origin), each source file's path and SHA-256 and
        quality, quality statistics, parameters, tool version, UTC times.

    Raises
    ------
    FingerprintRefused
        Images of different sizes, or (without ``allow_mixed``) different
        EXIF make/model/serial; fewer than :data:`MIN_IMAGES` usable images;
        a fingerprint with non-finite values.
    """
    started = utc_now()
    resolved = devices.resolve_device(device)
    if resolved == "cpu":
        acc = FingerprintAccumulator(params)
    else:  # the same estimator with the running sums on the device
        from .torchclassic import TorchFingerprintAccumulator

        acc = TorchFingerprintAccumulator(params, devices.torch_device(resolved))
    sources, qualities, exif_seen = [], [], []
    first = None
    used: dict[str, str] = {}  # SHA-256 of bytes or pixels -> the path that brought them in
    for path in paths:
        try:
            ev = load_image(path, max_pixels=max_pixels, max_bytes=max_bytes)
            digest = ev.pixel_sha256()  # of the samples, before the float pixels replace them
            pixels = cropped_pixels(ev, crop)
        except EvidenceError as exc:
            on_error(exc.path, exc.reason)
            continue
        repeated = repeated_image(ev, used, digest)  # one picture counted twice would weigh its scene twice
        if repeated:
            on_warning(f"{path}: {repeated}: used once")
            continue
        _check_source(ev, first, allow_mixed)
        first = first or ev
        acc.add(pixels, ev.saturation)
        if ev.quality is not None:
            qualities.append(ev.quality.quality)
        sources.append(_source_record(path, ev, digest))
        exif_seen.append(ev.exif)
        on_progress(str(path))
    if acc.count < MIN_IMAGES:
        raise FingerprintRefused(
            f"{acc.count} usable image(s) for camera {camera!r}: a fingerprint needs at least {MIN_IMAGES} "
            f"({RECOMMENDED_IMAGES} or more recommended, flat-fields best); nothing stored"
        )
    if acc.count < RECOMMENDED_IMAGES:
        on_warning(
            f"camera {camera!r}: only {acc.count} image(s); {RECOMMENDED_IMAGES} or more are recommended: a "
            "fingerprint from few images gives low PCEs, and a low PCE never excludes the camera"
        )
    k = acc.finalize()
    if not np.isfinite(k).all():
        raise FingerprintRefused(
            f"the fingerprint of camera {camera!r} has non-finite values (NaN or infinity; check --sigma); "
            "nothing stored"
        )

    def agreed(key):
        values = {e.get(key) for e in exif_seen}
        return values.pop() if len(values) == 1 else (sorted(v for v in values if v) or [None])

    meta = {
        "camera": camera,
        "make": agreed("make"),
        "model": agreed("model"),
        "serial": agreed("serial"),
        "exif_mixed_allowed": allow_mixed,
        "image_count": acc.count,
        "rows": int(k.shape[0]),
        "cols": int(k.shape[1]),
        "crop": list(crop) if crop else None,
        "geometry": crop_geometry(first.shape, crop),
        "sources": sources,
        "quality": _quality_stats(qualities),
        "saturated_fraction_mean": float(np.mean(acc.saturated_fraction)),
        "estimator": "ML: sum(W*I)/sum(I^2) per channel, saturated pixels weight 0 (Chen et al. 2008)",
        "residual_params": params.as_dict(),
        "compute": devices.compute_record(device, resolved),
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
    residual: str = "classic"
    aware: AwareSettings = AwareSettings()

    def __post_init__(self):
        if self.residual not in RESIDUAL_KINDS:
            raise ValueError(f"residual kind {self.residual!r} is not one of {', '.join(RESIDUAL_KINDS)}")
        if not (math.isfinite(self.threshold) and self.threshold > 0):  # at or below 0 every camera would match
            raise ValueError(f"threshold must be a finite PCE > 0, got {self.threshold}")

    def as_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "crop": list(self.crop) if self.crop else None,
            "max_shift": self.max_shift,
            "rotations": self.rotations,
            "residual_params": self.params.as_dict(),
            "residual": self.residual,
            "aware_settings": self.aware.as_dict() if self.residual == "compression-aware" else None,
        }


def decision_text(pce: float, threshold: float) -> str:
    """``"consistent"`` when PCE exceeds the threshold, else ``"not consistent"``.

    A PCE under the threshold does not exclude the camera: the image may be
    small, dark, saturated, strongly compressed, resized or cropped.
    """
    return "consistent" if pce > threshold else "not consistent"


def two_test_decision(classic: MatchScore, restored: MatchScore | None, threshold: float) -> dict:
    """Decide on the classic and the restored residual together; a classic match is never lost.

    Each residual is one test of the same pair at ``threshold`` [1]_. The
    image is consistent when either test exceeds the threshold, so every
    image consistent under the classic residual stays consistent. The
    price is a second test: by the union (Bonferroni) bound the family-wise
    false-alarm probability of the decision is at most ``2·p_fa(threshold)``
    (about 2e-15 at PCE 60), and the false-alarm probability reported for
    the pair is ``min(1, 2·min(p_fa_classic, p_fa_restored))``. With ``restored`` None (restoration asked
    but skipped for the file) the classic test alone decides, and the restored fields are None.

    Returns
    -------
    dict
        ``decision``, ``decision_classic``, ``decision_restored``, both PCEs
        and false-alarm probabilities, ``p_fa`` (Bonferroni-corrected),
        ``decided_by`` (the residual of the smaller p_fa),
        ``residuals_disagree`` and the rule in words.

    References
    ----------
    .. [1] M. Goljan, J. Fridrich, T. Filler, "Large scale test of sensor
       fingerprint camera identification", Proc. SPIE 7254, 2009.
       :doi:`10.1117/12.805701`
    """
    if restored is None:
        single_c = decision_text(classic.pce, threshold)
        return {
            "decision": single_c,
            "decision_classic": single_c,
            "decision_restored": None,
            "pce_classic": round(classic.pce, 4),
            "pce_restored": None,
            "p_fa_classic": classic.p_fa,
            "p_fa_restored": None,
            "p_fa": classic.p_fa,
            "decided_by": "classic",
            "residuals_disagree": False,
            "decision_rule": f"the classic residual alone above PCE {threshold:g} (restoration skipped)",
        }
    by = "classic" if classic.p_fa <= restored.p_fa else "restored"
    single_c, single_r = decision_text(classic.pce, threshold), decision_text(restored.pce, threshold)
    consistent = "consistent" in (single_c, single_r)
    return {
        "decision": "consistent" if consistent else "not consistent",
        "decision_classic": single_c,
        "decision_restored": single_r,
        "pce_classic": round(classic.pce, 4),
        "pce_restored": round(restored.pce, 4),
        "p_fa_classic": classic.p_fa,
        "p_fa_restored": restored.p_fa,
        "p_fa": min(1.0, 2.0 * min(classic.p_fa, restored.p_fa)),
        "decided_by": by,
        "residuals_disagree": single_c != single_r,
        "decision_rule": f"either residual above PCE {threshold:g}; family-wise p_fa <= 2 p_fa(PCE {threshold:g}) "
        "(Bonferroni)",
    }


class Matcher:
    """Score residuals against a set of fingerprints, reusing each one's transform.

    The fingerprints' transforms (centre-cropped as the settings say) are
    computed once here; the spatial fingerprints are not kept, so a Matcher
    is as large as the fingerprints and can be shipped once to worker
    processes.

    Parameters
    ----------
    fingerprints : iterable of Fingerprint
        Consumed once, in order: up to two are held while transformed (plus what a generator
        such as :meth:`spncli.store.FingerprintStore.load_many` reads ahead).
    settings : MatchSettings
    restorer : spncli.restoration.Restorer or None
        When given, images are scored with the classic and the restored
        residual both, and decided by :func:`two_test_decision`.
    device : str
        ``--device`` request (auto, cpu, cuda), resolved where the images are
        scored (:func:`spncli.device.resolve_device`: a Dask worker that
        declares a GPU uses it); the classic residual and the PCEs then run
        through :mod:`spncli.torchclassic`. Each record says ``device`` and ``backend``.
    """

    def __init__(self, fingerprints: Iterable[Fingerprint], settings: MatchSettings, restorer=None, device="cpu"):
        if restorer is not None and settings.residual != "classic":
            raise ValueError("restoration refines the classic residual: use --residual classic with --restore")
        self.settings = settings
        self.restorer = restorer
        self.tails = None  # spncli.calibration.EmpiricalTail: records then carry the empirical tail
        self.device = devices.check_device(device) if device != devices.TORCH_CPU else device
        self.cameras = []
        self.spectra = {}
        self.frames = {}  # each fingerprint's source frame, for the alignment note
        self.warnings: dict[str, list[str]] = {}  # camera -> leak warnings (spncli.leaks.match_warnings)
        crop = settings.crop

        def transform(k: np.ndarray) -> FingerprintSpectrum:
            if crop is not None:
                k = centre_crop(k, (min(crop[0], k.shape[0]), min(crop[1], k.shape[1])))
            return FingerprintSpectrum(k)

        # fingerprints are transformed on two threads (OpenCV's transform releases the GIL) while the caller's
        # iterable reads the next ones (FingerprintStore.load_many reads ahead too); two wait here at most
        pending: collections.deque = collections.deque()
        with ThreadPoolExecutor(2, thread_name_prefix="spn-fingerprint") as pool:
            for fp in fingerprints:
                self.cameras.append((fp.camera, fp.sha256))
                self.frames[fp.camera] = fingerprint_frame(fp.meta, fp.k.shape)
                pending.append((fp.camera, pool.submit(transform, fp.k)))
                del fp
                while len(pending) > 1:
                    camera, future = pending.popleft()
                    self.spectra[camera] = future.result()
            for camera, future in pending:
                self.spectra[camera] = future.result()

    @classmethod
    def from_database(cls, store, names: Iterable[str], settings: MatchSettings, restorer=None, *,
                      db_sha256: str, memory: int, device: str = "cpu") -> Matcher:  # fmt: skip
        """A Matcher whose fingerprints stay in the database: for worker processes.

        Only each camera's K SHA-256 and source frame are read here (seals
        verified, no pixels, no transforms); the Matcher pickles small. Where
        it scores, the transforms come from that process's
        :class:`spncli.spectra.SpectrumCache`, which reads each fingerprint
        once (file SHA-256, checksum and seal verified, the index checked
        against ``db_sha256``) and holds at most ``memory`` bytes of transforms.

        Parameters
        ----------
        store : spncli.store.FingerprintStore
        names : iterable of str
            Camera ids, in the order scored.
        settings : MatchSettings
        restorer : spncli.restoration.Restorer or None
        db_sha256 : str
            SHA-256 of the database's index when the run began (``store.file_sha256()``).
        memory : int
            Bytes of fingerprint transforms each process keeps at most.
        device : str
            As for the constructor.
        """
        from .spectra import DatabaseSpectra

        self = cls((), settings, restorer, device)
        self.spectra = DatabaseSpectra(str(Path(store.path).absolute()), db_sha256, settings.crop, memory)
        for camera in names:
            k_sha, meta, shape = store.header(camera)
            self.cameras.append((camera, k_sha))
            self.frames[camera] = fingerprint_frame(meta, shape)
            self.spectra.k_sha256[camera] = k_sha
        return self

    def residual(self, ev: Evidence) -> tuple[np.ndarray, bool, dict]:
        """The residual scored for an image (classic, compression-aware or restored), after the crop.

        Returns the residual, whether it was restored, and what it is
        (``residual_kind``, ``wiener_applied``, ``fallback``).
        """
        s = self.settings
        device = devices.resolve_device(self.device)
        crop = None
        if s.crop is not None:  # crop to what the image allows in its own orientation
            crop = (min(s.crop[0], ev.shape[0]), min(s.crop[1], ev.shape[1]))
        if self.restorer is None:
            w, info = residual_with_info(
                ev, s.params, crop, kind=s.residual, aware=s.aware, device=device, spectrum=device == "cpu"
            )
            return w, False, info
        pixels = cropped_pixels(ev, crop)
        grey = devices.grey_residual(pixels, s.params, device)

        def classic_only(why: str, w=None) -> tuple[np.ndarray, bool, dict]:  # the classic residual alone, and why
            return devices.postprocess(grey, s.params, device) if w is None else w, False, {
                "residual_kind": "classic",
                "wiener_applied": s.params.wiener_dft,
                "fallback": None,
                "network_applied": False,
                "restoration_skipped": why,
            }

        try:
            w, info = self.restorer.restore(ev, pixels, grey=grey, params=s.params)
        except NoQuantizationTables as exc:
            return classic_only(str(exc))
        if not info.get("restored", True):  # no coefficients (a CMYK JPEG)
            return classic_only(info.get("restoration_skipped", "not restored"), w)  # w: post-processed already
        return w, True, {
            "residual_kind": info.get("input_residual", "classic"),  # what the network refines
            "wiener_applied": info["wiener_dft"],
            "fallback": None,
            "network_applied": info["network_applied"],
            **({"network_skipped": info["network_skipped"]} if "network_skipped" in info else {}),
            "weights_sha256": info["weights_sha256"],
            "restoration_policy": info.get("policy"),
            "classic_residual": devices.postprocess(grey, s.params, device),
        }

    def match(self, ev: Evidence, *, surfaces: bool = False, residual=None) -> list[dict]:
        """One result record per fingerprint for an evidence image.

        With ``surfaces``, records of pairs above the threshold carry the
        correlation surface around the peak under the key ``"_surface"``.
        ``residual`` may pass ``self.residual(ev)`` computed already.
        """
        s = self.settings
        w, restored, info = self.residual(ev) if residual is None else residual
        records = []
        device = devices.resolve_device(self.device)
        compute = {"device": device, "backend": devices.backend_name(device)}
        # the residual's transform, once for every camera and rotation (the Wiener step's, where it made one)
        probe = ResidualSpectrum(w, info.pop("residual_spectrum", None))  # popped: not held twice
        classic_probe = ResidualSpectrum(info["classic_residual"]) if restored else None
        batched = batched_classic = None
        if device != "cpu":  # every camera at once on the device (surfaces, for matches only, on the host)
            batched = self._score_on(device, w, ev)
            batched_classic = self._score_on(device, info["classic_residual"], ev) if restored else None
        for camera, fp_sha in self.cameras:
            spectrum = self.spectra[camera]
            turned = frame_turned(ev.shape, self.frames[camera])
            m: MatchScore = batched[camera] if batched is not None else score(
                probe, spectrum, max_shift=s.max_shift, rotations=s.rotations, turned=turned
            )
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
                "decoder_warnings": list(ev.warnings),
                "restored": restored,
                "residual_kind": info["residual_kind"],
                "wiener_applied": info["wiener_applied"],
                **({"restoration_skipped": info["restoration_skipped"]} if "restoration_skipped" in info else {}),
                "fingerprint_sha256": fp_sha,
                "alignment": alignment_note(ev.shape, self.frames[camera], s.max_shift),
                "warnings": list(self.warnings.get(camera, ())),
                **compute,
            }
            used = probe
            if restored:  # both residuals scored; the decision takes both (two_test_decision)
                mc = batched_classic[camera] if batched_classic is not None else score(
                    classic_probe, spectrum, max_shift=s.max_shift, rotations=s.rotations, turned=turned
                )
                both = two_test_decision(mc, m, s.threshold)
                if both["decided_by"] == "classic":
                    m, used = mc, classic_probe
                record |= both | {
                    "pce": both[f"pce_{both['decided_by']}"],
                    "ncc": round(m.ncc, 6),
                    "peak_row": m.peak[0],
                    "peak_col": m.peak[1],
                    "shift_row": m.shift[0],
                    "shift_col": m.shift[1],
                    "rotation": m.rotation,
                    "network_applied": info["network_applied"],
                    **({"network_skipped": info["network_skipped"]} if "network_skipped" in info else {}),
                    "weights_sha256": info["weights_sha256"],
                    "restoration_policy": info["restoration_policy"],
                }
            elif self.restorer is not None:  # restoration asked but skipped for this file: the classic test alone
                record |= two_test_decision(m, None, s.threshold) | {
                    "network_applied": False,
                    "weights_sha256": getattr(self.restorer, "weights_sha256", None),
                }
            if self.tails is not None:
                record |= self.tails.fields(camera, fp_sha, record["pce"], record["jpeg_quality"])
            if surfaces and record["decision"] == "consistent":  # the surface (an inverse FFT) only for matches
                record["_surface"] = correlation_surface(used, spectrum, m)
            records.append(record)
        return records

    def _score_on(self, device: str, w: np.ndarray, ev: Evidence) -> dict[str, MatchScore]:
        """Every camera's score of residual ``w`` on a torch device (:func:`spncli.torchclassic.score_many`)."""
        from .torchclassic import score_many

        s = self.settings
        cameras = [c for c, _ in self.cameras]
        turned = {c: frame_turned(ev.shape, self.frames[c]) for c in cameras}
        return score_many(w, cameras, self.spectra, turned, device=devices.torch_device(device),
                          max_shift=s.max_shift, rotations=s.rotations)  # fmt: skip
