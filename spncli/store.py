"""The camera fingerprint database: a small HDF5 index and one HDF5 file per camera, safe under concurrency and kills.

Layout (format ``spn-db/3``)::

    <db>                    the index: attrs format
    <db>/cameras/<id>       external link to <db>.d/<id>.<SHA-256 of that file>.h5, "/"
    <db>.d/<id>.<sha>.h5    /K  float32 (rows, cols) fingerprint
                                attrs: sha256 (of K's bytes, C order), meta (JSON),
                                       seal (SHA-256 of the camera id, K's shape,
                                       dtype and SHA-256, and the meta JSON text)
    <db>.d/calibration.json optional: the null PCE distributions of ``spn calibrate``,
                            sealed JSON (see :meth:`FingerprintStore.calibration`)

Adding a camera writes that camera's file once (temporary name, fsync,
rename) and rewrites only the index, whose size grows by one link and which
is copied in one HDF5 call: the cost of a camera does not depend on how many
the database holds (``spn-db/2`` copied every fingerprint for every addition,
O(N^2) bytes for N cameras; reading and re-creating the links one by one made
the 200th camera 2.2 times as slow as the first).
The index names each camera file with the file's SHA-256, so the SHA-256 of
the index (:meth:`FingerprintStore.file_sha256`, recorded in case manifests)
changes whenever any camera changes; a camera file is hashed and checked
against its name when it is read. The camera files are opened by this module
from the index's names (checked, inside ``<db>.d``, never a symbolic link);
HDF5's own link resolution is never used for reading.

The pre-screen index (:mod:`spncli.prescreen`) is one append-only file,
``<db>.d/prescreen.sig``: each camera added appends one record, the signs of
its fingerprint packed one bit per pixel (1/32 of the fingerprint), with the
camera file it was made from and a SHA-256 over the record. The index's
attribute ``prescreen_bytes`` says how much of it is committed: the index
rename commits the record with the camera, a killed writer's tail is ignored
and truncated by the next writer, and a record whose camera file the index
no longer names (a removed or replaced camera) is not used. Appending keeps
adding a camera O(that camera); cameras without a valid record (older
databases, a damaged record) are reported and scored exactly.

Older single-file databases (``spn-db/1``, ``spn-db/2``, cameras stored
inside the file) are read as before; adding to one keeps its cameras and
adds links beside them.

Writers take an exclusive ``flock`` on ``<db>.lock``, write the camera file,
then a new index beside the old one, and rename it over the original:
a process killed at any moment leaves the previous index intact, with every
camera it held; camera files no index names (a killed writer's, a removed
camera's) are deleted by the next writer. Readers open the file read-only and see one complete
version. Each fingerprint's SHA-256 and seal are checked when it is read, so
a fingerprint whose pixels or recorded facts (make, model, serial, sources,
count, geometry, ...) were changed is reported as corrupted, never used.
Fingerprints written by ``spn-db/1`` carry no seal: they are listed but not
used (rebuild them). A write that fails (disk full) leaves the previous file
as it was and is reported in one line.

This is the only module that imports h5py (on first use).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import re
import stat
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .provenance import RefusedFile, atomic_path, open_regular, read_regular_file


class _Deferred:
    """``h5py``, imported on first use: ``spn extract`` and the pre-screen never open a database file."""

    def __getattr__(self, name):
        import h5py as module

        globals()["h5py"] = module
        return getattr(module, name)


h5py = _Deferred()

__all__ = [
    "FORMAT",
    "StoreError",
    "Fingerprint",
    "FingerprintStore",
    "array_sha256",
    "seal_sha256",
    "check_camera_id",
    "file_sha256",
    "CALIBRATION_FILE",
    "calibration_seal",
]

FORMAT = "spn-db/3"
READABLE_FORMATS = ("spn-db/1", "spn-db/2", FORMAT)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SIGNS = "prescreen.sig"
_SIG_MAGIC = b"SPNSIG1\n"
_FILE = re.compile(r"^(?P<camera>[A-Za-z0-9][A-Za-z0-9._-]{0,127})"  # a camera's file: <id>.<its SHA-256>.h5
                   r"\.(?P<sha>[0-9a-f]{64})\.h5$")


class StoreError(Exception):
    """The database cannot be read or changed; ``str()`` names the file and the reason."""


def array_sha256(k: np.ndarray) -> str:
    """SHA-256 of a float32 array's bytes in C order."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(k, dtype=np.float32)).cast("B")).hexdigest()  # no copy


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


CALIBRATION_FILE = "calibration.json"
"""The sealed null distributions of ``spn calibrate`` (:mod:`spncli.calibration`), in ``<db>.d``."""
CALIBRATION_FORMAT = "spn-calibration/1"


def calibration_seal(doc: dict) -> str:
    """SHA-256 over a calibration document without its ``seal`` (canonical JSON: sorted keys, no spaces)."""
    body = {k: v for k, v in doc.items() if k != "seal"}
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def calibration_shape_error(doc: dict) -> str | None:
    """What makes a calibration document unusable though its seal matches (the seal is a checksum anyone can
    recompute, not a signature); None when ``spn match`` and ``spn report`` can read every field they use."""
    params, cameras = doc.get("parameters"), doc.get("cameras")
    if not isinstance(params, dict) or not isinstance(params.get("scoring"), dict):
        return "no 'parameters.scoring' record"
    if not _finite_number(params.get("threshold")):
        return "'parameters.threshold' is not a finite number"
    if not isinstance(doc.get("background"), dict) or not isinstance(doc["background"].get("count"), int):
        return "no 'background.count'"
    if not isinstance(cameras, dict):
        return "'cameras' is not a mapping of camera to entry"
    for camera, entry in cameras.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("fingerprint_sha256"), str):
            return f"camera {camera!r}: no fingerprint_sha256"
        if not isinstance(entry.get("bands"), dict):
            return f"camera {camera!r}: 'bands' is not a mapping of band to samples"
        for band, b in entry["bands"].items():
            pce = b.get("pce") if isinstance(b, dict) else None
            if not isinstance(pce, list) or not all(_finite_number(x) for x in pce):
                return f"camera {camera!r} band {band!r}: 'pce' is not a list of finite numbers"
            if b.get("count") != len(pce) or not isinstance(b.get("n_shifts"), int) or b["n_shifts"] < 1:
                return f"camera {camera!r} band {band!r}: 'count' or 'n_shifts' disagrees with its samples"
            if any(x > y for x, y in zip(pce, pce[1:])):
                return f"camera {camera!r} band {band!r}: the null PCEs are not sorted"
    return None


def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class FingerprintStore:
    """A fingerprint database: the index at ``path``, each camera's file in ``<path>.d``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def folder(self) -> Path:
        """The folder of the per-camera files (``<db>.d``)."""
        return self.path.with_name(self.path.name + ".d")

    # -- reading ---------------------------------------------------------
    def _check_not_link(self) -> None:
        """A database named through a symbolic link is refused: its camera files are found beside the name given,
        and a writer's rename would replace the link with a new index naming files that are not there."""
        if self.path.is_symlink():
            raise StoreError(f"{self.path}: a symbolic link, not followed; name the database itself "
                             f"({os.path.realpath(self.path)})")  # fmt: skip

    def _check_file(self) -> None:
        """The database must be a regular file: a FIFO or device in its place would hang or mislead a read."""
        self._check_not_link()
        if not self.path.exists():
            raise StoreError(f"{self.path}: no such database (create it with 'spn fingerprint')")
        mode = os.stat(self.path).st_mode
        if stat.S_ISDIR(mode):
            raise StoreError(f"{self.path}: a folder, not an spn database (--db names the database's index file, "
                             "e.g. cameras.h5)")  # fmt: skip
        if not stat.S_ISREG(mode):
            raise StoreError(f"{self.path}: not a regular file (FIFO, socket or device); not an spn database")

    @contextlib.contextmanager
    def _open_read(self):
        self._check_file()
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

    def select(self, wanted=None) -> list[str]:
        """The cameras a command scores: all of them, or the ``wanted`` ones (each must exist).

        Raises
        ------
        StoreError
            A wanted camera is missing (the message lists the ones held), or the database holds none.
        """
        names = self.cameras()
        if wanted:
            missing = sorted(set(wanted) - set(names))
            if missing:
                held = ", ".join(names) or "none"
                raise StoreError(f"{self.path}: no camera {', '.join(missing)} (cameras: {held})")
            names = [n for n in names if n in wanted]
        if not names:
            raise StoreError(f"{self.path}: the database holds no camera")
        return names

    def cameras(self) -> list[str]:
        """Camera ids in the database, sorted."""
        with self._open_read() as f:
            return sorted(f["cameras"].keys()) if "cameras" in f else []

    def meta(self, camera: str) -> dict:
        """Metadata of one camera, its seal verified, without reading its fingerprint."""
        with self._open_read() as f:
            _k, stored, meta, _shape = self._entry(f, camera, pixels=False)
        return dict(meta, sha256=stored)

    def header(self, camera: str) -> tuple[str, dict, tuple[int, int]]:
        """K's SHA-256, the metadata and K's shape of one camera, its seal verified, without reading K.

        The camera file's SHA-256 is not computed here (:meth:`load` checks it):
        this lists a database of large fingerprints quickly.
        """
        with self._open_read() as f:
            _k, stored, meta, shape = self._entry(f, camera, pixels=False, whole_file=False)
        return stored, meta, shape

    def _linked_file(self, f, camera: str, whole_file: bool = True) -> Path | None:
        """The camera's own file when the index links to one (checked), None when it is stored in the index."""
        if "cameras" not in f or camera not in f["cameras"].keys():
            have = ", ".join(sorted(f["cameras"].keys())) if "cameras" in f else "none"
            raise StoreError(f"{self.path}: no camera {camera!r} (cameras: {have})")
        group = f["cameras"]
        links = group.id.links
        if links.get_info(camera.encode()).type != h5py.h5l.TYPE_EXTERNAL:
            return None
        target, inside = (x.decode("utf-8", "replace") for x in links.get_val(camera.encode()))
        m = _FILE.match(target.removeprefix(self.folder.name + "/"))
        if m is None or m["camera"] != camera or inside != "/" or target != f"{self.folder.name}/{m.group(0)}":
            raise StoreError(
                f"{self.path}: fingerprint {camera!r} is corrupted (the index links it to {target!r}, "
                f"not to a file of this camera in {self.folder.name}); it was not used"
            )
        path = self.folder / m.group(0)
        if self.folder.is_symlink() or path.is_symlink():
            raise StoreError(f"{path}: a symbolic link, not followed; fingerprint {camera!r} was not used")
        if not whole_file:
            return path
        try:
            digest = file_sha256(path)
        except OSError as exc:
            raise StoreError(f"{self.path}: fingerprint {camera!r} is unreadable ({exc}); it was not used") from None
        if digest != m["sha"]:
            raise StoreError(
                f"{self.path}: fingerprint {camera!r} is corrupted (its file {path.name} does not have the SHA-256 "
                "the index names); it was not used"
            )
        return path

    def _entry(self, f, camera: str, *, pixels: bool, whole_file: bool = True):
        """(K or None, K's SHA-256, meta, shape) of one camera, the seal checked; StoreError if damaged or changed."""
        linked = self._linked_file(f, camera, whole_file)
        corrupted = f"{self.path}: fingerprint {camera!r} is corrupted"
        try:
            with contextlib.ExitStack() as stack:
                if linked is None:
                    ds = f["cameras"][camera]["K"]
                else:
                    ds = stack.enter_context(h5py.File(linked, "r", locking=False))["K"]
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
        return k, stored, meta, tuple(int(n) for n in shape)

    def load(self, camera: str) -> Fingerprint:
        """Read one fingerprint and verify its file's SHA-256 (against the index), its checksum and seal.

        Raises
        ------
        StoreError
            If the camera is absent, its entry is damaged, or its file, data
            or any of its metadata do not match the index, the stored SHA-256
            and seal.
        """
        with self._open_read() as f:
            k, stored, meta, _shape = self._entry(f, camera, pixels=True)
        return Fingerprint(camera, k, stored, meta)

    def load_many(self, names, threads: int = 2):
        """:meth:`load` of each camera in turn, the next ``threads`` read ahead on threads.

        Reading a camera's file and verifying its SHA-256 release the GIL, so the reads overlap each other
        and the caller's work (6 cameras of 6 MP: 0.51 s one after the other, measured). A failure is
        raised when its camera is reached, as :meth:`load` would. Besides the one the caller holds, up to
        ``threads`` + 1 fingerprints are in memory (read, or being read) at a time.
        """
        from concurrent.futures import ThreadPoolExecutor

        names = iter(list(names))
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="spn-load") as pool:
            pending = collections.deque(pool.submit(self.load, n) for n in itertools.islice(names, max(1, threads)))
            while pending:
                following = next(names, None)
                if following is not None:
                    pending.append(pool.submit(self.load, following))
                yield pending.popleft().result()  # no reference kept here once the caller has it

    def sign_digests(self, names=None) -> tuple[dict, list[str]]:
        """The pre-screen digests of the cameras (``names``, default all) and the cameras without one.

        A record is used only when its SHA-256 verifies and it was made from the
        camera file the index names now. Returns ``({camera: SignDigest}, [cameras
        without a valid record])``; the caller scores the latter exactly.
        """
        from .prescreen import SignDigest

        with self._open_read() as f:
            committed = int(f.attrs.get("prescreen_bytes", 0))
            current = {}
            if "cameras" in f:
                group = f["cameras"]  # kept: the link proxy needs its group open
                links = group.id.links
                for n in group.keys():
                    if links.get_info(n.encode()).type == h5py.h5l.TYPE_EXTERNAL:
                        current[n] = links.get_val(n.encode())[0].decode("utf-8", "replace").rpartition("/")[2]
        wanted = set(current if names is None else names)
        digests = {}
        path = self.folder / SIGNS
        data = b""
        if committed and not self.folder.is_symlink():
            try:  # never a link, never blocked on a FIFO put in its place: its cameras are then scored exactly
                fd, _ = open_regular(path)
            except OSError:
                fd = None
            if fd is not None:
                with os.fdopen(fd, "rb") as fh:
                    data = fh.read(committed)
        for head, words in _sign_records(data):
            camera = head.get("camera")
            if camera in wanted and current.get(camera) == head.get("file"):
                shape, region = tuple(head["shape"]), tuple(head["region"])
                digests[camera] = SignDigest(shape, region, words, head.get("k_sha256"))
        return digests, sorted(wanted - set(digests))

    def _append_signs(self, camera: str, file_name: str, k: np.ndarray, k_sha256: str, committed: int) -> int:
        """Append one camera's sign record after the committed bytes (fsync); return the new committed length."""
        from .prescreen import sign_digest

        d = sign_digest(k)
        head = json.dumps({"camera": camera, "file": file_name, "shape": list(d.shape), "region": list(d.region),
                           "words": int(d.words.size), "k_sha256": k_sha256}).encode()  # fmt: skip
        body = struct.pack("<I", len(head)) + head + d.words.astype("<u8", copy=False).tobytes()
        record = _SIG_MAGIC + body + hashlib.sha256(body).digest()
        path = self.folder / SIGNS
        try:
            fd, _ = open_regular(path, os.O_RDWR | os.O_CREAT, 0o644)
        except RefusedFile as exc:
            special = "not a regular file (a FIFO, folder or device)"
            raise StoreError(f"{path}: {'a symbolic link, not followed' if exc.reason == 'link' else special}; nothing "
                             "was stored") from None  # fmt: skip
        with os.fdopen(fd, "r+b") as fh:
            fh.truncate(committed)  # a killed writer's uncommitted tail
            fh.seek(committed)
            fh.write(record)
            fh.flush()
            os.fsync(fh.fileno())
        return committed + len(record)

    def file_sha256(self) -> str:
        """SHA-256 of the database's index as it is now: it names every camera file by its SHA-256."""
        self._check_file()
        return file_sha256(self.path)

    # -- writing ---------------------------------------------------------
    def _collect(self, keep: set[str]) -> None:
        """Delete camera files and temporaries not in ``keep`` (a killed writer's, a removed camera's).

        Runs under the writers' lock, with ``keep`` the files the new index names; only names this
        module writes are touched.
        """
        if not self.folder.is_dir() or self.folder.is_symlink():
            return
        for p in self.folder.iterdir():
            ours = _FILE.match(p.name) or (p.name.startswith(".") and p.name.endswith(".tmp.h5"))
            if ours and p.name not in keep and not p.is_dir():
                p.unlink(missing_ok=True)

    def _write_camera(self, camera: str, k: np.ndarray, digest: str, meta_json: str) -> str:
        """Write one camera's file (temporary name, fsync, rename to ``<id>.<file SHA-256>.h5``); return its name."""
        self.folder.mkdir(exist_ok=True)
        if self.folder.is_symlink():
            raise StoreError(f"{self.folder}: a symbolic link, not followed; nothing was stored")
        fd, tmp = tempfile.mkstemp(prefix=f".{camera}.", suffix=".tmp.h5", dir=self.folder)
        os.close(fd)
        try:
            with h5py.File(tmp, "w", locking=False) as g:
                g.attrs["format"] = "spn-camera/1"
                ds = g.create_dataset("K", data=k)
                ds.attrs["sha256"] = digest
                ds.attrs["meta"] = meta_json
                ds.attrs["seal"] = seal_sha256(camera, k.shape, digest, meta_json)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            name = f"{camera}.{file_sha256(tmp)}.h5"
            os.replace(tmp, self.folder / name)
            folder = os.open(self.folder, os.O_RDONLY)
            try:  # the file's name is durable before an index names it
                os.fsync(folder)
            finally:
                os.close(folder)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return name

    @contextlib.contextmanager
    def _transaction(self, drop=frozenset()):
        """Lock; write a new index holding the old cameras less ``drop``; rename it into place.

        Yields the new index (open for writing) and the set of ``drop`` ids the
        old one held. The old index's ``cameras`` group is copied into a fresh
        file in one HDF5 call (links as links, cameras an older single-file
        database holds inside it as data; a copied file extended in place would
        grow by a few KiB of unused metadata per change), so the index costs
        microseconds per camera. Camera files no index names (a removed
        camera's, a killed writer's) are deleted afterwards: after a removal,
        or when a writer's marker (``<db>.d/.writing``) says that the previous
        writer was killed; otherwise the folder is not listed, and adding a
        camera does not depend on how many the database holds.
        """
        self._check_not_link()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._writers_lock():
            # temporaries exist only while a writer holds the lock: any now are from a killed writer
            for stale in self.path.parent.glob(f".{self.path.name}.*.tmp.h5"):
                stale.unlink(missing_ok=True)
            marker = self.folder / ".writing"
            killed = marker.exists() and not self.folder.is_symlink()
            if not self.folder.is_symlink():
                self.folder.mkdir(exist_ok=True)
                marker.touch()
            committed = 0
            with atomic_path(self.path, suffix=".h5") as tmp:
                with h5py.File(tmp, "w", locking=False) as new:
                    new.attrs["format"] = FORMAT
                    if self.path.exists():
                        with self._open_read() as old:
                            committed = int(old.attrs.get("prescreen_bytes", 0))
                            if "cameras" in old:
                                h5py.h5o.copy(old.id, b"cameras", new.id, b"cameras")
                    cams = new.require_group("cameras")
                    new.attrs["prescreen_bytes"] = committed
                    held = {name for name in drop if name in cams}
                    for name in held:
                        del cams[name]
                    yield new, held
                    keep = None
                    if drop or killed:
                        links = cams.id.links
                        keep = {
                            links.get_val(n.encode())[0].decode("utf-8", "replace").rpartition("/")[2]
                            for n in cams.keys()
                            if links.get_info(n.encode()).type == h5py.h5l.TYPE_EXTERNAL
                        }
            if keep is not None:
                self._collect(keep)
            marker.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _writers_lock(self):
        """Hold the writers' exclusive ``flock`` on ``<db>.lock`` for the block.

        The lock file is opened without following a link and without blocking, and must be a regular file
        with one name: a FIFO put in its place cannot hang a writer, a link cannot make one create or lock
        a file elsewhere.
        """
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd, _ = open_regular(lock_path, os.O_RDWR | os.O_CREAT, 0o644, one_name=True)
        except RefusedFile as exc:
            why = "a symbolic link, not followed" if exc.reason == "link" else "not a regular file with one name"
            raise StoreError(f"{lock_path}: the database's lock file is {why}; nothing was written") from None
        except OSError as exc:
            raise StoreError(f"{lock_path}: the database's lock file is not openable as a file ({exc.strerror}); "
                             "nothing was written") from None  # fmt: skip
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

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

    def add(self, camera: str, k: np.ndarray, meta: dict, *, replace: bool = False, screen=None) -> str:
        """Store a fingerprint in its own file with its seal, linked from the index; return its SHA-256.

        ``screen(others)``, when given, is called under the writers' lock with
        the other cameras held; the dict it returns is sealed into the new
        camera's metadata under ``leak_screen`` (:func:`spncli.leaks.screen`):
        no camera added meanwhile escapes it, and no other file is rewritten.

        Raises
        ------
        StoreError
            If ``camera`` exists and ``replace`` is False, the id is not
            allowed, ``k`` has non-finite values, or a file cannot be written.
        """
        check_camera_id(camera)
        k = np.ascontiguousarray(k, dtype=np.float32)
        if not np.isfinite(k).all():
            raise StoreError(f"{self.path}: fingerprint {camera!r} has non-finite values (NaN or infinity); not stored")
        digest = array_sha256(k)
        meta_json = json.dumps(meta)
        with self._writing(drop={camera} if replace else frozenset()) as (f, _held):
            if not replace and camera in f["cameras"]:
                raise StoreError(f"{self.path}: camera {camera!r} exists already (use --replace to overwrite it)")
            if screen is not None:
                meta_json = json.dumps(meta | {"leak_screen": screen(sorted(set(f["cameras"].keys()) - {camera}))})
            name = self._write_camera(camera, k, digest, meta_json)
            committed = int(f.attrs["prescreen_bytes"])
            f.attrs["prescreen_bytes"] = self._append_signs(camera, name, k, digest, committed)
            group = f["cameras"]  # kept: the link proxy needs its group open
            group.id.links.create_external(camera.encode(), f"{self.folder.name}/{name}".encode(), b"/")
        return digest

    def remove(self, camera: str) -> None:
        """Delete one camera (the index is rewritten without it; its file is deleted)."""
        with self._writing(drop={camera}) as (f, held):
            if camera not in held:
                have = ", ".join(sorted(f["cameras"].keys())) or "none"
                raise StoreError(f"{self.path}: no camera {camera!r} (cameras: {have})")

    # -- calibration (spn calibrate) -------------------------------------
    @property
    def calibration_path(self) -> Path:
        """Where the sealed calibration lives: ``<db>.d/calibration.json`` (no index names it)."""
        return self.folder / CALIBRATION_FILE

    def calibration(self) -> tuple[dict, str] | None:
        """The stored calibration document, its seal verified, and its file's SHA-256; None when none is stored.

        The file is beside the camera files, not in the index: adding or removing a camera rewrites
        the index but leaves the calibration as it was (each camera's entry names the fingerprint
        SHA-256 it was measured against, so a replaced fingerprint is never calibrated by an old one).

        Raises
        ------
        StoreError
            The file is a link or not a regular file, is not JSON, has another format, its seal
            does not match its content (changed after it was written), or it lacks a field a match
            reads (see :func:`calibration_shape_error`).
        """
        self._check_file()
        path = self.calibration_path
        if self.folder.is_symlink() or path.is_symlink():
            raise StoreError(f"{path}: a symbolic link, not followed; the calibration was not used")
        if not path.exists():
            return None
        try:
            data = read_regular_file(path)
            doc = json.loads(data)
        except OSError as exc:
            raise StoreError(f"{path}: calibration unreadable ({exc.strerror or exc}); it was not used") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{path}: calibration is corrupted (not JSON: {exc}); it was not used") from None
        if not isinstance(doc, dict) or doc.get("format") != CALIBRATION_FORMAT:
            found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise StoreError(
                f"{path}: not an spn calibration (format {found!r}, expected {CALIBRATION_FORMAT!r}); it was not used"
            )
        if doc.get("seal") != calibration_seal(doc):
            raise StoreError(
                f"{path}: calibration is corrupted (its content differs from its seal: changed after it was "
                "written); it was not used (run spn calibrate again)"
            )
        if (shape := calibration_shape_error(doc)) is not None:
            raise StoreError(f"{path}: not a usable spn calibration ({shape}); it was not used (run spn calibrate "
                             "again)")  # fmt: skip
        return doc, hashlib.sha256(data).hexdigest()

    def calibration_target_problem(self) -> str | None:
        """Why ``<db>.d/calibration.json`` cannot be written in place (a symbolic link, a folder), or None."""
        path = self.calibration_path
        if self.folder.is_symlink() or path.is_symlink():
            return "a symbolic link, not followed"
        return "a folder" if path.is_dir() else None

    def store_calibration(self, doc: dict) -> str:
        """Seal and write the calibration document (writers' lock, temporary name, fsync, rename); its SHA-256.

        Only ``<db>.d/calibration.json`` is written: the index and the camera files are not touched.
        """
        self._check_file()
        doc = dict(doc, format=CALIBRATION_FORMAT)
        doc["seal"] = calibration_seal(doc)
        data = (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            self.folder.mkdir(exist_ok=True)
            problem = self.calibration_target_problem()
            if problem:
                raise StoreError(f"{self.calibration_path}: {problem}; nothing was stored")
            with self._writers_lock():
                for stale in self.folder.glob(f".{CALIBRATION_FILE}.*.tmp"):  # a killed writer's
                    stale.unlink(missing_ok=True)
                with atomic_path(self.calibration_path) as tmp:
                    tmp.write_bytes(data)
                folder = os.open(self.folder, os.O_RDONLY)
                try:  # the new name is durable
                    os.fsync(folder)
                finally:
                    os.close(folder)
        except OSError as exc:
            raise StoreError(
                f"{self.calibration_path}: cannot write the calibration ({exc.strerror or exc}); "
                "the previous one is unchanged"
            ) from None
        return hashlib.sha256(data).hexdigest()



def _sign_records(data: bytes):
    """(header dict, uint64 words) of each valid pre-screen record, in order; damaged bytes are skipped.

    A record counts only when its SHA-256 verifies, so scanning on to the next
    magic after damaged bytes never yields a wrong record.
    """
    pos, magic = data.find(_SIG_MAGIC), len(_SIG_MAGIC)
    while 0 <= pos and pos + magic + 4 <= len(data):
        (n_head,) = struct.unpack_from("<I", data, pos + magic)
        try:
            head = json.loads(data[pos + magic + 4 : pos + magic + 4 + n_head])
            n_words = int(head["words"])
            end = pos + magic + 4 + n_head + 8 * n_words
            ok = n_words >= 0 and end + 32 <= len(data) and (
                hashlib.sha256(data[pos + magic : end]).digest() == data[end : end + 32])  # fmt: skip
        except (ValueError, KeyError, TypeError):
            ok = False
        if ok:
            yield head, np.frombuffer(data, "<u8", n_words, pos + magic + 4 + n_head).astype(np.uint64, copy=False)
            pos = data.find(_SIG_MAGIC, end + 32)
        else:  # a damaged record (or a damaged file's zero gap): the next record that verifies is still used
            pos = data.find(_SIG_MAGIC, pos + 1)
