"""Fingerprint spectra read from the database where the matching runs, within a memory budget.

A cluster job carries only the database's path, the SHA-256 of its index and
the settings (:class:`DatabaseSpectra` pickles to a few hundred bytes). Each
worker process opens the database read-only when it first needs a camera,
checks that the index still has the SHA-256 the run recorded, reads the
fingerprint with its file SHA-256, checksum and seal verified
(:meth:`spncli.store.FingerprintStore.load`), and computes its transform
(:class:`spncli.pce.FingerprintSpectrum`). One :class:`SpectrumCache` per
process and database version holds the transforms up to a byte budget.

The budget is kept by admission, not by eviction: transforms are kept while
they fit, and a camera that does not fit is read and transformed for the
image at hand and dropped. Every image visits the cameras in the same order,
a cyclic scan, for which least-recently-used eviction is the worst policy
(each camera is evicted just before it is needed again, so nothing is ever
reused); keeping the first transforms reuses budget/size of them per image.

Shared transforms. On a local cluster the transforms are computed once per
run, not once per worker and image: before the images are scored, the
workers transform the cameras between them (one task per camera) and write
each transform into a folder of the run's own (:func:`write_shared`: a
``.npy`` of the complex64 half spectrum and a ``.json`` that names the
database's index SHA-256, the fingerprint's SHA-256, the crop and the
``.npy``'s SHA-256; temporary name, then rename, the ``.json`` last). Every
worker then checks each file's SHA-256 once and maps it read-only
(``numpy.load(mmap_mode="r")``): the pages are the operating system's page
cache, held once however many workers read them, and no budget applies to
them. A camera whose file is missing or does not verify is read from the
database as above, so the scores do not depend on the folder (a remote
scheduler's workers, which cannot see it, read the database).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .geometry import centre_crop
from .pce import FingerprintSpectrum
from .store import FingerprintStore, StoreError, file_sha256

__all__ = [
    "DEFAULT_WORKER_MEMORY",
    "SHARED_FORMAT",
    "SpectrumCache",
    "DatabaseSpectra",
    "spectrum_bytes",
    "parse_bytes",
    "write_shared",
    "read_shared",
]

SHARED_FORMAT = "spn-spectrum/1"
"""Format of a shared transform file (its ``.json`` says it)."""

DEFAULT_WORKER_MEMORY = 1536 * 2**20
"""Bytes of fingerprint transforms one worker process keeps (1.5 GiB: 31 transforms of 12 MP)."""

_CACHES: dict[tuple, SpectrumCache] = {}
_LOCK = threading.Lock()


def spectrum_bytes(spectrum: FingerprintSpectrum) -> int:
    """Bytes a fingerprint transform holds (its complex64 half spectrum)."""
    return int(spectrum.spectrum.nbytes)


def parse_bytes(text: str) -> int:
    """``"1536M"``, ``"2G"``, ``"800000000"`` -> bytes.

    Raises
    ------
    ValueError
        If ``text`` is not a positive number with an optional K, M or G suffix (powers of 1024).
    """
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = units.get(t[-1:], 1)
    try:
        value = float(t[:-1] if t[-1:] in units else t) * scale
    except ValueError:
        value = -1
    if not value > 0:
        raise ValueError(f"memory {text!r} is not allowed: use a positive size such as 1536M or 2G")
    return int(value)


class SpectrumCache:
    """Transforms of one database version's fingerprints, at most ``budget`` bytes of them held.

    Parameters
    ----------
    path : str
        The database (its index).
    sha256 : str
        The index's SHA-256 when the run began; every read checks it still is.
    crop : (rows, cols) or None
        Centre crop applied to each fingerprint before its transform.
    budget : int
        Bytes of transforms held at most; a transform that does not fit is returned and not kept.

    shared : str or None
        A folder of transforms written by :func:`write_shared` for this run: each is checked once and
        mapped read-only (outside the budget); a camera without a valid file there is read as above.
    """

    def __init__(self, path: str, sha256: str, crop, budget: int, shared: str | None = None):
        self.store = FingerprintStore(path)
        self.sha256, self.crop, self.budget, self.shared = sha256, crop, int(budget), shared
        self.held: dict[str, FingerprintSpectrum] = {}
        self.held_bytes = 0
        self.computed = 0  # transforms computed by this process (for tests and benchmarks)
        self.mapped = 0  # shared transforms mapped by this process
        self.unshared: set[str] = set()  # cameras whose shared file was missing or did not verify

    def get(self, camera: str, k_sha256: str) -> FingerprintSpectrum:
        """The transform of ``camera``'s fingerprint, whose K must have SHA-256 ``k_sha256``.

        Raises
        ------
        StoreError
            If the database changed since the run began, or the fingerprint is damaged.
        """
        hit = self.held.get(camera)
        if hit is not None:
            return hit
        if self.shared is not None and camera not in self.unshared:
            spectrum = read_shared(self.shared, self.sha256, self.crop, camera, k_sha256)
            if spectrum is not None:
                self.held[camera] = spectrum  # a read-only map: the page cache holds it, not this process
                self.mapped += 1
                return spectrum
            self.unshared.add(camera)
        try:
            now = file_sha256(self.store.path)
        except OSError as exc:
            raise StoreError(f"{self.store.path}: cannot read the database ({exc.strerror or exc})") from None
        if now != self.sha256:
            raise StoreError(
                f"{self.store.path}: the database changed since this run began (index SHA-256 {now[:16]}..., "
                f"recorded {self.sha256[:16]}...): re-run against the database as it is now"
            )
        fp = self.store.load(camera)
        if fp.sha256 != k_sha256:
            raise StoreError(f"{self.store.path}: fingerprint {camera!r} differs from the one this run listed")
        k = fp.k
        if self.crop is not None:
            k = centre_crop(k, (min(self.crop[0], k.shape[0]), min(self.crop[1], k.shape[1])))
        spectrum = FingerprintSpectrum(np.ascontiguousarray(k))
        del fp, k
        self.computed += 1
        size = spectrum_bytes(spectrum)
        if self.held_bytes + size <= self.budget:
            self.held[camera] = spectrum
            self.held_bytes += size
        return spectrum


def cache_for(path: str, sha256: str, crop, budget: int, shared: str | None = None) -> SpectrumCache:
    """This process's cache for one database version (created on first use)."""
    key = (str(path), sha256, tuple(crop) if crop else None, int(budget), shared)
    with _LOCK:
        cache = _CACHES.get(key)
        if cache is None:
            cache = _CACHES[key] = SpectrumCache(str(path), sha256, crop, budget, shared)
        return cache


def _shared_stem(sha256: str, crop, camera: str, k_sha256: str) -> str:
    """File stem of one camera's shared transform: a digest of everything the transform depends on."""
    key = json.dumps([SHARED_FORMAT, sha256, list(crop) if crop else None, camera, k_sha256])
    return hashlib.sha256(key.encode()).hexdigest()[:40]


def _regular(path: Path) -> bool:
    """Whether ``path`` is a regular file itself (not a link to one)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class _HashingWriter:
    """A binary file that hashes what is written to it (the bytes written, not read back)."""

    def __init__(self, fh):
        self.fh, self.sha256 = fh, hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.fh.write(data)


def write_shared(task: tuple) -> str | None:
    """Transform one camera's fingerprint into a run's shared folder (a task run on a worker).

    ``task`` is ``(database, index SHA-256, crop, camera, K SHA-256, folder)``. The fingerprint is
    read with every check of :meth:`SpectrumCache.get`; ``STEM.npy`` (complex64 half spectrum) is
    written under a temporary name and renamed, then ``STEM.json`` with its SHA-256 (its presence
    means complete). Not synced to disk: the folder lives for one run, and a torn file fails its
    SHA-256 and is read from the database instead.

    Returns
    -------
    None, or why the camera was not written (it is then read from the database where it is scored).
    """
    path, sha256, crop, camera, k_sha256, folder = task
    try:
        spectrum = SpectrumCache(path, sha256, crop, budget=0).get(camera, k_sha256)
        stem = Path(folder) / _shared_stem(sha256, crop, camera, k_sha256)
        fd, tmp = tempfile.mkstemp(prefix=f".{stem.name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                hashing = _HashingWriter(fh)
                np.save(hashing, spectrum.spectrum, allow_pickle=False)
            digest = hashing.sha256.hexdigest()
            os.replace(tmp, f"{stem}.npy")
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        record = {
            "format": SHARED_FORMAT,
            "camera": camera,
            "db_sha256": sha256,
            "fingerprint_sha256": k_sha256,
            "crop": list(crop) if crop else None,
            "shape": list(spectrum.shape),
            "mean": spectrum.mean,
            "sum_sq": spectrum.sum_sq,
            "npy_sha256": digest,
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{stem.name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh)
        os.replace(tmp, f"{stem}.json")
    except (StoreError, OSError) as exc:
        return f"{camera}: {exc}"
    return None


def read_shared(folder: str, sha256: str, crop, camera: str, k_sha256: str) -> FingerprintSpectrum | None:
    """``camera``'s transform from a shared folder, mapped read-only; None if absent or not verified.

    The ``.json`` must name this database version, fingerprint and crop, and the ``.npy`` (a regular
    file, not a link) must have the SHA-256 it records.
    """
    stem = Path(folder) / _shared_stem(sha256, crop, camera, k_sha256)
    npy, meta = Path(f"{stem}.npy"), Path(f"{stem}.json")
    if not (_regular(npy) and _regular(meta)):
        return None
    try:
        record = json.loads(meta.read_text())
        expected = (SHARED_FORMAT, camera, sha256, k_sha256, list(crop) if crop else None)
        found = tuple(record.get(k) for k in ("format", "camera", "db_sha256", "fingerprint_sha256", "crop"))
        if found != expected or file_sha256(npy) != record["npy_sha256"]:
            return None
        return FingerprintSpectrum.from_parts(
            np.load(npy, mmap_mode="r", allow_pickle=False), record["shape"], record["mean"], record["sum_sq"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class DatabaseSpectra:
    """``spectra[camera]`` for a :class:`spncli.identify.Matcher` whose fingerprints stay in the database.

    Pickles to the path, the index SHA-256, the crop, the budget and each
    camera's K SHA-256; the transforms live in the process's
    :class:`SpectrumCache`, never in the pickle.
    """

    path: str
    sha256: str
    crop: tuple[int, int] | None
    budget: int
    k_sha256: dict[str, str] = field(default_factory=dict)
    shared: str | None = None

    def __getitem__(self, camera: str) -> FingerprintSpectrum:
        cache = cache_for(self.path, self.sha256, self.crop, self.budget, self.shared)
        return cache.get(camera, self.k_sha256[camera])

    def shared_in(self, folder: str, run_map: Callable[[Callable, list], list]) -> tuple[DatabaseSpectra, list[str]]:
        """These spectra with every camera's transform written once into ``folder`` (see :func:`write_shared`).

        ``run_map(function, items)`` runs the tasks (one per camera) where the workers are and returns
        their results. Returns the spectra that read the folder, and why some cameras were not written
        (those are read from the database where they are scored).
        """
        tasks = [(self.path, self.sha256, self.crop, c, k, str(folder)) for c, k in self.k_sha256.items()]
        failed = [r for r in run_map(write_shared, tasks) if r is not None]
        return replace(self, shared=str(folder)), failed

    def __contains__(self, camera: str) -> bool:
        return camera in self.k_sha256

    def __len__(self) -> int:
        return len(self.k_sha256)
