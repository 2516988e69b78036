"""Per-file jobs: matching, and residuals written with their provenance (extraction, restoration).

A job is a small picklable object holding the settings; calling it on a path
reads, hashes and analyses the image. :class:`MatchJob` returns the scores
(and the pictures a case keeps); the residual jobs write
``NAME-SHA8.<kind>.npy`` (float32), ``.json`` (provenance) and optionally
``.png`` into the output folder, atomically. The same job runs in-process or
on Dask workers (:func:`spncli.batch.execute`), and never raises for a bad
file: it returns ``{"path", "error"}``.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .device import DeviceUnavailable, compute_record, resolve_device
from .evidence import DEFAULT_MAX_PIXELS, EvidenceError, decode, load_image, read_bytes
from .identify import Matcher, cropped_pixels, residual_with_info
from .jpegdomain import AwareSettings
from .plots import detail_png, preview_png, thumbnail_jpeg
from .provenance import atomic_write_bytes, atomic_write_json, atomic_write_npy, output_stem, tool_info, utc_now
from .residualfile import is_residual_file, load_residual_file, match_saved
from .residual import ResidualParams
from .store import StoreError

__all__ = ["MatchJob", "ExtractJob", "RestoreJob", "save_with_provenance"]


def save_with_provenance(out: Path, stem: str, array: np.ndarray, record: dict, preview: bool) -> Path:
    """Write ``stem.npy``, optionally ``stem.png``, then ``stem.json`` (last: its presence means complete)."""
    array = np.ascontiguousarray(array, dtype=np.float32)  # C order in the file, whatever the caller's layout
    array_sha256 = atomic_write_npy(out / f"{stem}.npy", array)
    files = {"array": f"{stem}.npy"}
    if preview:
        atomic_write_bytes(out / f"{stem}.png", preview_png(array))
        files["preview"] = f"{stem}.png"
    atomic_write_json(
        out / f"{stem}.json",
        {
            **record,
            "files": files,
            "array_sha256": array_sha256,
            "dtype": "float32",
            "shape": list(array.shape),
            "std": float(array.std()),
            "seed": None,
            "created_utc": utc_now(),
            **tool_info(),
        },
    )
    return out / f"{stem}.npy"


@dataclass
class MatchJob:
    """Score one file against the fingerprints; skips the (path, SHA-256) pairs a case holds already.

    With ``artifacts``, a scored result carries what a case keeps for the report: the correlation
    surfaces of the pairs above the threshold, a 1:1 contrast-stretched detail of the residual and a
    small JPEG thumbnail of the image (only when there is a surface).
    """

    matcher: Matcher
    skip: frozenset = frozenset()
    max_pixels: int = DEFAULT_MAX_PIXELS
    artifacts: bool = True
    preview_side: int = 768

    def __post_init__(self):
        self._scored = {path: sha for path, sha in self.skip}  # a path the case scored with other bytes: refused

    def _already(self, path: str, sha: str) -> dict | None:
        """The skip or error result of a file the case holds already (by path), else None."""
        if (path, sha) in self.skip:
            return {"path": path, "sha256": sha, "skipped": True}
        if path in self._scored:
            reason = (f"changed since the case scored it (SHA-256 now {sha}, scored {self._scored[path]}); a case is "
                      "built on unchanged evidence")  # fmt: skip
            return {"path": path, "sha256": sha, "error": reason}
        return None

    def __call__(self, path: str) -> dict:
        """``{"path", "error"}``, ``{"path", "sha256", "skipped": True}``, or the records (and artifacts)."""
        if is_residual_file(path):  # a residual saved by spn extract / spn restore, with its provenance
            try:
                saved = load_residual_file(path)
                already = self._already(path, saved.sha256)  # in the case? (rows name the source's SHA-256)
                if already:
                    return already
                records = match_saved(self.matcher, saved, screen=_screened)  # --prescreen as for an image
            except EvidenceError as exc:
                return {"path": path, "error": exc.reason}
            for r in records:
                r["size_bytes"] = saved.size_bytes
            return {"path": path, "sha256": saved.sha256, "records": records, "surfaces": {}, "preview": None,
                    "thumbnail": None}  # fmt: skip
        try:
            data = read_bytes(path)
            sha = hashlib.sha256(data).hexdigest()
            already = self._already(path, sha)
            if already:
                return already
            ev = decode(data, path, max_pixels=self.max_pixels)
            del data
            residual = self.matcher.residual(ev)
            samples = _release_pixels(ev, keep=self.artifacts)
            matcher, screened, z = _screened(self.matcher, residual[0])
            records = matcher.match(ev, surfaces=self.artifacts, residual=residual)
        except EvidenceError as exc:
            return {"path": path, "error": exc.reason}
        except (StoreError, DeviceUnavailable) as exc:  # a worker's own database read, or its device
            return {"path": path, "error": str(exc)}
        surfaces = {r["camera"]: r.pop("_surface") for r in records if "_surface" in r}
        for r in records:
            r["size_bytes"] = ev.size_bytes
            if screened:
                r |= screened | {"prescreen_z": z.get(r["camera"])}
        preview = detail_png(residual[0]) if surfaces else None
        thumbnail = thumbnail_jpeg(samples) if surfaces else None
        return {
            "path": path,
            "sha256": ev.sha256,
            "records": records,
            "surfaces": surfaces,
            "preview": preview,
            "thumbnail": thumbnail,
            "warnings": ev.warnings,
        }


    def share(self, folder: str, run_map) -> tuple[MatchJob, list[str]]:
        """This job with the fingerprint transforms written once into ``folder`` for all workers.

        Only for a matcher whose fingerprints stay in the database
        (:meth:`spncli.identify.Matcher.from_database`); otherwise the job is returned as it is.
        See :meth:`spncli.spectra.DatabaseSpectra.shared_in` for ``run_map`` and the failures returned.
        """
        from .spectra import DatabaseSpectra

        spectra = self.matcher.spectra
        if not isinstance(spectra, DatabaseSpectra):
            return self, []
        shared, failed = spectra.shared_in(folder, run_map)
        matcher = copy.copy(self.matcher)
        matcher.spectra = shared
        return replace(self, matcher=matcher), failed


def _release_pixels(ev, keep: bool) -> np.ndarray | None:
    """Free the image once the residual is known; return it as 8-bit samples if ``keep`` (thumbnail).

    ``ev``'s samples and pixels become zero-byte read-only stand-ins of the same shape (``ev.shape``
    still holds), so a worker scoring many cameras does not keep the image (36 MB of samples at
    12 MP, 144 MB more where its float pixels were made) while it reads and transforms fingerprints.
    """
    samples = ev.eight_bit() if keep else None
    ev.release_pixels()
    return samples


def _screened(matcher: Matcher, w: np.ndarray) -> tuple[Matcher, dict, dict]:
    """The matcher restricted to the pre-screen's candidates for residual ``w`` (all cameras without one).

    Returns the matcher to score with, what every record says of the pre-screen (nothing when it is
    off; else ``prescreen``: the
    setting; ``prescreen_scored``: cameras scored of those held; ``prescreen_unindexed``: cameras
    without a digest, scored exactly) and each indexed camera's sign-agreement z.
    """
    screen = getattr(matcher, "prescreen", None)
    if screen is None:
        return matcher, {}, {}
    names = [camera for camera, _ in matcher.cameras]
    keep, z = screen.select(w, names, rotations=matcher.settings.rotations)
    narrowed = copy.copy(matcher)  # shares the spectra; only the list of cameras scored differs
    narrowed.cameras = [c for c in matcher.cameras if c[0] in keep]
    info = {
        "prescreen": screen.setting,
        "prescreen_scored": f"{len(narrowed.cameras)} of {len(names)}",
        "prescreen_unindexed": len(screen.unindexed),
    }
    return narrowed, info, z


@dataclass
class ExtractJob:
    """Residual of each image, saved as ``NAME-SHA8.residual.*`` (classic) or ``NAME-SHA8.ca-residual.*``.

    ``kind="compression-aware"`` asks for :mod:`spncli.jpegdomain`'s residual;
    a non-JPEG input then falls back to the classic one, and the provenance
    says which (``residual_kind``, ``fallback``). ``device`` is the
    ``--device`` request, resolved where the job runs (a Dask worker that
    declares a GPU uses it); the provenance records it under ``compute``.
    """

    out: Path
    params: ResidualParams = ResidualParams()
    crop: tuple[int, int] | None = None
    preview: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    kind: str = "classic"
    aware: AwareSettings = AwareSettings()
    device: str = "cpu"
    clashes: frozenset = frozenset()  # input names shared by several inputs (provenance.clashing_stems)

    def __call__(self, path: str) -> dict:
        try:
            device = resolve_device(self.device)
        except ValueError as exc:
            return {"path": path, "error": str(exc)}
        try:
            ev = load_image(path, max_pixels=self.max_pixels)
            w, info = residual_with_info(ev, self.params, self.crop, kind=self.kind, aware=self.aware, device=device)
        except EvidenceError as exc:
            return {"path": path, "error": exc.reason}
        aware = info["residual_kind"] == "compression-aware"
        written = save_with_provenance(
            self.out,
            f"{output_stem(path, ev.sha256, self.clashes)}.{'ca-residual' if aware else 'residual'}",
            w,
            {
                "kind": (
                    "compression-aware residual (surviving JPEG DCT coefficients)"
                    if aware
                    else "classic residual (Lukáš-Fridrich-Goljan)"
                ),
                "residual_kind": info["residual_kind"],
                "residual_requested": self.kind,
                "residual_info": info,
                "input": ev.provenance(),
                "crop": list(self.crop) if self.crop else None,
                "params": self.params.as_dict(),
                "compute": compute_record(self.device, device),
            },
            self.preview,
        )
        return {"path": path, "sha256": ev.sha256, "written": str(written), "residual_kind": info["residual_kind"],
                "warnings": ev.warnings}  # fmt: skip


@dataclass
class RestoreJob:
    """GAN-restored residual of each image, saved as ``NAME-SHA8.restored.*``."""

    out: Path
    restorer: object
    params: ResidualParams = ResidualParams()
    crop: tuple[int, int] | None = None
    preview: bool = False
    tile: int = 1024
    precision: str = "auto"
    quality: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    clashes: frozenset = frozenset()  # input names shared by several inputs (provenance.clashing_stems)

    def __call__(self, path: str) -> dict:
        try:
            ev = load_image(path, max_pixels=self.max_pixels)
            started = time.perf_counter()
            restored, info = self.restorer.restore(
                ev,
                cropped_pixels(ev, self.crop),
                quality=self.quality,
                params=self.params,
                tile=self.tile,
                precision=self.precision,
            )
        except EvidenceError as exc:
            return {"path": path, "error": exc.reason}
        except ValueError as exc:
            return {"path": path, "error": str(exc)}
        done = info.get("restored", True)  # False: the file's coefficients could not be read; classic instead
        written = save_with_provenance(
            self.out,
            f"{output_stem(path, ev.sha256, self.clashes)}.restored",
            restored,
            {
                "kind": "restored sensor noise (quality-conditioned restoration network)" if done else
                        f"classic residual, not restored ({info.get('restoration_skipped')})",
                "residual_kind": "restored" if done else info.get("input_residual", "classic"),
                "input": ev.provenance(),
                "crop": list(self.crop) if self.crop else None,
                "restoration": info,
                "residual_params": self.params.as_dict(),
                "seconds": round(time.perf_counter() - started, 3),
            },
            self.preview,
        )
        return {
            "path": path,
            "sha256": ev.sha256,
            "written": str(written),
            "quality": info["quality_used"],
            "device": info["device"],
            "warnings": ev.warnings,
        }
