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
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from .geometry import centre_crop
from .pce import FingerprintSpectrum
from .store import FingerprintStore, StoreError, file_sha256

__all__ = ["DEFAULT_WORKER_MEMORY", "SpectrumCache", "DatabaseSpectra", "spectrum_bytes", "parse_bytes"]

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
    """

    def __init__(self, path: str, sha256: str, crop, budget: int):
        self.store = FingerprintStore(path)
        self.sha256, self.crop, self.budget = sha256, crop, int(budget)
        self.held: dict[str, FingerprintSpectrum] = {}
        self.held_bytes = 0
        self.computed = 0  # transforms computed by this process (for tests and benchmarks)

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


def cache_for(path: str, sha256: str, crop, budget: int) -> SpectrumCache:
    """This process's cache for one database version (created on first use)."""
    key = (str(path), sha256, tuple(crop) if crop else None, int(budget))
    with _LOCK:
        cache = _CACHES.get(key)
        if cache is None:
            cache = _CACHES[key] = SpectrumCache(str(path), sha256, crop, budget)
        return cache


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

    def __getitem__(self, camera: str) -> FingerprintSpectrum:
        return cache_for(self.path, self.sha256, self.crop, self.budget).get(camera, self.k_sha256[camera])

    def __contains__(self, camera: str) -> bool:
        return camera in self.k_sha256

    def __len__(self) -> int:
        return len(self.k_sha256)
