"""The camera fingerprint database: one HDF5 file, safe under concurrency and kills.

Layout (format ``spn-db/1``)::

    /                       attrs: format
    /cameras/<id>/K         float32 (rows, cols) fingerprint
                            attrs: sha256 (of K's bytes, C order), meta (JSON)

Writers take an exclusive ``flock`` on ``<db>.lock``, write a new file beside
the database holding the old cameras plus the change, and rename it over the
original:
a process killed at any moment leaves the previous file intact, with every
camera it held. Readers open the file read-only and see one complete
version. Each fingerprint's SHA-256 is checked when it is read, so a
corrupted fingerprint is reported, never used.

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

__all__ = ["FORMAT", "StoreError", "Fingerprint", "FingerprintStore", "array_sha256"]

FORMAT = "spn-db/1"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class StoreError(Exception):
    """The database cannot be read or changed; ``str()`` names the file and the reason."""


def array_sha256(k: np.ndarray) -> str:
    """SHA-256 of a float32 array's bytes in C order."""
    return hashlib.sha256(np.ascontiguousarray(k, dtype=np.float32).tobytes()).hexdigest()


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
            if f.attrs.get("format") != FORMAT:
                raise StoreError(
                    f"{self.path}: not an spn database (format {f.attrs.get('format')!r}, expected {FORMAT!r})"
                )
            yield f

    def cameras(self) -> list[str]:
        """Camera ids in the database, sorted."""
        with self._open_read() as f:
            return sorted(f["cameras"].keys()) if "cameras" in f else []

    def meta(self, camera: str) -> dict:
        """Metadata of one camera without reading its fingerprint."""
        with self._open_read() as f:
            g = self._group(f, camera)
            return dict(json.loads(g["K"].attrs["meta"]), sha256=g["K"].attrs["sha256"])

    def _group(self, f, camera):
        if "cameras" not in f or camera not in f["cameras"]:
            have = ", ".join(sorted(f["cameras"].keys())) if "cameras" in f else "none"
            raise StoreError(f"{self.path}: no camera {camera!r} (cameras: {have})")
        return f["cameras"][camera]

    def load(self, camera: str) -> Fingerprint:
        """Read one fingerprint and verify its checksum.

        Raises
        ------
        StoreError
            If the camera is absent or its data do not match the stored SHA-256.
        """
        with self._open_read() as f:
            ds = self._group(f, camera)["K"]
            try:
                k = ds[()].astype(np.float32, copy=False)
            except OSError as exc:
                raise StoreError(f"{self.path}: fingerprint {camera!r} is unreadable ({exc})") from None
            stored = ds.attrs["sha256"]
            meta = json.loads(ds.attrs["meta"])
        if array_sha256(k) != stored:
            raise StoreError(f"{self.path}: fingerprint {camera!r} is corrupted (SHA-256 mismatch); it was not used")
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

    def add(self, camera: str, k: np.ndarray, meta: dict, *, replace: bool = False) -> str:
        """Store a fingerprint; return its SHA-256.

        Raises
        ------
        StoreError
            If ``camera`` exists and ``replace`` is False, or the id is not allowed.
        """
        check_camera_id(camera)
        k = np.ascontiguousarray(k, dtype=np.float32)
        digest = array_sha256(k)
        with self._transaction(drop={camera} if replace else frozenset()) as (f, held):
            if camera in held and not replace:
                raise StoreError(f"{self.path}: camera {camera!r} exists already (use --replace to overwrite it)")
            ds = f["cameras"].create_group(camera).create_dataset("K", data=k)
            ds.attrs["sha256"] = digest
            ds.attrs["meta"] = json.dumps(meta)
        return digest

    def remove(self, camera: str) -> None:
        """Delete one camera (the file is rewritten without it)."""
        with self._transaction(drop={camera}) as (_f, held):
            if camera not in held:
                raise StoreError(f"{self.path}: no camera {camera!r} (cameras: {', '.join(sorted(held)) or 'none'})")
