"""The camera fingerprint database: one HDF5 file, safe under concurrency and kills.

Layout (format ``spn-db/2``)::

    /                       attrs: format
    /cameras/<id>/K         float32 (rows, cols) fingerprint
                            attrs: sha256 (of K's bytes, C order), meta (JSON),
                                   seal (SHA-256 of the camera id, K's shape,
                                   dtype and SHA-256, and the meta JSON text)

Writers take an exclusive ``flock`` on ``<db>.lock``, write a new file beside
the database holding the old cameras plus the change, and rename it over the
original:
a process killed at any moment leaves the previous file intact, with every
camera it held. Readers open the file read-only and see one complete
version. Each fingerprint's SHA-256 and seal are checked when it is read, so
a fingerprint whose pixels or recorded facts (make, model, serial, sources,
count, geometry, ...) were changed is reported as corrupted, never used.
Fingerprints written by ``spn-db/1`` carry no seal: they are listed but not
used (rebuild them). A write that fails (disk full) leaves the previous file
as it was and is reported in one line.

This is the only module that imports h5py.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .provenance import atomic_path

__all__ = ["FORMAT", "StoreError", "Fingerprint", "FingerprintStore", "array_sha256", "seal_sha256", "check_camera_id"]

FORMAT = "spn-db/2"
READABLE_FORMATS = ("spn-db/1", FORMAT)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class StoreError(Exception):
    """The database cannot be read or changed; ``str()`` names the file and the reason."""


def array_sha256(k: np.ndarray) -> str:
    """SHA-256 of a float32 array's bytes in C order."""
    return hashlib.sha256(np.ascontiguousarray(k, dtype=np.float32).tobytes()).hexdigest()


def seal_sha256(camera: str, shape, k_sha256: str, meta_json: str) -> str:
    """SHA-256 over everything stored for one camera: id, shape, dtype, K's SHA-256 and the meta JSON text."""
    record = {"camera": camera, "dtype": "float32", "shape": [int(n) for n in shape], "k_sha256": k_sha256}
    text = json.dumps(record, sort_keys=True) + "\n" + meta_json
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Fingerprint:
    """A stored camera fingerprint and what is known of it."""

    camera: str
    k: np.ndarray
    sha256: str
    meta: dict


def check_camera_id(camera: str) -> str:
    """Validate a camera id: 1-128 of letters, digits, '.', '_' and '-', starting alphanumeric."""
    if not _ID.match(camera):
        raise StoreError(
            f"camera id {camera!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return camera


class FingerprintStore:
    """An HDF5 fingerprint database at ``path``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # -- reading ---------------------------------------------------------
    @contextlib.contextmanager
    def _open_read(self):
        if not self.path.exists():
            raise StoreError(f"{self.path}: no such database (create it with 'spn fingerprint')")
        try:
            f = h5py.File(self.path, "r", locking=False)
        except OSError as exc:
            raise StoreError(f"{self.path}: not a readable spn HDF5 database ({exc})") from None
        with f:
            if f.attrs.get("format") not in READABLE_FORMATS:
                raise StoreError(
                    f"{self.path}: not an spn database (format {f.attrs.get('format')!r}, expected {FORMAT!r})"
                )
            if "cameras" in f and not isinstance(f["cameras"], h5py.Group):
                raise StoreError(f"{self.path}: damaged database ('cameras' is not a group)")
            yield f

    def cameras(self) -> list[str]:
        """Camera ids in the database, sorted."""
        with self._open_read() as f:
            return sorted(f["cameras"].keys()) if "cameras" in f else []

    def meta(self, camera: str) -> dict:
        """Metadata of one camera, its seal verified, without reading its fingerprint."""
        with self._open_read() as f:
            _k, stored, meta = self._entry(f, camera, pixels=False)
        return dict(meta, sha256=stored)

    def _group(self, f, camera):
        if "cameras" not in f or camera not in f["cameras"]:
            have = ", ".join(sorted(f["cameras"].keys())) if "cameras" in f else "none"
            raise StoreError(f"{self.path}: no camera {camera!r} (cameras: {have})")
        return f["cameras"][camera]

    def _entry(self, f, camera: str, *, pixels: bool):
        """(K or None, K's SHA-256, meta) of one camera, the seal checked; StoreError if damaged or changed."""
        group = self._group(f, camera)
        corrupted = f"{self.path}: fingerprint {camera!r} is corrupted"
        try:
            ds = group["K"]
            stored, meta_json = str(ds.attrs["sha256"]), str(ds.attrs["meta"])
            seal, shape = ds.attrs.get("seal"), ds.shape
            k = ds[()].astype(np.float32, copy=False) if pixels else None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"{corrupted}: damaged entry ({type(exc).__name__}: {exc}); it was not used") from None
        except OSError as exc:
            raise StoreError(f"{self.path}: fingerprint {camera!r} is unreadable ({exc}); it was not used") from None
        if seal is None:
            raise StoreError(
                f"{self.path}: fingerprint {camera!r} has no seal over its metadata (written by an older spn, "
                f"format spn-db/1): rebuild it with 'spn fingerprint ... --replace'; it was not used"
            )
        if str(seal) != seal_sha256(camera, shape, stored, meta_json):
            raise StoreError(f"{corrupted} (its metadata or shape differ from the seal); it was not used")
        if k is not None and array_sha256(k) != stored:
            raise StoreError(f"{corrupted} (SHA-256 mismatch); it was not used")
        try:
            meta = json.loads(meta_json)
        except json.JSONDecodeError as exc:
            raise StoreError(f"{corrupted}: metadata is not JSON ({exc}); it was not used") from None
        return k, stored, meta

    def load(self, camera: str) -> Fingerprint:
        """Read one fingerprint and verify its checksum and seal.

        Raises
        ------
        StoreError
            If the camera is absent, its entry is damaged, or its data or any
            of its metadata do not match the stored SHA-256 and seal.
        """
        with self._open_read() as f:
            k, stored, meta = self._entry(f, camera, pixels=True)
        return Fingerprint(camera, k, stored, meta)

    def file_sha256(self) -> str:
        """SHA-256 of the database file as it is now."""
        h = hashlib.sha256()
        with open(self.path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        return h.hexdigest()

    # -- writing ---------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self, drop=frozenset()):
        """Lock; write a new file holding the old cameras less ``drop``; rename it into place.

        Yields the new file (open for writing) and the set of camera ids the
        old file held. Without ``drop`` the old file is copied byte for byte
        (the kernel's fast copy) and extended; with ``drop`` the kept cameras
        are copied into a fresh file, which also reclaims the space.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                # temporaries exist only while a writer holds the lock: any now are from a killed writer
                for stale in self.path.parent.glob(f".{self.path.name}.*.tmp.h5"):
                    stale.unlink(missing_ok=True)
                with atomic_path(self.path, suffix=".h5") as tmp:
                    held: set[str] = set(self.cameras()) if self.path.exists() else set()
                    if self.path.exists() and not (drop & held):
                        shutil.copyfile(self.path, tmp)
                        with h5py.File(tmp, "r+", locking=False) as new:
                            new.attrs["format"] = FORMAT
                            yield new, held
                        return
                    with h5py.File(tmp, "w", locking=False) as new:
                        new.attrs["format"] = FORMAT
                        cams = new.create_group("cameras")
                        if self.path.exists():
                            with self._open_read() as old:
                                for name, group in old["cameras"].items():
                                    if name not in drop:
                                        old.copy(group, cams, name=name)
                        yield new, held
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _writing(self, drop=frozenset()):
        """:meth:`_transaction`, with a failed write (disk full, permissions) as one StoreError."""
        try:
            with self._transaction(drop) as txn:
                yield txn
        except OSError as exc:
            raise StoreError(
                f"{self.path}: cannot write the database ({exc.strerror or exc}); the previous version is unchanged"
            ) from None

    def add(self, camera: str, k: np.ndarray, meta: dict, *, replace: bool = False) -> str:
        """Store a fingerprint with its seal; return its SHA-256.

        Raises
        ------
        StoreError
            If ``camera`` exists and ``replace`` is False, the id is not
            allowed, ``k`` has non-finite values, or the file cannot be written.
        """
        check_camera_id(camera)
        k = np.ascontiguousarray(k, dtype=np.float32)
        if not np.isfinite(k).all():
            raise StoreError(f"{self.path}: fingerprint {camera!r} has non-finite values (NaN or infinity); not stored")
        digest = array_sha256(k)
        meta_json = json.dumps(meta)
        with self._writing(drop={camera} if replace else frozenset()) as (f, held):
            if camera in held and not replace:
                raise StoreError(f"{self.path}: camera {camera!r} exists already (use --replace to overwrite it)")
            ds = f.require_group("cameras").create_group(camera).create_dataset("K", data=k)
            ds.attrs["sha256"] = digest
            ds.attrs["meta"] = meta_json
            ds.attrs["seal"] = seal_sha256(camera, k.shape, digest, meta_json)
        return digest

    def remove(self, camera: str) -> None:
        """Delete one camera (the file is rewritten without it)."""
        with self._writing(drop={camera}) as (_f, held):
            if camera not in held:
                raise StoreError(f"{self.path}: no camera {camera!r} (cameras: {', '.join(sorted(held)) or 'none'})")
