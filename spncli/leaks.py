"""Fingerprint-leak safeguards: fingerprints that correlate with each other, and periodic artifacts.

A PRNU fingerprint is unique to a sensor only as far as it holds nothing
else. Components shared by cameras of one model or one processing chain,
*non-unique artifacts* (NUA) [1]_, make two different cameras' fingerprints
correlate, and then an image of one camera "matches" the other: the
demosaicing and JPEG-grid patterns of a common processing chain and the
linear pattern of the read-out (row and column means) [1]_, and artefacts
shared by whole camera models of the Dresden database itself [2]_.
Two safeguards, both run when a camera is added to a database:

* **Cross-PCE.** The new fingerprint is scored against every stored one,
  exactly as an image would be (:func:`spncli.pce.score`, zero shift, PCE of
  Goljan et al. [3]_); fingerprints of different sizes are both centre-cropped to
  the common size by the rule of :mod:`spncli.geometry`, the alignment a
  match of a centre crop would use. A pair above the threshold (the match
  threshold, 60 by default) is *flagged*: a match against either camera may
  be the shared component, not the sensor.
  With a database's pre-screen records (:mod:`spncli.prescreen`), the
  new fingerprint's sign agreement ``z`` with every stored one is computed
  first (one bit per pixel; ``z`` is about ``(2/π) sqrt(PCE)`` for weak
  correlations [4]_, 3.4-5.7 for the real Praktica pairs of PCE 51-64) and
  the exact PCE runs on the cameras with ``z >= 2`` (PCE about 10), the
  ``8`` best and any without a record; the others are recorded with their
  ``z`` only (``method: "signs"``). This keeps the screen's cost near
  constant as the database grows; ``spn fingerprint --leak-screen exact``
  scores every stored camera exactly.
* **Periodic peaks.** A periodic pattern puts isolated peaks into the power
  spectrum ``|F(K)|²``. Each frequency's power is divided by the local level,
  ``exp(mean of log power over a 15x15 window + γ)`` (γ the Euler-Mascheroni
  constant: for exponentially distributed power, as the spectrum of a
  noise-like fingerprint is, ``E[log P] = log μ - γ``, and the mean of logs
  ignores a lone peak in its window). Frequencies 100 times above their level
  (probability about ``e^-100`` per frequency for a noise-like spectrum) and
  with a period of at most 64 pixels in rows or columns are *peaks*; slow
  shading (both periods over 64) is not counted. The share of the
  fingerprint's energy those peaks carry is the *periodic energy*; at
  2% or more the fingerprint is flagged as carrying a periodic artifact.

The thresholds were chosen by measurement (README, "Leak safeguards").
Fingerprints made from JPEG flat-fields keep peaks at the harmonics of the
8x8 JPEG grid (periods 8, 4 and 8/3 pixels) that the Wiener filter of the
estimate does not remove entirely: the six Dresden Nikon fingerprints at a
512x512 crop carry 0.14-0.81% of their energy in them (Nikon D200 most; full frame at most 0.023%),
the five Praktica fingerprints 0.03%. These are reported, not flagged;
cameras whose grids differ in phase do not correlate through them (the
Dresden pairs' cross-PCE is below 15). An 8x8 pattern with 30% of a
fingerprint's standard deviation (8% of its energy) is flagged.

The flags are recorded with the new camera only (its sealed metadata, under
``leak_screen``): the older camera's sealed file is never rewritten, and
:func:`database_flags` finds a pair from either side by reading every
camera's header. A screen entry names the other fingerprint's SHA-256; when
that camera is later replaced, the entry no longer applies (the replacement
is screened afresh against every camera).

References
----------
.. [1] M. Chen, J. Fridrich, M. Goljan, J. Lukáš, "Determining image origin
   and integrity using sensor noise", IEEE Trans. Information Forensics and
   Security 3(1), 74-90, 2008. :doi:`10.1109/TIFS.2007.916285`
.. [2] T. Gloe, S. Pfennig, M. Kirchner, "Unexpected artefacts in PRNU-based
   camera identification: a 'Dresden Image Database' case-study", Proc. ACM
   Multimedia and Security (MM&Sec), 109-114, 2012.
   :doi:`10.1145/2361407.2361426`
.. [3] M. Goljan, J. Fridrich, T. Filler, "Large scale test of sensor
   fingerprint camera identification", Proc. SPIE 7254, 72540I, 2009.
   :doi:`10.1117/12.805701`
.. [4] W. F. Sheppard, "On the application of the theory of error to cases of
   normal distribution and normal correlation", Phil. Trans. R. Soc. A 192,
   101-167, 1899 (the sign correlation ``(2/π) arcsin ρ`` of jointly Gaussian values).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import cv2
import numpy as np

from .geometry import centre_crop
from .pce import FingerprintSpectrum, ResidualSpectrum, rfft2, score

__all__ = [
    "LEAK_VERSION",
    "SIGN_Z",
    "SIGN_TOP",
    "PEAK_RATIO",
    "MAX_PERIOD",
    "PERIODIC_FLAG",
    "cross_pce",
    "periodic_peaks",
    "screen",
    "database_flags",
    "warnings_for",
    "Screener",
    "screen_summary",
    "store_flags",
    "match_warnings",
    "check_unscreened",
]

LEAK_VERSION = "spn-leaks/1"
SIGN_Z = 2.0
"""With pre-screen records: stored cameras at or above this sign agreement get the exact PCE."""
SIGN_TOP = 8
"""With pre-screen records: the cameras of best sign agreement that always get the exact PCE."""
PEAK_RATIO = 100.0
"""A frequency this many times above its local power level is a peak."""
MAX_PERIOD = 64
"""Peaks need a period of at most this many pixels in rows or columns (slower shading is not periodic)."""
PERIODIC_FLAG = 0.02
"""Share of the fingerprint's energy in peaks from which a periodic artifact is flagged (real maximum 0.8%)."""
TOP_PEAKS = 8
"""Peaks listed per fingerprint (the strongest); the energy share counts all of them."""
_WINDOW = 15
_EULER_GAMMA = 0.5772156649015329


def cross_pce(a: np.ndarray, b: np.ndarray, *, probe: dict | None = None) -> tuple[float, tuple[int, int]]:
    """PCE between two fingerprints at zero shift, both centre-cropped to their common size.

    Parameters
    ----------
    a, b : ndarray, float32, shape (rows, cols)
        Fingerprints in sensor orientation, as stored. ``a`` is scored as the
        probe, ``b`` as the fingerprint (PCE is symmetric up to rounding).
    probe : dict, optional
        A cache of ``a``'s transforms by common size, reused across ``b``.

    Returns
    -------
    pce : float
        Signed PCE (Goljan et al. 2009), energy outside 11x11.
    size : (rows, cols)
        The common size compared; regions placed by :func:`spncli.geometry.crop_offsets`.
    """
    size = (min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1]))
    cache = {} if probe is None else probe
    if size not in cache:
        cache[size] = ResidualSpectrum(np.ascontiguousarray(centre_crop(a, size)))
    fp = FingerprintSpectrum(np.ascontiguousarray(centre_crop(b, size)))
    return float(score(cache[size], fp, rotations=False).pce), size


def _power(k: np.ndarray) -> np.ndarray:
    """The full power spectrum ``|F(k - mean)|²`` (float32, (M, N)), built from the real half spectrum."""
    k = np.asarray(k, np.float32)
    half = rfft2(k - np.float32(k.mean()))
    p_half = (half.real**2 + half.imag**2).astype(np.float32)
    rows, cols = k.shape
    mirror = np.arange(cols // 2 + 1, cols)  # P[u, v] = P[-u, N - v] for a real signal
    p = np.empty((rows, cols), np.float32)
    p[:, : cols // 2 + 1] = p_half
    p[:, cols // 2 + 1 :] = p_half[(-np.arange(rows)) % rows][:, cols - mirror]
    p[0, 0] = 0.0
    return p


def _frequencies(n: int) -> np.ndarray:
    """|frequency| in cycles per pixel of each DFT index 0..n-1."""
    i = np.arange(n)
    return np.minimum(i, n - i) / n


def periodic_peaks(
    k: np.ndarray, *, ratio: float = PEAK_RATIO, max_period: int = MAX_PERIOD, flag: float = PERIODIC_FLAG
) -> dict:
    """Isolated peaks of a fingerprint's power spectrum: periodic patterns that are not sensor noise.

    Parameters
    ----------
    k : ndarray, float32, shape (rows, cols)
        A fingerprint (at least 16x16).
    ratio : float, optional
        Power over the local level from which a frequency is a peak.
    max_period : int, optional
        A peak's shorter period (rows or columns) must be at most this.
    flag : float, optional
        Share of the energy in peaks from which the fingerprint is flagged.

    Returns
    -------
    dict
        ``peaks``: up to :data:`TOP_PEAKS` of them, strongest first, each with
        ``row_period`` and ``col_period`` (pixels; None for a constant
        direction), ``row_freq`` and ``col_freq`` (cycles per pixel),
        ``ratio`` (power over local level) and ``energy`` (share of the
        fingerprint's energy, the frequency and its mirror); ``n_peaks``,
        ``energy`` (share of all peaks), ``flagged`` and the ``rule``.
    """
    k = np.asarray(k, np.float32)
    if k.ndim != 2 or min(k.shape) < 16:
        raise ValueError(f"a fingerprint for peak detection must be 2-D and at least 16x16, got {k.shape}")
    rows, cols = k.shape
    p = _power(k)
    total = float(p.sum(dtype=np.float64))
    h = _WINDOW // 2
    # zero-mean processing empties whole lines of the spectrum (rows, columns, the CFA's Nyquist lines):
    # floored at 1% of the median power, they do not drag the local level of their neighbours down
    floor = np.float32(max(float(np.median(p)) * 1e-2, 1e-30))
    log_p = np.log(np.maximum(p, floor))
    padded = np.pad(log_p, h, mode="wrap")
    level = cv2.boxFilter(padded, -1, (_WINDOW, _WINDOW), borderType=cv2.BORDER_CONSTANT)[h:-h, h:-h]
    r = p / np.exp(level + np.float32(_EULER_GAMMA))
    fr, fc = _frequencies(rows), _frequencies(cols)
    slow = (fr[:, None] < 1.0 / max_period) & (fc[None, :] < 1.0 / max_period)
    r[slow] = 0.0
    hit = r >= ratio
    energy = float(p[hit].sum(dtype=np.float64)) / total if total > 0 else 0.0
    # list each peak once: the half plane of columns 0..N/2, rows of column 0 and N/2 once
    half = hit.copy()
    half[:, cols // 2 + 1 :] = False
    for c in {0, cols // 2} if cols % 2 == 0 else {0}:
        half[rows // 2 + 1 :, c] = False
    idx = np.flatnonzero(half)
    order = idx[np.argsort(r.ravel()[idx])[::-1]]
    peaks = []
    for i in order[:TOP_PEAKS]:
        u, v = divmod(int(i), cols)
        mirror = 1 if (v == 0 or 2 * v == cols) and (u == 0 or 2 * u == rows) else 2
        peaks.append({
            "row_freq": round(float(fr[u]), 6),
            "col_freq": round(float(fc[v]), 6),
            "row_period": round(float(1.0 / fr[u]), 3) if fr[u] else None,
            "col_period": round(float(1.0 / fc[v]), 3) if fc[v] else None,
            "ratio": round(float(r.flat[i]), 1),
            "energy": float(mirror * p.flat[i]) / total,
        })  # fmt: skip
    return {
        "peaks": peaks,
        "n_peaks": int(half.sum()),
        "energy": energy,
        "flagged": energy >= flag,
        "rule": f"power >= {ratio:g} x local level (15x15 log-mean), shorter period <= {max_period} px; "
        f"flagged at >= {flag:.2%} of the energy",
    }


def screen(
    camera: str,
    k: np.ndarray,
    others: Iterable[str],
    load: Callable[[str], tuple[np.ndarray, str]],
    *,
    threshold: float = 60.0,
    ranks: dict[str, float] | None = None,
    identify: Callable[[str], str] | None = None,
) -> dict:
    """The leak screen of a new fingerprint: PCE against each stored one, and its periodic peaks.

    Parameters
    ----------
    camera : str
        The new camera's id.
    k : ndarray, float32
        Its fingerprint.
    others : iterable of str
        The stored cameras.
    load : callable
        ``load(camera) -> (K, K's SHA-256)``, raising an exception with a
        message for a camera that cannot be read (recorded, not fatal).
    threshold : float, optional
        PCE above which a pair is flagged.
    ranks : dict, optional
        ``camera -> sign agreement z`` from the pre-screen records. When
        given, only cameras with ``z >= SIGN_Z``, the ``SIGN_TOP`` best and
        cameras absent from ``ranks`` are loaded and scored; the others are
        recorded with their ``z`` (``method: "signs"``, ``pce`` None).
    identify : callable, optional
        ``identify(camera) -> K's SHA-256`` without reading K (required with
        ``ranks``): a record names the fingerprint it was screened against.

    Returns
    -------
    dict
        ``version``, ``threshold``, ``rule``, ``compared`` (camera,
        fingerprint_sha256, pce, size, flagged), ``failed`` (camera, reason)
        and ``periodic`` (:func:`periodic_peaks`); JSON-ready, stored in the
        new camera's sealed metadata under ``leak_screen``.
    """
    if not math.isfinite(threshold):
        raise ValueError(f"leak threshold must be finite, got {threshold}")
    probe: dict = {}
    compared, failed = [], []
    others = sorted(set(others) - {camera})
    exact = set(others)
    if ranks is not None:
        best = sorted((c for c in others if c in ranks), key=lambda c: -ranks[c])[:SIGN_TOP]
        exact = {c for c in others if c not in ranks or ranks[c] >= SIGN_Z} | set(best)
    for other in others:
        try:
            if other not in exact:  # the sign agreement rules a leak out: recorded, not loaded
                compared.append({"camera": other, "fingerprint_sha256": identify(other), "pce": None,
                                 "sign_z": round(ranks[other], 3), "method": "signs", "flagged": False})  # fmt: skip
                continue
            k_other, sha = load(other)
        except Exception as exc:  # a damaged stored camera is named, the screen goes on
            failed.append({"camera": other, "reason": str(exc)})
            continue
        value, size = cross_pce(k, k_other, probe=probe)
        compared.append({
            "camera": other,
            "fingerprint_sha256": sha,
            "pce": round(value, 4),
            "size": [int(size[0]), int(size[1])],
            "method": "exact",
            **({"sign_z": round(ranks[other], 3)} if ranks and other in ranks else {}),
            "flagged": value > threshold,
        })  # fmt: skip
    return {
        "version": LEAK_VERSION,
        "threshold": threshold,
        "rule": "PCE of the two fingerprints at zero shift, both centre-cropped to the common size "
        "(spncli.geometry rule), sensor orientation as stored; flagged above the threshold"
        + ("" if ranks is None else f"; exact PCE only where the sign agreement z >= {SIGN_Z:g}, for the "
           f"{SIGN_TOP} best z and for cameras without a pre-screen record (the rest: z recorded)"),
        "mode": "exact" if ranks is None else "signs",
        "compared": compared,
        "failed": failed,
        "periodic": periodic_peaks(k),
    }


def database_flags(headers: dict[str, tuple[str, dict]]) -> dict[str, dict]:
    """Leak flags of every camera, from the screens recorded in every camera's metadata.

    Parameters
    ----------
    headers : dict
        ``camera -> (K's SHA-256, metadata)`` of every camera in the database
        (flags of a camera can be recorded by a later camera).

    Returns
    -------
    dict
        ``camera -> {"pairs": [{"camera": other, "pce": x, "recorded_by": id}],
        "periodic": periodic_peaks dict or None, "screened": bool,
        "unscreened": [cameras never compared with it]}``. A screen entry
        counts only while the other camera still has the SHA-256 it names.
    """
    out = {c: {"pairs": [], "periodic": None, "screened": False, "compared": set()} for c in headers}
    for cam, (_sha, meta) in headers.items():
        rec = meta.get("leak_screen")
        if not isinstance(rec, dict):
            continue
        out[cam]["screened"] = True
        out[cam]["periodic"] = rec.get("periodic")
        for entry in rec.get("compared", []):
            other = entry.get("camera")
            if other not in headers or headers[other][0] != entry.get("fingerprint_sha256"):
                continue  # removed or replaced since: the replacement screened itself against this camera
            out[cam]["compared"].add(other)
            out[other]["compared"].add(cam)
            if entry.get("flagged"):
                pair = {"pce": entry.get("pce"), "recorded_by": cam}
                if entry.get("shared_sources"):
                    pair["shared_sources"] = entry["shared_sources"]
                out[cam]["pairs"].append({"camera": other} | pair)
                out[other]["pairs"].append({"camera": cam} | pair)
    for cam, flags in out.items():
        flags["unscreened"] = sorted(set(headers) - {cam} - flags.pop("compared"))
        flags["pairs"].sort(key=lambda p: p["camera"])
    return out


def _period(peak: dict) -> str:
    rows, cols = peak.get("row_period"), peak.get("col_period")
    return f"{rows:g}x{cols:g}" if rows and cols else f"{rows:g} rows" if rows else f"{cols:g} columns"


def warnings_for(camera: str, flags: dict) -> list[str]:
    """Warning lines for matches against ``camera`` (empty when it carries no flag)."""
    lines = [
        f"leak: the fingerprint of {camera} correlates with the fingerprint of {p['camera']} (PCE {p['pce']:.1f} "
        + (
            f"between the fingerprints): they were estimated from {p['shared_sources']} of the same image(s) "
            "(same SHA-256): one sensor stored under two ids, or images reused; the two are not independent "
            "references"
            if p.get("shared_sources")
            else "between the fingerprints): they share a non-unique component, so a match with either camera may "
            "come from it, not from the sensor"
        )
        for p in flags.get("pairs", [])
    ]
    periodic = flags.get("periodic") or {}
    if periodic.get("flagged"):
        shown = ", ".join(_period(p) for p in periodic.get("peaks", [])[:3])
        lines.append(
            f"periodic artifact: the fingerprint of {camera} has {periodic.get('n_peaks')} spectral peak(s) "
            f"(periods {shown} px) carrying {periodic.get('energy', 0):.2%} of its energy: a shared periodic "
            "pattern (e.g. a JPEG grid) can raise the PCE of images of other cameras"
        )
    return lines


class Screener:
    """The ``screen`` callable for :meth:`spncli.store.FingerprintStore.add`: :func:`screen` against ``store``.

    Each stored fingerprint is read with its file SHA-256, checksum and seal
    verified (:meth:`~spncli.store.FingerprintStore.load`); one that cannot be
    read is listed under ``failed``. The screen made is kept in ``result``.
    """

    def __init__(self, store, camera: str, k: np.ndarray, *, threshold: float = 60.0, sources: Iterable[str] = (),
                 exact: bool = False):  # fmt: skip
        self.store, self.camera, self.k, self.threshold, self.exact = store, camera, k, threshold, exact
        self.sources = set(sources)  # SHA-256 of the new fingerprint's images: a pair sharing some is named so
        self.result: dict | None = None
        self._k_sha256: dict[str, str] = {}

    def _load(self, other: str) -> tuple[np.ndarray, str]:
        fp = self.store.load(other)
        return fp.k, fp.sha256

    def _identify(self, other: str) -> str:
        """K's SHA-256 of a camera the signs ruled out: from its pre-screen record (which the index ties to
        the camera's current file), else from the camera file's header (records of an older spn)."""
        known = self._k_sha256.get(other)
        return known if known is not None else self.store.header(other)[0]

    def _ranks(self, others: list[str]) -> dict[str, float]:
        """Sign agreement of the new fingerprint with every stored one that has a pre-screen record."""
        from .prescreen import PrescreenIndex

        if not others:  # the first camera (the database may not exist yet)
            return {}
        digests, _unindexed = self.store.sign_digests(others)
        self._k_sha256 = {cam: d.k_sha256 for cam, d in digests.items() if d.k_sha256}
        index = PrescreenIndex()
        for cam, digest in digests.items():
            index.add_digest(cam, digest)
        if not len(index):
            return {}
        return {c.camera: c.z for c in index.query(self.k, top=None, rotations=False)}

    def __call__(self, others: list[str]) -> dict:
        ranks = None if self.exact else self._ranks(others)
        self.result = screen(self.camera, self.k, others, self._load, threshold=self.threshold, ranks=ranks,
                             identify=self._identify)  # fmt: skip
        for entry in self.result["compared"]:
            if entry["flagged"] and self.sources:
                theirs = {s.get("sha256") for s in self.store.meta(entry["camera"]).get("sources") or ()}
                entry["shared_sources"] = len(self.sources & theirs)
        return self.result


def screen_summary(camera: str, rec: dict) -> tuple[str, list[str]]:
    """One summary line and the warning lines of a new camera's screen (:func:`screen`)."""
    compared = rec.get("compared", [])
    scored = [e for e in compared if e.get("pce") is not None]
    best = max(scored, key=lambda e: e["pce"], default=None)
    periodic = rec.get("periodic") or {}
    by_signs = len(compared) - len(scored)
    line = (
        f"leak screen of {camera}: compared with {len(compared)} stored fingerprint(s)"
        + (f" ({len(scored)} by exact PCE, {by_signs} ruled out by sign agreement z < {SIGN_Z:g})" if by_signs else "")
        + (f", highest PCE {best['pce']:.1f} ({best['camera']})" if best else "")
        + f"; {periodic.get('n_peaks', 0)} periodic spectral peak(s), {periodic.get('energy', 0):.3%} of its energy"
    )
    pairs = [{"camera": e["camera"], "pce": e["pce"], "shared_sources": e.get("shared_sources")} for e in compared
             if e.get("flagged")]  # fmt: skip
    lines = warnings_for(camera, {"pairs": pairs, "periodic": periodic})
    lines = [w + f" (recorded; matches against {camera} and the other camera carry this warning)" if w.startswith(
        "leak:") else w for w in lines]  # fmt: skip
    lines += [f"leak screen: stored camera {f['camera']} not compared: {f['reason']}" for f in rec.get("failed", [])]
    return line, lines


def store_flags(store, *, whole_files: bool = False) -> tuple[dict[str, dict], list[str]]:
    """:func:`database_flags` of a database, from every camera's header (no pixels read).

    With ``whole_files`` each camera's file is also hashed against the SHA-256 the index names it by
    (:meth:`spncli.store.FingerprintStore.meta`), so a camera whose bytes were damaged is a problem line
    rather than a camera listed without flags.

    Returns
    -------
    flags : dict
        ``camera -> flags`` for every camera whose header could be read.
    problems : list of str
        One line per camera whose header could not be read (its screen, and
        flags it recorded, are unknown).
    """
    from .store import StoreError

    headers, problems = {}, []
    for cam in store.cameras():
        try:
            if whole_files:
                meta = store.meta(cam)
                sha = meta.pop("sha256")
            else:
                sha, meta, _shape = store.header(cam)
        except StoreError as exc:
            problems.append(str(exc))
            continue
        headers[cam] = (sha, meta)
    return database_flags(headers), problems


def match_warnings(store, names: Iterable[str]) -> dict[str, list[str]]:
    """``camera -> warning lines`` for the cameras a match scores (only those with a warning).

    A camera whose header cannot be read is left to the match itself, which
    reports it; a camera unreadable here may hide a flag it recorded on another,
    which is then named in that camera's warnings.
    """
    flags, problems = store_flags(store)
    out = {}
    for cam in names:
        lines = warnings_for(cam, flags.get(cam, {}))
        if problems:
            lines += [f"leak screen incomplete: {p}" for p in problems if f"{cam!r}" not in p]
        if lines:
            out[cam] = lines
    return out


def check_unscreened(store, flags: dict[str, dict], *, threshold: float = 60.0) -> list[dict]:
    """PCE of every pair of cameras no screen compared (cameras added by an older version), computed now.

    Nothing is written: the result is for display. Each fingerprint is read
    (verified) once per pair it is in; one that cannot be read is named.

    Returns
    -------
    list of dict
        ``camera``, ``other``, ``pce`` (or ``error``), ``flagged``, ``size``.
    """
    pairs = sorted({tuple(sorted((a, b))) for a, f in flags.items() for b in f["unscreened"]})
    out = []
    for a, b in pairs:
        try:
            value, size = cross_pce(store.load(a).k, store.load(b).k)
        except Exception as exc:  # a damaged camera is named, the others go on
            out.append({"camera": a, "other": b, "pce": None, "flagged": None, "error": str(exc)})
            continue
        out.append({"camera": a, "other": b, "pce": round(value, 4), "flagged": value > threshold,
                    "size": [int(size[0]), int(size[1])]})  # fmt: skip
    return out
