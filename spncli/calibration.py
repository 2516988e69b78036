"""Calibrated false alarms: the PCE of images known not to come from a camera, per JPEG quality band.

The false-alarm probability ``p_fa`` that ``spn match`` reports is theoretical:
it takes the correlation of an unrelated image with a fingerprint to be
Gaussian, so that ``P(PCE >= t) = Q(sqrt(t))`` at one alignment [1]_. Real
fingerprints also hold non-unique artefacts (JPEG blocking on the 8x8 grid,
demosaicing and lens corrections shared by one model) that unrelated images
of the same model or processing share; on the Dresden images they give PCEs
far above what the Gaussian model allows [2]_. This module measures that
null distribution on images declared not to come from each camera and turns
it into an empirical tail probability [3]_

    p_emp(pce) = (1 + #{null PCE >= pce}) / (1 + n),

which a match records beside the theoretical ``p_fa`` with the count ``n``
and the quality band it rests on. The smallest value it can take is
``1 / (1 + n)``: an empirical tail never supports a probability smaller than
the data behind it.

Design (what the database stores, and what it assumes):

* Background images. Images given without ``leave_one_camera_out`` are
  declared to come from none of the database's cameras (their source is
  unknown but not one of these cameras): each is scored against every camera.
  With ``leave_one_camera_out`` each image carries the id of the camera that
  took it (``BACKGROUND/<camera-id>/...``, or a ``path,camera`` CSV), and is
  scored against every *other* camera; the label ``other`` declares an image
  from none of them. The database does not hold its fingerprints' source
  images, only their paths and SHA-256: an image whose SHA-256 is a source of
  a camera it would be scored against contradicts its label and is refused.
* Quality bands (:data:`BANDS`): by the IJG-equivalent quality of the scored
  file's quantization tables (:mod:`spncli.jpegtables`); ``not-jpeg`` for other
  formats. To fill the lower bands each image is also re-compressed in memory
  at ``qualities`` (default 90, 70, 50, 30: one per JPEG band). Only the
  region the match analyses is re-compressed, in the frame's own JPEG grid
  (its 16x16 MCU grid from the frame's corner, as a re-compression of the whole
  frame would place it); the record says so.
* The null depends on how images are scored: the crop, the shift search,
  rotations, the residual. It is stored with those settings, and a match
  scored otherwise gets no empirical tail (its fields are null and say why).

The stored document (``<db>.d/calibration.json``, sealed; see
:meth:`spncli.store.FingerprintStore.calibration`) holds, per camera and band,
the sorted null PCEs, their count, the alignments tried, the largest few with
their images, and the SHA-256 of the fingerprint they were measured against;
the background images' paths, labels and SHA-256 (and the digest of the sorted
SHA-256 list); the parameters, tool version and seed (none: every step is
deterministic).

References
----------
.. [1] M. Goljan, J. Fridrich, T. Filler, "Large scale test of sensor
   fingerprint camera identification", Proc. SPIE 7254, 2009.
   :doi:`10.1117/12.805701`
.. [2] T. Gloe, S. Pfennig, M. Kirchner, "Unexpected artefacts in PRNU-based
   camera identification: a 'Dresden Image Database' case-study", Proc. ACM
   Workshop on Multimedia and Security, 2012. :doi:`10.1145/2361407.2361440`
.. [3] B. V. North, D. Curtis, P. C. Sham, "A note on the calculation of
   empirical P values from Monte Carlo procedures", Am. J. Hum. Genet. 71(2),
   2002. :doi:`10.1086/341527`
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import io
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import jpegtables
from .degrade import DegradeSettings, encode
from .evidence import DEFAULT_MAX_PIXELS, Evidence, EvidenceError, decode, read_bytes, repeated_image
from .geometry import crop_offsets
from .identify import Matcher, MatchSettings, walk_inputs
from .pce import false_alarm_probability
from .provenance import tool_info, utc_now
from .store import FingerprintStore, StoreError

__all__ = [
    "BANDS",
    "NOT_JPEG",
    "OTHER",
    "DEFAULT_QUALITIES",
    "HEAVY_FACTOR",
    "band_of",
    "parse_qualities",
    "Labels",
    "read_labels",
    "labelled_backgrounds",
    "recompressed",
    "calibrate",
    "band_summary",
    "summary_rows",
    "scoring_key",
    "EmpiricalTail",
    "tails_for",
]

BANDS = (("q90-100", 90, 100), ("q70-89", 70, 89), ("q50-69", 50, 69), ("q1-49", 1, 49))
"""JPEG quality bands: (name, lowest, highest IJG-equivalent quality)."""
NOT_JPEG = "not-jpeg"
"""The band of PNG, TIFF, WebP and HEIC files (no quantization tables)."""
OTHER = "other"
"""The label of a background image from none of the database's cameras."""
DEFAULT_QUALITIES = (90, 70, 50, 30)
"""Re-compression qualities: one in each JPEG band."""
RECOMPRESSION = DegradeSettings(quality=90)  # codec and subsampling of the re-compressed variants
MCU = 16
"""Side of a 4:2:0 JPEG's minimum coded unit: re-compressed regions start on this grid of the frame."""
CHECK_MIN = 5
"""Null samples at least above the level where the empirical tail is compared with the theory."""
CHECK_COUNT = 20
"""Fewest null samples of a band compared with the theory (fewer: the level would sit in the bulk, not the tail)."""
HEAVY_FACTOR = 10.0
"""An empirical tail more than this many times the theoretical one is called heavier than the theory."""
TOP = 5
"""Largest null samples stored with their images, per camera and band."""


def band_of(quality: int | None) -> str:
    """The band name of an IJG-equivalent JPEG quality; :data:`NOT_JPEG` for None (no quantization tables)."""
    if quality is None:
        return NOT_JPEG
    for name, low, high in BANDS:
        if low <= quality <= high:
            return name
    raise ValueError(f"JPEG quality {quality} is not in 1..100")


def parse_qualities(text: str | None) -> tuple[int, ...]:
    """``"90,70,50,30"`` -> (90, 70, 50, 30); ``"none"`` or None -> () (no re-compression).

    Raises
    ------
    ValueError
        Naming the allowed values (integers 1-100, comma-separated, or ``none``); an empty text too.
    """
    if text is None or text.strip().lower() == "none":
        return ()
    if not text.strip():
        raise ValueError("empty: use integers 1-100, comma-separated, or none")
    out = []
    for part in text.split(","):
        try:
            q = int(part.strip())
        except ValueError:
            q = 0
        if not 1 <= q <= 100:
            raise ValueError(f"quality {part.strip()!r} is not allowed: use integers 1-100, comma-separated, or none")
        out.append(q)
    return tuple(dict.fromkeys(out))


def _key(path: str | os.PathLike) -> str:
    """The real path of a file: how a label names it, whatever the spelling of its path."""
    return os.path.realpath(path)


LABELS_MAX_BYTES = 64 << 20
"""Largest labels CSV read (about a million rows)."""


class Labels(dict):
    """``{real path: camera}`` read from a labels CSV, with the CSV's absolute ``path`` and the ``sha256`` of the
    bytes the labels were read from (what a calibration records: one read, so the two cannot differ)."""

    def __init__(self, labels: dict[str, str], path: str, sha256: str):
        super().__init__(labels)
        self.path, self.sha256 = path, sha256


def read_labels(path: str | os.PathLike) -> Labels:
    """``{real path: camera}`` from a CSV with the header ``path,camera`` (relative paths: from the CSV's folder).

    Raises
    ------
    ValueError
        One line naming the CSV and the reason (unreadable, no ``path``/``camera`` header, a row without both,
        one file labelled twice with different cameras).
    """
    path = Path(path)
    try:  # read as evidence is read: never a link followed, never a FIFO opened (it would hang)
        data = read_bytes(path, max_bytes=LABELS_MAX_BYTES)
        text = data.decode("utf-8-sig")
    except EvidenceError as exc:
        raise ValueError(f"{path}: labels unreadable ({exc.reason})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: labels unreadable ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"path", "camera"} <= set(reader.fieldnames):
        raise ValueError(f"{path}: labels need the header 'path,camera' (found {reader.fieldnames})")
    labels: dict[str, str] = {}
    for n, row in enumerate(reader, start=2):
        file, camera = (row.get("path") or "").strip(), (row.get("camera") or "").strip()
        if not file or not camera:
            raise ValueError(f"{path}: line {n} needs both a path and a camera")
        key = _key(path.parent / file)
        if labels.setdefault(key, camera) != camera:
            raise ValueError(f"{path}: line {n} labels {file} {camera!r}, an earlier line {labels[key]!r}")
    return Labels(labels, os.path.abspath(path), hashlib.sha256(data).hexdigest())


def labelled_backgrounds(
    paths: Iterable[str | os.PathLike],
    *,
    leave_one_camera_out: bool,
    cameras: Iterable[str],
    labels: dict[str, str] | None = None,
    on_error: Callable[[str, str], None] = lambda path, reason: None,
    on_other: Callable[[Path], None] = lambda path: None,
) -> list[tuple[Path, str | None]]:
    """Each background image with the camera that took it (None: declared from none of ``cameras``).

    Without ``leave_one_camera_out`` every image is unlabelled. With it, an
    image's label comes from ``labels`` (see :func:`read_labels`) when given,
    else from the first folder below the BACKGROUND folder it was found in
    (``BACKGROUND/<camera-id>/...``); it must be one of ``cameras`` or
    :data:`OTHER`. Refused entries (links out of a folder, FIFOs, unsupported
    formats) and images without an allowed label go to ``on_error`` and are
    not used; files in a folder that are not images go to ``on_other``.
    """
    known = set(cameras)
    allowed = ", ".join(sorted(known | {OTHER}))
    out: list[tuple[Path, str | None]] = []
    for root in paths:
        root = Path(root)
        for path, reason in walk_inputs([root], on_other=on_other):
            if reason is not None:
                on_error(str(path), reason)
                continue
            if not leave_one_camera_out:
                out.append((path, None))
                continue
            if labels is not None:
                label, where = labels.get(_key(path)), "in --labels"
            else:
                parts = path.relative_to(root).parts if root.is_dir() and path != root else ()
                label, where = (parts[0] if len(parts) > 1 else None), "from its folder"
            if label is None:
                on_error(str(path), "no camera label (leave-one-camera-out needs BACKGROUND/<camera-id>/... or a "
                         "--labels CSV naming it); not used")  # fmt: skip
            elif label not in known | {OTHER}:
                on_error(str(path), f"camera label {label!r} ({where}) is not allowed: use one of {allowed}; not used")
            else:
                out.append((path, None if label == OTHER else label))
    return out


def recompressed(ev: Evidence, quality: int, crop: tuple[int, int] | None) -> Evidence:
    """The image as a JPEG re-compression at ``quality`` would leave the region a match analyses.

    The region (the centre crop of ``crop``, placed as :func:`spncli.geometry.crop_offsets` places it;
    the whole frame when ``crop`` is None) is widened to the frame's 16x16 grid, encoded with
    :func:`spncli.degrade.encode` (IJG quality, 4:2:0) and decoded; the result replaces those pixels of a
    copy of the frame. Its quality is read from the encoded tables. Pixels outside the region are the
    original's (a match crops them away).

    Parameters
    ----------
    ev : Evidence
        Decoded image, (rows, cols, channels) float32.
    quality : int
        IJG quality 1-100.
    crop : (rows, cols) or None
        The match's crop (clipped to the frame in its own orientation, as the match clips it).

    Returns
    -------
    Evidence
        ``path`` ``"<path> [re-compressed q<quality>]"``, ``sha256`` of the encoded region's bytes.
    """
    rows, cols = ev.shape
    size = (rows, cols) if crop is None else (min(crop[0], rows), min(crop[1], cols))
    r0, c0 = crop_offsets((rows, cols), size)
    top, left = r0 // MCU * MCU, c0 // MCU * MCU
    bottom, right = min(rows, -(-(r0 + size[0]) // MCU) * MCU), min(cols, -(-(c0 + size[1]) // MCU) * MCU)
    data = encode(ev.pixels[top:bottom, left:right], replace(RECOMPRESSION, quality=quality))
    label = f"{ev.path} [re-compressed q{quality}]"
    region = decode(data, label, max_pixels=rows * cols)
    pixels = ev.pixels.copy()
    pixels[top:bottom, left:right] = region.pixels  # grey stays grey, colour colour
    structure = jpegtables.parse_jpeg(data)
    return replace(ev, path=label, sha256=region.sha256, size_bytes=len(data), format="jpeg", samples=pixels,
                   jpeg=structure, quality=jpegtables.estimate_quality(structure))  # fmt: skip


def scoring_key(settings: MatchSettings, restored: bool) -> dict:
    """What a null distribution depends on: crop, shift search, rotations, residual (and restoration)."""
    d = settings.as_dict()
    return {k: d[k] for k in ("crop", "max_shift", "rotations", "residual", "residual_params")} | {
        "restored": bool(restored)
    }


def _sources(store: FingerprintStore, names: list[str]) -> dict[str, set[str]]:
    """SHA-256 of each fingerprint source image, of its bytes and (fingerprints built since it is recorded) of
    its decoded pixels -> the cameras built from it."""
    out: dict[str, set[str]] = {}
    for cam in names:
        for src in store.meta(cam).get("sources", []):
            for key in ("sha256", "pixel_sha256"):
                if src.get(key):
                    out.setdefault(src[key], set()).add(cam)
    return out


@dataclass
class _Null:
    """Null samples of one camera and band while they are gathered."""

    pce: list
    n_shifts: int = 1
    top: list | None = None

    def add(self, record: dict, image: str, sha256: str, quality: int | None) -> None:
        self.pce.append(float(record["pce"]))
        self.n_shifts = max(self.n_shifts, int(record["n_shifts"]))
        self.top = sorted((self.top or []) + [{"pce": float(record["pce"]), "image": image, "sha256": sha256,
                                               "recompressed_at": quality}], key=lambda t: -t["pce"])[:TOP]  # fmt: skip


def calibrate(
    store: FingerprintStore,
    backgrounds: list[tuple[Path, str | None]],
    *,
    settings: MatchSettings = MatchSettings(),
    qualities: Iterable[int] = DEFAULT_QUALITIES,
    leave_one_camera_out: bool = False,
    labels: Labels | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
    on_error: Callable[[str, str], None] = lambda path, reason: None,
    on_progress: Callable[[str], None] = lambda path: None,
    on_notice: Callable[[str], None] = lambda message: None,
) -> dict:
    """Measure the null PCE distribution of every camera of ``store``, per quality band.

    Parameters
    ----------
    store : FingerprintStore
    backgrounds : list of (Path, str or None)
        Images and the camera each came from (None: from none of the cameras), e.g. from
        :func:`labelled_backgrounds`.
    settings : MatchSettings
        How images are scored; ``spn match`` must score the same way to use this null (classic residual).
    qualities : iterable of int
        Re-compress each image in memory at these IJG qualities too (see :func:`recompressed`).
    leave_one_camera_out : bool
        Recorded: whether the labels came from the database's own cameras.
    labels : Labels or None
        The labels the backgrounds' cameras came from (:func:`read_labels`): their CSV is recorded with the
        SHA-256 of the bytes read.
    max_pixels, max_bytes : int
        Bounds of :func:`spncli.evidence.read_bytes` and :func:`spncli.evidence.decode`.
    on_error, on_progress, on_notice : callable
        A file not used (and why), a file done, a note (an image met twice).

    Returns
    -------
    dict
        The calibration document (unsealed; store it with
        :meth:`spncli.store.FingerprintStore.store_calibration`).

    Raises
    ------
    StoreError
        The database cannot be read.
    ValueError
        A residual other than classic, or no background image could be used.
    """
    if settings.residual != "classic":
        raise ValueError(f"calibration scores the classic residual (got {settings.residual!r})")
    qualities = tuple(qualities)
    started = utc_now()
    names = store.select()
    matcher = Matcher(store.load_many(names), settings)
    sources = _sources(store, names)
    null = {cam: {} for cam in names}
    images, seen = [], {}
    for path, label in backgrounds:
        try:
            ev = decode(read_bytes(path, max_bytes=max_bytes), str(path), max_pixels=max_pixels)
        except EvidenceError as exc:
            on_error(exc.path, exc.reason)
            continue
        digest = ev.pixel_sha256()
        repeated = repeated_image(ev, seen, digest)  # a copy in other bytes too would enter the null twice
        if repeated:
            on_notice(f"{path}: {repeated}: counted once")
            continue
        against = [c for c in names if c != label]
        clash = sorted((sources.get(ev.sha256, set()) | sources.get(digest, set())) & set(against))
        if clash:
            said = f"labelled {label!r}" if label else "declared from none of the cameras"
            on_error(str(path), f"is a source image of the fingerprint of {', '.join(clash)} but {said}; not used")
            continue
        variants = ((q, ev if q is None else recompressed(ev, q, settings.crop)) for q in (None, *qualities))
        for q, variant in variants:  # one re-compressed copy of the frame in memory at a time
            band = band_of(variant.quality.quality if variant.quality else None)
            for record in matcher.match(variant):
                if record["camera"] in against:
                    null[record["camera"]].setdefault(band, _Null([])).add(record, os.path.abspath(path), ev.sha256,
                                                                           q)  # fmt: skip
        images.append({"path": os.path.abspath(path), "sha256": ev.sha256, "label": label,
                       "jpeg_quality": ev.quality.quality if ev.quality else None})  # fmt: skip
        on_progress(str(path))
    if not images:
        raise ValueError("no background image could be used: nothing to calibrate; nothing stored")
    digest = hashlib.sha256("\n".join(sorted(i["sha256"] for i in images)).encode()).hexdigest()
    cams = {c: {"fingerprint_sha256": sha, "bands": {}} for c, sha in matcher.cameras}
    for cam, bands in null.items():
        for band in [b for b, _, _ in BANDS] + [NOT_JPEG]:
            if band in bands:
                s = bands[band]
                cams[cam]["bands"][band] = {"count": len(s.pce), "n_shifts": s.n_shifts, "pce": sorted(s.pce),
                                            "largest": s.top}  # fmt: skip
    return {
        "created_utc": started,
        "finished_utc": utc_now(),
        "tool": tool_info(),
        "database_sha256": store.file_sha256(),
        "assumption": (
            "each background image comes from none of the cameras it is scored against: without "
            "--leave-one-camera-out, from none of the database's cameras; with it, from the camera it is labelled "
            "with (scored against every other camera), or from none ('other')"
        ),
        "parameters": {
            "scoring": scoring_key(settings, restored=False),
            "threshold": settings.threshold,
            "bands": [{"band": n, "quality_min": lo, "quality_max": hi} for n, lo, hi in BANDS]
            + [{"band": NOT_JPEG, "quality_min": None, "quality_max": None}],
            "qualities": list(qualities),
            "recompression": {
                **replace(RECOMPRESSION, quality=qualities[0] if qualities else 90).as_dict(),
                "quality": list(qualities),
                "in_memory": True,
                "region": f"the analysed region widened to the frame's {MCU}x{MCU} grid, re-compressed in place",
            } if qualities else None,
            "leave_one_camera_out": leave_one_camera_out,
            "labels": {"path": getattr(labels, "path", None), "sha256": getattr(labels, "sha256", None)}
            if labels is not None else None,  # a plain dict (no CSV read) records neither
            "seed": None,
            "deterministic": True,
        },
        "background": {"count": len(images), "sha256_list_digest": digest, "images": images},
        "cameras": cams,
    }


def band_summary(pce: list[float], n_shifts: int, threshold: float) -> dict:
    """Count, quantiles and the tail of one sorted null sample, compared with the theory.

    The empirical tail at the threshold cannot be compared with the theory:
    its smallest value, ``1/(1+n)``, is far above ``p_fa`` at PCE 60 (about
    1e-15) for any ``n`` one can measure. It is compared instead at the level
    exceeded by the ``k = max(5, ceil(n/100))`` largest samples, where ``k/n``
    is a resolved estimate (bands of fewer than 20 samples are not compared);
    the tail is *heavier than the theory* when it is
    more than :data:`HEAVY_FACTOR` times ``p_fa`` there, or when any null PCE
    is above the threshold (a false alarm that happened).

    Parameters
    ----------
    pce : list of float
        Null PCEs, sorted ascending.
    n_shifts : int
        Alignments tried per score (the theory's multiple tests).
    threshold : float
        The decision threshold.
    """
    n = len(pce)
    a = np.asarray(pce, dtype=np.float64)
    above = n - bisect.bisect_right(pce, threshold)
    out = {
        "count": n,
        "median": float(np.median(a)) if n else None,
        "p99": float(np.quantile(a, 0.99)) if n else None,
        "max": float(a[-1]) if n else None,
        "above_threshold": above,
        "tail_at_threshold": (1 + n - bisect.bisect_left(pce, threshold)) / (1 + n),
        "p_fa_at_threshold": false_alarm_probability(threshold, n_shifts),
        "check_level": None,
        "tail_at_check": None,
        "p_fa_at_check": None,
        "tail_ratio": None,
    }
    k = max(CHECK_MIN, math.ceil(n / 100))
    if n >= CHECK_COUNT:
        level = pce[n - k]
        tail = (1 + n - bisect.bisect_left(pce, level)) / (1 + n)
        theory = false_alarm_probability(level, n_shifts)
        out |= {"check_level": level, "tail_at_check": tail, "p_fa_at_check": theory,
                "tail_ratio": tail / theory if theory > 0 else math.inf}  # fmt: skip
    ratio = out["tail_ratio"]
    out["heavier_than_theory"] = bool(above > 0 or (ratio is not None and ratio > HEAVY_FACTOR))
    return out


def summary_rows(doc: dict, threshold: float | None = None) -> list[dict]:
    """One row per camera and band of a calibration document (see :func:`band_summary`)."""
    threshold = doc["parameters"]["threshold"] if threshold is None else threshold
    rows = []
    for cam, entry in sorted(doc["cameras"].items()):
        for band, b in entry["bands"].items():
            rows.append({"camera": cam, "band": band, **band_summary(b["pce"], b["n_shifts"], threshold),
                         "threshold": threshold, "n_shifts": b["n_shifts"],
                         "fingerprint_sha256": entry["fingerprint_sha256"]})  # fmt: skip
    return rows


FIELDS = ("p_fa_empirical", "null_count", "null_exceeding", "null_band", "calibration_sha256", "calibration_note")
"""What a match record gains from a calibration."""


@dataclass
class EmpiricalTail:
    """The empirical tail probability of a match's PCE, from a stored calibration (or why there is none).

    Attributes
    ----------
    doc : dict or None
        The calibration document; None when none can be used.
    sha256 : str or None
        Its file's SHA-256.
    reason : str or None
        Why no calibration is used (every record then says so).
    """

    doc: dict | None = None
    sha256: str | None = None
    reason: str | None = None

    def fields(self, camera: str, fingerprint_sha256: str, pce: float, quality: int | None) -> dict:
        """``p_fa_empirical = (1 + #null >= pce) / (1 + n)`` with ``null_count`` n and ``null_band``; else nulls
        and ``calibration_note`` saying why."""
        out = dict.fromkeys(FIELDS) | {"calibration_sha256": self.sha256}
        band = band_of(quality)
        entry = (self.doc or {}).get("cameras", {}).get(camera)
        if self.doc is None:
            return out | {"calibration_note": self.reason}
        if entry is None:
            return out | {"calibration_note": f"camera {camera} was not calibrated (spn calibrate)"}
        if entry["fingerprint_sha256"] != fingerprint_sha256:
            return out | {"calibration_note": f"the fingerprint of {camera} changed since it was calibrated: "
                          "run spn calibrate again"}  # fmt: skip
        b = entry["bands"].get(band)
        if not b or not b["count"]:
            return out | {"null_band": band, "null_count": 0,
                          "calibration_note": f"no null samples of {camera} in band {band}"}  # fmt: skip
        n = b["count"]
        k = n - bisect.bisect_left(b["pce"], pce)
        return out | {"p_fa_empirical": (1 + k) / (1 + n), "null_count": n, "null_exceeding": k, "null_band": band}


def tails_for(
    store: FingerprintStore, settings: MatchSettings, restored: bool = False
) -> tuple[EmpiricalTail, str | None]:
    """The empirical tails a match may use, and the error line to print when the stored calibration is refused.

    No calibration stored, one measured with other scoring settings, or one refused (damaged, changed):
    an :class:`EmpiricalTail` whose records are null and say why.
    """
    try:
        loaded = store.calibration()
    except StoreError as exc:
        return EmpiricalTail(reason=f"calibration refused: {exc}"), str(exc)
    if loaded is None:
        return EmpiricalTail(reason="no calibration stored with the database (spn calibrate)"), None
    doc, sha = loaded
    calibrated, now = doc["parameters"]["scoring"], scoring_key(settings, restored)
    if calibrated != now:
        diff = "; ".join(f"{k} {calibrated.get(k)!r} there, {v!r} here" for k, v in now.items() if calibrated.get(k) != v)
        return EmpiricalTail(sha256=sha, reason=f"calibrated with other scoring settings ({diff})"), None
    return EmpiricalTail(doc, sha), None
