"""The case directory: results, errors, manifest, artifacts and a hash-chained audit trail that covers them.

Layout of a case directory (never inside the evidence, and never holding it)::

    results.jsonl   one row per image x camera, appended image by image (fsync'd)
    results.csv     the same rows, sorted, regenerated at the end of every run
    errors.jsonl    one row per file that could not be analysed (file, reason)
    manifest.json   every input path with its SHA-256 (or its error), duplicates, tool
                    version, parameters, database checksum, runs with start/end UTC
    audit.jsonl     append-only; each entry carries the SHA-256 of the previous one
    artifacts/      per matched image: thumbnail, residual detail and correlation surfaces
    case.lock       held (``flock``) by the one run that may write the case

The case proves itself: the audit entry that ends a run records the SHA-256
and size of every file the case holds (all but ``audit.jsonl`` and the lock),
and the hash of the last entry, the *head*, is printed for the examiner's
notes. :meth:`Case.verify` re-checks the chain, every recorded file, extra or
missing files and the inputs, without writing anything; with the head the
examiner noted, a truncated audit trail is caught as well.

Each image is committed as one unit: its pictures first (atomic, fsync'd),
its rows last, in one append. A run killed at any moment leaves every
complete image; a partial last line, and the rows of an image cut between two
rows, are dropped when the case is resumed. Rows hold no timing and the CSV is
sorted, so a resumed run ends with the same ``results.csv`` as an
uninterrupted one. Case files are opened with ``O_NOFOLLOW``: a link inside
the case is refused, never followed.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .evidence import EvidenceError, sha256_file
from .provenance import RefusedFile, atomic_write_bytes, open_regular, tool_info, utc_now

__all__ = ["ANALYSES", "CSV_COLUMNS", "GENESIS", "Case", "CaseError", "CaseBusy", "Verification"]

CSV_COLUMNS = [
    "image", "sha256", "size_bytes", "jpeg_quality", "camera", "pce", "ncc", "decision", "threshold",
    "rotation", "restored", "peak_row", "peak_col", "n_shifts", "p_fa", "rows", "cols", "fingerprint_sha256",
    "residual_kind", "wiener_applied", "pce_classic", "pce_restored", "decision_classic", "decision_restored",
    "residuals_disagree", "network_applied", "weights_sha256", "alignment", "warnings", "device", "backend",
    "decoder_warnings",
]  # fmt: skip
GENESIS = "0" * 64
AUDIT = "audit.jsonl"
LOCK = "case.lock"
NOT_HASHED = frozenset({AUDIT, LOCK})
"""Files outside the recorded hashes: the chain covers itself, the lock holds only who runs."""
APPEND_ONLY = ("results.jsonl",)
REGENERATED = ("results.csv", "manifest.json", "errors.jsonl")
"""Written again at the end of every run from the rows and the errors met (so free after a killed run)."""
CASE_FILES = frozenset({AUDIT, LOCK, *APPEND_ONLY, *REGENERATED})
"""The files a case keeps at its top level (a folder or anything else of these names is refused)."""
RUN_END = (
    "match-completed", "match-interrupted", "cluster-completed", "cluster-failed", "pool-completed", "pool-failed",
)  # fmt: skip
RUN_ONLY = ("workers", "scheduler", "max_pixels")
"""Parameters that may differ between the runs of one case (they do not change a score)."""
CHECKPOINT = "-checkpoint"
"""Suffix of the audit events a run writes after each committed image (:meth:`Case.checkpoint`)."""
RUN_KINDS = ("match-", "cluster-", "pool-")
"""Audit events of a run start with one of these; a run ends with one of :data:`RUN_END`."""
ANALYSES = ("cluster/", "pool/")
"""Folders written whole by one ``cluster`` or ``match --pool`` run (a JSON record with its ``inputs``, pictures)."""
TORN_AUDIT = "audit.jsonl: ends with a partial line (a kill while writing, or cut or appended to)"


class CaseError(Exception):
    """The case folder cannot be used as asked. ``str()`` is one line naming the path."""


class CaseBusy(CaseError):
    """Another run holds the case's lock."""


def _entry_hash(entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _open(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` of a case file: never through a link, never a special file, never a file with other names
    (a hard link would let a case write into a file outside its folder); see :func:`provenance.open_regular`.
    """
    try:
        return open_regular(path, flags, mode, one_name=True)[0]
    except RefusedFile as exc:
        st = exc.st  # None where the open itself was refused (a link, a FIFO to write, a folder)
        if st is None:
            with contextlib.suppress(OSError):
                st = os.lstat(path)
        raise CaseError(f"{path}: {_not_a_case_file(st) if st else exc.strerror}") from None


def _not_a_case_file(st: os.stat_result) -> str:
    """Why an entry :meth:`Case.links` found cannot be a case file."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link inside the case; a case never follows links"
    if stat.S_ISREG(st.st_mode):
        return f"has {st.st_nlink} hard links; a case file must have one name (it could be written outside the case)"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder where the case keeps a file"
    return "is not a regular file (FIFO, socket or device) inside the case"


def _read(path: Path) -> bytes | None:
    """The file's bytes (``None`` when absent), read without following a link."""
    try:
        fd = _open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _jsonl(data: bytes | None, name: str = "results.jsonl", keys: tuple[str, ...] = ()) -> tuple[list[dict], int]:
    """Rows of JSON Lines bytes up to the last newline, and that byte count (a partial line is not a row).

    Raises
    ------
    CaseError
        Naming ``name`` and the line, for a line that is not JSON, not an object, or lacks one of ``keys``
        as a string.
    """
    if not data:
        return [], 0
    end = data.rfind(b"\n") + 1
    rows = []
    for n, line in enumerate(data[:end].decode(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = _loads(line)
        except ValueError:
            raise CaseError(f"{name} line {n}: not JSON") from None
        if not isinstance(row, dict) or any(not isinstance(row.get(k), str) for k in keys):
            raise CaseError(f"{name} line {n}: not a {name} row (an object with {', '.join(keys) or 'fields'})")
        rows.append(row)
    return rows, end


ROW_KEYS = ("image", "sha256", "camera", "decision")
"""Fields every row of results.jsonl holds as strings."""


def _loads(text):
    """``json.loads``, with JSON nested too deeply for the parser (a RecursionError) as a ValueError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _is_temp(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name.startswith(".") and ".tmp" in name


def _last_line_end(fd: int, size: int, chunk: int = 1 << 16) -> int:
    """Offset just after the last newline of an open file (0 when it has none)."""
    end = size
    while end > 0:
        start = max(0, end - chunk)
        block = os.pread(fd, end - start, start)
        i = block.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        end = start
    return 0


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _digest_file(path: Path, chunk: int = 1 << 20) -> dict:
    """SHA-256 and size of a case file, read in chunks without following a link."""
    h, size = hashlib.sha256(), 0
    with os.fdopen(_open(path, os.O_RDONLY), "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return {"sha256": h.hexdigest(), "size": size}


@dataclass
class Verification:
    """What :meth:`Case.verify` found: ``problems`` (empty: the case verifies), the chain head, notes."""

    problems: list[str] = field(default_factory=list)
    head: str = GENESIS
    entries: int = 0
    files_checked: int = 0
    inputs_checked: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Case:
    """A case directory.

    Parameters
    ----------
    root : path-like
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.results = self.root / "results.jsonl"
        self.errors = self.root / "errors.jsonl"
        self.csv = self.root / "results.csv"
        self.manifest = self.root / "manifest.json"
        self.audit_log = self.root / AUDIT
        self.lock_file = self.root / LOCK
        self.artifacts = self.root / "artifacts"
        self._tracked: list | None = None  # running SHA-256 and size of results.jsonl during a run
        self._pending: dict[str, dict] = {}  # pictures written since the last checkpoint
        self._chain: tuple[int, str] | None = None  # (next seq, last hash) while this object holds the lock
        self._locked = False

    # -- the folder itself --------------------------------------------------
    def _real_dir(self, folder: Path, create: bool = True) -> None:
        """Make sure ``folder`` is a real directory (not a link), creating it if asked."""
        try:
            st = os.lstat(folder)
        except FileNotFoundError:
            if not create:
                return
            try:
                os.mkdir(folder)
                return
            except FileExistsError:  # made by another process in between: check what it is
                st = os.lstat(folder)
        if stat.S_ISLNK(st.st_mode):
            raise CaseError(f"{folder}: is a symbolic link; a case never follows links out of its folder")
        if not stat.S_ISDIR(st.st_mode):
            raise CaseError(f"{folder}: exists and is not a folder")

    def create(self) -> None:
        """Create the case folder (its parents too); refuse a link, a file, or a folder that is no case.

        Raises
        ------
        CaseError
        """
        if self.root.is_symlink():
            raise CaseError(f"{self.root}: is a symbolic link; give the case folder's real path")
        if self.root.exists() and not self.root.is_dir():
            raise CaseError(f"{self.root}: exists and is not a folder; --case needs a new or existing case folder")
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self._real_dir(self.root)
        links = self.links()
        if links:
            raise CaseError(f"{links[0]}: {_not_a_case_file(os.lstat(links[0]))}")
        names = {p.name for p in self.root.iterdir()} - {LOCK}
        if names and AUDIT not in names:
            raise CaseError(
                f"{self.root}: not empty and not a case folder (no audit.jsonl); give a new folder for the case"
            )

    def links(self) -> list[Path]:
        """Symbolic links, other non-regular entries and files with other hard links, anywhere in the case, and
        folders where the case keeps a file (:data:`CASE_FILES`)."""
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            for name in sorted(dirnames + filenames):
                p = Path(dirpath) / name
                st = os.lstat(p)
                if stat.S_ISDIR(st.st_mode):
                    if name in CASE_FILES and Path(dirpath) == self.root:
                        found.append(p)
                elif not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
                    found.append(p)
        return sorted(found)

    def files(self) -> dict[str, dict]:
        """SHA-256 and size of every regular file the case holds, by path relative to the case (not the audit
        trail, not the lock; links are not followed and not included: see :meth:`links`)."""
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                rel = p.relative_to(self.root).as_posix()
                st = os.lstat(p)
                if rel in NOT_HASHED or not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
                    continue
                out[rel] = _digest_file(p)
        return out

    # -- one run at a time --------------------------------------------------
    @contextlib.contextmanager
    def lock(self):
        """Hold the case's exclusive lock for the block.

        Raises
        ------
        CaseBusy
            At once, naming the PID, host and start time of the run that holds it.
        """
        folder = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:  # the lock is on the folder, which a run's rival cannot delete and recreate as it can a file
            fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(folder)
            raise CaseBusy(f"{self.root}: another run holds the case ({self._holder_named()})") from None
        try:
            fd = _open(self.lock_file, os.O_RDWR | os.O_CREAT)
        except BaseException:
            os.close(folder)
            raise
        try:
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "started_utc": utc_now()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
            os.fsync(fd)
            self._locked = True
            try:
                yield holder
            finally:
                self._locked, self._chain, self._tracked = False, None, None
                self._pending.clear()
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)
            os.close(folder)  # releases the folder's lock

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            h = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            return f"pid {h['pid']} on {h['host']}, started {h['started_utc']}"
        except (ValueError, KeyError):
            return "holder unknown"

    def _holder_named(self) -> str:
        """The holder written in the lock file (read only; the lock itself is on the folder)."""
        try:
            fd = _open(self.lock_file, os.O_RDONLY)
        except (FileNotFoundError, CaseError):
            return "holder unknown: its lock file was removed or replaced"
        try:
            return self._holder(fd)
        finally:
            os.close(fd)

    def busy(self) -> str | None:
        """Who holds the lock now (``None``: nobody), checked without creating or writing anything."""
        try:
            folder = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(folder, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self._holder_named()
        else:
            fcntl.flock(folder, fcntl.LOCK_UN)
            return None
        finally:
            os.close(folder)

    # -- writing (under the lock) --------------------------------------------
    def _append(self, path: Path, lines: list[str]) -> tuple[bool, bytes]:
        """Append whole lines in one write, then fsync: a kill leaves at most a partial last line, which the
        next append cuts off first (it never glues a row onto a torn one). Returns whether a torn line was
        cut, and the bytes appended."""
        fd = _open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        try:
            size = os.fstat(fd).st_size
            torn = bool(size) and os.pread(fd, 1, size - 1) != b"\n"
            if torn:
                os.ftruncate(fd, _last_line_end(fd, size))
            data = "".join(line + "\n" for line in lines).encode()
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return torn, data

    def _write(self, path: Path, data: bytes) -> None:
        """Atomic write (the rename replaces a link at that name, never follows it), then fsync the folder.

        A picture's digest is kept for the next :meth:`checkpoint`."""
        self._real_dir(path.parent)
        atomic_write_bytes(path, data)
        _fsync_dir(path.parent)
        rel = path.relative_to(self.root).as_posix()
        if rel.startswith("artifacts/"):
            self._pending[rel] = _digest(data)

    def write_analysis(self, rel: str, data: bytes) -> None:
        """Atomic write of one file of an analysis folder (:data:`ANALYSES`), e.g. ``cluster/clusters.json``."""
        if not rel.startswith(ANALYSES) or ".." in rel.split("/") or rel.count("/") != 1:
            raise CaseError(f"{rel}: not an analysis file name (one of {', '.join(ANALYSES)} then a file name)")
        self._write(self.root / rel, data)

    def read_analysis(self, rel: str) -> bytes | None:
        """An analysis file's bytes (``None`` when absent), read without following a link."""
        path = self.root / rel
        if not path.parent.is_dir():
            return None
        self._real_dir(path.parent, create=False)
        return _read(path)

    def analysis_files(self, folder: str) -> list[str]:
        """The files of one analysis folder (``"cluster/"`` or ``"pool/"``), relative to the case, sorted."""
        path = self.root / folder
        if folder not in ANALYSES or not path.is_dir():
            return []
        self._real_dir(path, create=False)
        return sorted(f"{folder}{p.name}" for p in path.iterdir() if not _is_temp(p.name))

    def _rewrite_jsonl(self, path: Path, rows: list[dict]) -> None:
        self._write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())

    # -- results ----------------------------------------------------------
    def done(self, cameras: set[str], protected: int | None = None) -> dict[tuple[str, str], list[dict]]:
        """Images fully scored, by (path, SHA-256). Repairs what a kill left: a partial last line is cut,
        the rows of an image without a row for every camera are removed (the image is scored again), and
        with ``protected`` (the size of results.jsonl the audit trail records) the rows past it are
        removed: a killed run's rows that no audit entry covers are never adopted.

        Keys are normalised paths (``os.path.abspath``), whatever spelling earlier runs recorded. Starts the
        running digest of results.jsonl that :meth:`checkpoint` records; ``self.dropped_lines`` counts the
        lines cut past ``protected``."""
        data = _read(self.results)
        self.dropped_lines = 0
        if data is not None and protected is not None and len(data) > protected:
            self.dropped_lines = data[protected:].count(b"\n") + (not data.endswith(b"\n"))
            data = data[:protected]  # rows no audit entry covers: dropped, their images scored again
            self._write(self.results, data)
        rows, end = _jsonl(data, keys=ROW_KEYS)
        by_key: dict[tuple[str, str], list[dict]] = {}
        for r in rows:
            by_key.setdefault((os.path.abspath(r["image"]), r["sha256"]), []).append(r)
        complete = {k: rs for k, rs in by_key.items() if _all_scored(rs, cameras)}
        if data is not None and (end < len(data) or len(complete) != len(by_key)):
            self._rewrite_jsonl(self.results, [r for r in rows
                                               if (os.path.abspath(r["image"]), r["sha256"]) in complete])  # fmt: skip
        data = _read(self.results) or b""
        self._tracked = [hashlib.sha256(data), len(data)]
        return complete

    def commit_image(
        self,
        rows: list[dict],
        preview_png: bytes | None,
        surfaces: dict[str, np.ndarray],
        thumbnail_jpeg: bytes | None = None,
    ) -> None:
        """One image as one unit: its pictures first, its rows last (one append, fsync'd)."""
        if surfaces:
            self.save_artifacts(rows[0]["sha256"], preview_png, surfaces, thumbnail_jpeg)
        written = self._append(self.results, [json.dumps(r, ensure_ascii=False) for r in rows])
        if self._tracked is not None:
            if written[0]:  # a torn line was cut first: the running digest starts again from the file
                data = _read(self.results) or b""
                self._tracked = [hashlib.sha256(data), len(data)]
            else:
                self._tracked[0].update(written[1])
                self._tracked[1] += len(written[1])

    def checkpoint(self, event: str = "match-checkpoint") -> dict:
        """Record in the audit trail what the run has committed so far: results.jsonl (SHA-256 and size)
        and the pictures written since the last checkpoint. After a kill, a resume keeps exactly what the
        last checkpoint covers (:meth:`done`), and verify checks it."""
        files = dict(self._pending)
        if self._tracked is not None:
            files["results.jsonl"] = {"sha256": self._tracked[0].hexdigest(), "size": self._tracked[1]}
        entry = self.audit(event, light=True, files=files)
        self._pending.clear()
        return entry

    def add_error(self, path: str, reason: str, sha256: str | None = None) -> None:
        """One errors.jsonl row; ``sha256`` when the file was read (its bytes were refused)."""
        row = {"file": path, "reason": reason} | ({"sha256": sha256} if sha256 else {})
        self._append(self.errors, [json.dumps(row, ensure_ascii=False)])

    def rows(self, upto: int | None = None) -> list[dict]:
        """The rows of results.jsonl (with ``upto``, of its first ``upto`` bytes only)."""
        data = _read(self.results)
        return _jsonl(data if upto is None or data is None else data[:upto], "results.jsonl", ROW_KEYS)[0]

    def error_rows(self) -> list[dict]:
        return _jsonl(_read(self.errors), "errors.jsonl", ("file", "reason"))[0]

    def settle_errors(self) -> list[dict]:
        """Keep one error per file (its latest), none for a file scored since (with those bytes); sorted by file."""
        scored = {(r["image"], r["sha256"]) for r in self.rows()}
        paths = {image for image, _ in scored}
        latest = {e["file"]: e for e in self.error_rows()}
        errors = [latest[f] for f in sorted(latest)
                  if f not in paths or (latest[f].get("sha256") and (f, latest[f]["sha256"]) not in scored)]
        if errors or self.errors.exists():
            self._rewrite_jsonl(self.errors, errors)
        return errors

    def write_csv(self) -> None:
        """results.csv from results.jsonl, sorted by image then camera."""
        self._write(self.csv, self.csv_bytes())

    @staticmethod
    def csv_columns() -> list[str]:
        """The columns of results.csv: :data:`CSV_COLUMNS`, with calibration's empirical tail beside p_fa."""
        from .calibration import FIELDS as TAIL_FIELDS  # the empirical tail beside p_fa (spn calibrate)

        at = CSV_COLUMNS.index("p_fa") + 1
        return CSV_COLUMNS[:at] + list(TAIL_FIELDS) + CSV_COLUMNS[at:]

    def csv_bytes(self, columns: list[str] | None = None, rows: list[dict] | None = None) -> bytes:
        """What results.csv holds: the rows of results.jsonl (or ``rows``, already read), sorted by image then
        camera (``columns``: those of an earlier version's file, to check it as that version wrote it)."""
        columns = columns or self.csv_columns()
        rows = sorted(self.rows() if rows is None else rows, key=lambda r: (r["image"], r["camera"]))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for r in rows:
            r = r | {k: "; ".join(r.get(k) or ()) for k in ("warnings", "decoder_warnings")}
            writer.writerow({c: "" if r.get(c) is None else r.get(c) for c in columns})
        return buf.getvalue().encode()

    def _csv_is_the_rows(self, rows: list[dict]) -> bool:
        """Whether results.csv is what ``rows`` make, with the columns its header names when they are a
        subset of this version's in the same order (an earlier version wrote fewer columns)."""
        data = _read(self.csv) or b""
        header = next(csv.reader(io.StringIO(data.split(b"\n", 1)[0].decode("utf-8", "replace"))), [])
        known = self.csv_columns()
        if not header or header != [c for c in known if c in header] or not set(header) <= set(known):
            return False
        return data == self.csv_bytes(header, rows)

    # -- artifacts for the report -----------------------------------------
    def artifact_dir(self, sha256: str) -> Path:
        return self.artifacts / sha256[:16]

    def save_artifacts(
        self,
        sha256: str,
        preview_png: bytes | None,
        surfaces: dict[str, np.ndarray],
        thumbnail_jpeg: bytes | None = None,
    ) -> None:
        self._real_dir(self.artifacts)
        folder = self.artifact_dir(sha256)
        self._real_dir(folder)
        # pictures already there (the same bytes at another path, scored earlier) are kept as recorded
        if thumbnail_jpeg is not None and not (folder / "thumbnail.jpg").exists():
            self._write(folder / "thumbnail.jpg", thumbnail_jpeg)
        if preview_png is not None and not (folder / "residual.png").exists():
            self._write(folder / "residual.png", preview_png)
        for camera, surface in surfaces.items():
            if (folder / f"surface-{camera}.npy").exists():
                continue
            buf = io.BytesIO()
            np.save(buf, surface.astype(np.float32), allow_pickle=False)
            self._write(folder / f"surface-{camera}.npy", buf.getvalue())

    def read_artifact(self, path: Path) -> bytes | None:
        """An artifact's bytes, read without following a link (``None`` when absent)."""
        self._real_dir(self.artifacts, create=False)
        self._real_dir(path.parent, create=False)
        return _read(path)

    def tidy(self) -> list[str]:
        """Remove what a killed run left behind: temporary files, and pictures of images that have no rows."""
        removed = []
        keep = {self.artifact_dir(r["sha256"]).name for r in self.rows()}
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            for name in filenames:
                p = Path(dirpath) / name
                stray_pic = p.parent.parent == self.artifacts and p.parent.name not in keep
                if _is_temp(name) or stray_pic:
                    p.unlink()
                    removed.append(p.relative_to(self.root).as_posix())
        if self.artifacts.is_dir() and not self.artifacts.is_symlink():
            for d in self.artifacts.iterdir():
                if d.is_dir() and not d.is_symlink() and not any(d.iterdir()):
                    d.rmdir()
        return sorted(removed)

    # -- manifest and audit -------------------------------------------------
    def write_manifest(self, content: dict) -> None:
        """manifest.json: ``content`` and the tool's versions."""
        text = json.dumps({**content, **tool_info()}, indent=2, ensure_ascii=False) + "\n"
        self._write(self.manifest, text.encode())

    def read_manifest(self) -> dict | None:
        data = _read(self.manifest)
        return _loads(data) if data is not None else None

    def audit_entries(self) -> tuple[list[dict], list[str]]:
        """The audit entries and what is wrong with the file as a chain (read-only)."""
        data = _read(self.audit_log)
        problems = []
        if data is None:
            return [], ["audit.jsonl: missing"]
        end = data.rfind(b"\n") + 1
        if end < len(data):
            problems.append(TORN_AUDIT)
        entries = []
        for n, line in enumerate(data[:end].decode(errors="replace").splitlines(), 1):
            try:
                entry = _loads(line)
                if not isinstance(entry, dict):
                    raise ValueError
            except ValueError:
                problems.append(f"audit.jsonl line {n}: not an audit entry")
                continue
            entries.append(entry)
        prev = GENESIS
        in_run = False
        for i, e in enumerate(entries):
            event = str(e.get("event", ""))
            if event in RUN_END:
                in_run = False
            elif event.startswith(RUN_KINDS) and event.endswith("-start"):
                in_run = True
            problems += _entry_problems(i, e, in_run)
            if e.get("seq") != i:
                problems.append(f"audit entry {i}: out of sequence (seq {e.get('seq')})")
            if e.get("prev_hash") != prev:
                problems.append(f"audit entry {i}: chain broken (prev_hash does not match entry {i - 1})")
            if _entry_hash(e) != e.get("hash"):
                problems.append(f"audit entry {i}: altered (its hash does not match its content)")
            prev = e.get("hash")
        if not entries and not problems:
            problems.append("audit.jsonl: empty")
        return entries, problems

    def head(self) -> str:
        """The hash of the last audit entry (the genesis hash for an empty trail)."""
        entries, _ = self.audit_entries()
        return str(entries[-1].get("hash")) if entries else GENESIS

    def audit(self, event: str, *, light: bool = False, **fields) -> dict:
        """Append an audit entry chained to the previous one by its SHA-256 (a partial last line is cut).

        ``light`` leaves out the tool's versions (a run's checkpoints: its start entry has them). While
        this object holds the lock the chain's end is remembered, so a run's entries do not re-read the trail.
        """
        if self._chain is None:
            data = _read(self.audit_log) or b""
            end = data.rfind(b"\n") + 1
            entries, _ = _jsonl(data[:end], AUDIT)
            chain = (len(entries), entries[-1].get("hash") if entries else GENESIS)
        else:
            chain = self._chain
        entry = {
            "seq": chain[0],
            "utc": utc_now(),
            "event": event,
            **({} if light else tool_info()),
            **fields,
            "prev_hash": chain[1],
        }
        entry["hash"] = _entry_hash(entry)
        self._append(self.audit_log, [json.dumps(entry, ensure_ascii=False, sort_keys=True)])
        if self._locked:
            self._chain = (chain[0] + 1, entry["hash"])
        return entry

    # -- proof ----------------------------------------------------------------
    @staticmethod
    def recorded_files(entries: list[dict]) -> tuple[dict[str, dict], int | None]:
        """The files the audit trail says the case holds: the last run's end entry, the checkpoints of a
        run started after it (killed: :meth:`checkpoint`), and the reports written after it; and the index
        of that run-end entry (``None``: no run ended)."""
        files, _, last = _recorded(entries)
        return files, last

    @staticmethod
    def _last_run_open(entries: list[dict]) -> dict | None:
        """The last run's start entry if that run wrote no end entry (killed, running, or the trail was cut)."""
        runs = [e for e in entries if str(e.get("event", "")).startswith(RUN_KINDS)
                and not str(e.get("event")).endswith(CHECKPOINT)]  # fmt: skip
        return runs[-1] if runs and str(runs[-1].get("event")).endswith("-start") else None

    def _compare(self, recorded: dict[str, dict], now: dict[str, dict], by: dict[str, str], killed: bool
                 ) -> list[str]:  # fmt: skip
        """Differences between recorded and present files (after a killed run, rows appended after the last
        checkpoint and pictures it did not record pass: a resume drops or removes them). ``by`` names the
        entry that recorded each file."""
        problems = []
        since = by.get("", "the start of the case")
        for rel in sorted(recorded.keys() | now.keys()):
            rec, cur = recorded.get(rel), now.get(rel)
            if killed and (rel in REGENERATED or _is_temp(rel) or (rec is None and rel.startswith(("artifacts/",
                                                                                                   *ANALYSES)))):
                continue
            if cur is None:
                problems.append(f"{rel}: missing (recorded by {by.get(rel, since)}, SHA-256 {rec['sha256']})")
            elif rec is None:
                if not (killed and rel in APPEND_ONLY):
                    problems.append(f"{rel}: not recorded in the audit trail (added after {since})")
            elif cur["sha256"] != rec["sha256"]:
                if killed and rel in APPEND_ONLY and self._extends(rel, rec, cur):
                    continue  # rows appended by the killed run after the recorded ones
                problems.append(
                    f"{rel}: changed since {by.get(rel, since)} recorded it "
                    f"(SHA-256 now {cur['sha256']}, recorded {rec['sha256']})"
                )
        return problems

    def _extends(self, rel: str, rec: dict, cur: dict) -> bool:
        """Whether the case file ``rel`` (now ``cur``) begins with the recorded bytes ``rec``."""
        if cur["size"] < rec["size"]:
            return False
        data = _read(self.root / rel) or b""
        return _digest(data[: rec["size"]]) == rec

    def _after_head(self, entries: list[dict], at: int, now: dict[str, dict]) -> list[str]:
        """Files recorded when the noted head (entry ``at``) was written that later entries changed, beyond
        what later entries may do: a later run appends rows and writes its CSV, manifest, errors and
        pictures again; a later report writes its own files."""
        recorded, by, _ = _recorded(entries[: at + 1])
        later = entries[at + 1 :]
        match_after = any(e.get("event") == "match-start" for e in later)
        problems = []
        for rel, rec in sorted(recorded.items()):
            cur = now.get(rel)
            if cur is None:  # no run removes a file it recorded
                problems.append(f"{rel}: missing (recorded at the noted head by {by.get(rel)}, SHA-256 "
                                f"{rec['sha256']})")  # fmt: skip
                continue
            if cur["sha256"] == rec["sha256"]:
                continue
            if rel in APPEND_ONLY and self._extends(rel, rec, cur):
                continue
            if match_after and rel in REGENERATED:  # pictures and analyses are never rewritten
                continue
            if _is_report_name(rel) and any(rel in (e.get("report_files") or {}) for e in later):
                continue
            problems.append(f"{rel}: changed after the noted head (recorded by {by.get(rel)}, SHA-256 "
                            f"{rec['sha256']}; now {cur['sha256']})")  # fmt: skip
        return problems

    def _link_problems(self) -> list[str]:
        return [f"{p.relative_to(self.root)}: {_not_a_case_file(os.lstat(p))}" for p in self.links()]

    def state_problems(self) -> tuple[list[str], list[dict], dict[str, dict]]:
        """The chain and the case files against what the trail records (no input is read); the entries, and
        the case files as hashed now (:meth:`files`).

        After a run that wrote no end entry (killed), the rows it appended, the pictures it added and the
        files it regenerates at its end (CSV, manifest, errors) pass; recorded rows and pictures must not
        have changed.
        """
        entries, problems = self.audit_entries()
        problems += self._link_problems()
        now = self.files()
        if not entries:
            if now:
                problems.append("the case holds files but no audit trail records them")
            return problems, entries, now
        recorded, by, _ = _recorded(entries)
        problems += self._compare(recorded, now, by, killed=self._last_run_open(entries) is not None)
        return problems, entries, now

    def base_entries(self) -> list[dict] | None:
        """The audit entries of a case a run may build on (``None``: a new case, no audit trail yet).

        Raises
        ------
        CaseError
            If the case changed since its audit trail recorded it (a torn last audit line passes: the
            next entry cuts it), naming the first difference.
        """
        if not self.audit_log.exists() and not self.audit_log.is_symlink():
            return None
        problems, entries, _ = self.state_problems()
        problems = [p for p in problems if p != TORN_AUDIT]
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise CaseError(
                f"{self.root}: the case changed since its audit trail recorded it: {problems[0]}{more}; "
                f"run spn case verify {self.root} (a run never builds on a case that does not verify)"
            )
        return entries

    def verify(self, *, head: str | None = None, inputs: bool = True, locked_by_us: bool = False) -> Verification:
        """Check the case, writing nothing: the chain, each recorded file against the file now, files added
        or missing, links, the inputs re-hashed, and (``head``) that the noted head is still in the chain.
        A run holding the lock is a problem too, unless ``locked_by_us`` (the caller holds it).

        Returns
        -------
        Verification
            One problem per difference, each naming the file or entry.
        """
        v = Verification()
        if not self.root.is_dir() or self.root.is_symlink():
            v.problems.append(f"{self.root}: not a case folder")
            return v
        try:
            problems, entries, now = self.state_problems()
        except CaseError as exc:  # a case file that cannot be read safely (a FIFO, a hard link): named, no hang
            v.problems += [str(exc), *self._link_problems()]
            return v
        v.problems += problems
        v.entries = len(entries)
        v.head = str(entries[-1].get("hash")) if entries else GENESIS
        recorded, last_end = self.recorded_files(entries)
        v.files_checked = len(recorded)
        open_run = self._last_run_open(entries)
        if open_run is not None:
            v.problems.append(
                f"audit trail: the last run (started {open_run.get('utc')}) has no end entry: it was killed, "
                f"is still running, or the trail was cut; run the same command again ({open_run.get('event')})"
            )
        elif entries and last_end is None:
            v.problems.append("audit trail: no run ended, so no file of the case is recorded")
        holder = None if locked_by_us else self.busy()
        if holder:
            v.problems.append(f"a run is writing the case now ({holder})")
        if head is not None:
            hashes = [e.get("hash") for e in entries]
            if head not in hashes:
                v.problems.append(
                    f"audit trail: the noted head {head} is not in the chain (entries were removed or rewritten)"
                )
            elif hashes.index(head) < len(hashes) - 1:
                at = hashes.index(head)
                after = [str(e.get("event")) for e in entries[at + 1 :]]
                shown = ", ".join(after[:8]) + (f" and {len(after) - 8} more" if len(after) > 8 else "")
                v.notes.append(f"{len(after)} audit entr(y/ies) after the noted head: {shown}")
                v.problems += self._after_head(entries, at, now)
        if open_run is None:  # a killed run's manifest is rewritten by its resume
            try:
                v.problems += run_problems(entries, self.read_manifest())
            except (ValueError, CaseError) as exc:
                v.problems.append(f"manifest.json: unreadable ({exc})")
        try:
            rows = self.rows()
        except CaseError as exc:
            v.problems.append(str(exc))
            rows = None
        if rows is not None:
            v.problems += row_problems(rows)
            if open_run is None and entries and self.csv.exists() and not self._csv_is_the_rows(rows):
                v.problems.append("results.csv: not the rows of results.jsonl (a run writes it from them)")
        if inputs:
            self._verify_inputs(v, rows or [])
        return v

    def _verify_inputs(self, v: Verification, rows: list[dict]) -> None:
        try:
            manifest = self.read_manifest()
        except (ValueError, CaseError) as exc:
            v.problems.append(f"manifest.json: unreadable ({exc})")
            return
        items = input_items(manifest, "manifest.json", v.problems)
        scored = scored_inputs(rows)  # rows that could not be read are named by verify already
        by_path = {i["path"]: i["sha256"] for i in scored}
        for item in items:  # the manifest's scored inputs must be the rows' (it is rewritten at each run's end)
            if item.get("status") == "scored" and by_path.get(item["path"]) != item.get("sha256"):
                v.problems.append(f"manifest.json: {item['path']} recorded as scored with SHA-256 {item.get('sha256')}"
                                  f", its rows say {by_path.get(item['path'])}")  # fmt: skip
        items = scored + [i for i in items if i.get("status") != "scored"]
        for rel in sorted(self.files()):
            if rel.startswith(ANALYSES) and rel.endswith(".json"):
                try:
                    record = _loads(_read(self.root / rel) or b"{}")
                except (ValueError, CaseError) as exc:
                    v.problems.append(f"{rel}: unreadable ({exc})")
                    continue
                items += input_items(record, rel, v.problems)
                if rel.startswith("pool/") and isinstance(record, dict):  # its rows must follow from their PCEs
                    pooled = record.get("pooled")
                    if isinstance(pooled, list) and all(isinstance(r, dict) for r in pooled):
                        v.problems += row_problems(pooled, rel)
                    else:
                        v.problems.append(f"{rel}: not a pooled record (a list of rows under 'pooled' expected)")
        for item in {(i["path"], i.get("sha256")): i for i in items}.values():  # each input once
            if item.get("sha256") or "unhashed" in item or str(item.get("status", "")).startswith("not an image"):
                v.inputs_checked += 1
                v.problems += input_problems(item)


def scoring_parameters(params) -> dict:
    """The parameters that decide a score (all but :data:`RUN_ONLY`), as JSON would hold them."""
    params = params if isinstance(params, dict) else {}
    return json.loads(json.dumps({k: v for k, v in params.items() if k not in RUN_ONLY}))


def run_problems(entries: list[dict], manifest) -> list[str]:
    """Match runs that disagree with the case's first one: a start entry with other scoring parameters or
    another database (a run refuses both), and a manifest whose parameters, database, examiner or case id
    are not those of the run entries (it is written from them at each run's end)."""
    starts = [(i, e) for i, e in enumerate(entries) if e.get("event") == "match-start"]
    if not starts:
        return []
    first = starts[0][1]
    scoring, database = scoring_parameters(first.get("parameters")), first.get("database_sha256")
    problems = [
        f"audit entry {i} (match-start): other scoring parameters or another database than the case's first run"
        for i, e in starts[1:]
        if scoring_parameters(e.get("parameters")) != scoring or e.get("database_sha256") != database
    ]
    if isinstance(manifest, dict) and manifest:
        last = starts[-1][1]
        wrong = [name for name, ok in (
            ("parameters", scoring_parameters(manifest.get("parameters")) == scoring),
            ("database_sha256", manifest.get("database_sha256") == database),
            ("examiner", manifest.get("examiner") == last.get("examiner")),
            ("case_id", manifest.get("case_id") == last.get("case_id")),
        ) if not ok]  # fmt: skip
        if wrong:
            problems.append(f"manifest.json: {', '.join(wrong)} not those the audit trail's runs recorded")
    return problems


def scored_digest(row: dict) -> dict:
    """The SHA-256 of the file a row was scored from: the image's, or a saved residual's own file's (its
    rows name the source image's SHA-256, kept as ``source_sha256``)."""
    if row.get("residual_file_sha256"):
        return {"sha256": row["residual_file_sha256"], "source_sha256": row["sha256"]}
    return {"sha256": row["sha256"]}


def scored_inputs(rows: list[dict]) -> list[dict]:
    """One input record (path, SHA-256) per file the rows were scored from."""
    found: dict[tuple, dict] = {}
    for r in rows:
        item = {"path": r["image"], **scored_digest(r)}
        found.setdefault((item["path"], item["sha256"]), item)
    return list(found.values())


def input_items(record, name: str, problems: list[str]) -> list[dict]:
    """The ``inputs`` of a manifest or an analysis record, each with a path; a wrong shape is a problem."""
    if record is None:
        return []
    inputs = record.get("inputs", []) if isinstance(record, dict) else None
    if not isinstance(inputs, list):
        problems.append(f"{name}: not a case record (an object with a list of inputs is expected)")
        return []
    good = []
    for n, item in enumerate(inputs):
        if (
            isinstance(item, dict)
            and isinstance(item.get("path"), str)
            and item["path"]
            and (item.get("sha256") is None or _is_hex64(item["sha256"]))
        ):
            good.append(item)
        else:
            problems.append(f"{name}: input {n} is not an input record (a path and a SHA-256 or null expected)")
    return good


def _is_hex64(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def digest_or_reason(path) -> tuple[str | None, str | None]:
    """An input's SHA-256 as the evidence reader reads it (no link followed, no FIFO opened), or why it cannot
    be hashed: ``(digest, None)`` or ``(None, reason)``."""
    try:
        return sha256_file(path), None
    except FileNotFoundError:
        return None, "no such file"
    except EvidenceError as exc:
        return None, exc.reason
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"


def unscored_digest(path) -> dict:
    """An input that failed, as a case records it: ``{"sha256": digest}``, or ``{"sha256": None, "unhashed":
    reason}`` when it cannot be hashed (a link, a FIFO, a missing file); :func:`input_problems` checks either
    again, so that a later change to it is seen."""
    digest, reason = digest_or_reason(path)
    return {"sha256": digest} if digest else {"sha256": None, "unhashed": reason}


def input_problems(item: dict) -> list[str]:
    """An input re-hashed (as the evidence reader reads it: no link followed, no FIFO opened) against the record.

    A scored input must have the recorded SHA-256. One that could not be hashed then (``unhashed``: a link,
    a FIFO, a missing file) must still not be: a readable file in its place is a change too.
    """
    path, recorded = Path(item["path"]), item.get("sha256")
    if not recorded and str(item.get("status", "")).startswith("not an image"):  # listed, not read: its size
        if "size_bytes" not in item:
            return []  # listed by a version that recorded no size
        try:
            size = os.lstat(path).st_size
        except OSError:
            size = None
        return [] if size == item.get("size_bytes") else [
            f"{path}: size now {size}, recorded {item.get('size_bytes')} (a file that is not an image, not read)"]
    digest, reason = digest_or_reason(path)
    if recorded:
        if digest is None:
            return [f"{path}: {'missing' if reason == 'no such file' else reason} (recorded SHA-256 {recorded})"]
        if digest != recorded:
            return [f"{path}: changed (SHA-256 now {digest}, recorded {recorded})"]
        return []
    if "unhashed" not in item:
        return []  # written before unscored inputs were hashed: nothing recorded to compare
    if digest is not None:
        return [f"{path}: now a readable file (SHA-256 {digest}); when recorded: {item['unhashed']}"]
    if reason != item["unhashed"]:
        return [f"{path}: now {reason}; when recorded: {item['unhashed']}"]
    return []


PCE_ROUNDING = 0.5e-4
"""Half the last decimal a row's PCE is stored with (``round(pce, 4)``)."""


def row_problems(rows: list[dict], source: str = "results.jsonl") -> list[str]:
    """Rows the tool cannot have written: two rows for one image and camera (paths compared after
    normalisation), or a decision or a false-alarm probability that does not follow from the row's PCE
    and threshold (:func:`spncli.identify.decision_text`, :func:`spncli.pce.false_alarm_probability`).
    Rows without ``image`` are a pooled probe's (``source``: its file), one per camera."""
    from .pce import false_alarm_probability

    problems = []
    seen: dict[tuple, int] = {}
    for r in rows:
        if not isinstance(r.get("camera"), str) or not isinstance(r.get("decision"), str) or \
                ("image" in r and not isinstance(r["image"], str)):
            problems.append(f"{source}: a row without a camera, a decision or an image name as text")
            continue
        key = (os.path.normpath(r["image"]) if "image" in r else "", r["camera"])
        seen[key] = seen.get(key, 0) + 1
        what = f"{source}: the row for {r['image']} against {r['camera']}" if "image" in r else \
            f"{source}: the pooled row against {r['camera']}"
        try:
            threshold = float(r["threshold"])
            pces = [float(r[k]) for k in ("pce_classic", "pce_restored") if r.get(k) is not None] or [float(r["pce"])]
            n = int(r.get("n_shifts") or 1)
            p_fa = float(r["p_fa"]) if r.get("p_fa") is not None else None
        except (KeyError, TypeError, ValueError):
            problems.append(f"{what} lacks a numeric PCE or threshold")
            continue
        # the decision was taken on the unrounded PCE: only one no PCE within its rounding allows is impossible
        possible = {"consistent": any(x + PCE_ROUNDING > threshold for x in pces),
                    "not consistent": all(x - PCE_ROUNDING <= threshold for x in pces)}  # fmt: skip
        expected = "consistent" if any(x > threshold for x in pces) else "not consistent"
        if not possible.get(r["decision"], False):
            problems.append(f"{what} says {r['decision']!r} at PCE {', '.join(f'{x:g}' for x in pces)} and threshold "
                            f"{threshold:g}: {expected!r} follows")  # fmt: skip
        if p_fa is not None:
            # PCEs are stored to 4 decimals: p_fa must lie between its values half a unit either side
            bounds = []
            for d in (PCE_ROUNDING, -PCE_ROUNDING):
                singles = [false_alarm_probability(x + d, n) for x in pces]
                bounds.append(singles[0] if len(singles) == 1 else min(1.0, 2.0 * min(singles)))
            want = false_alarm_probability(pces[0], n) if len(pces) == 1 else min(
                1.0, 2.0 * min(false_alarm_probability(x, n) for x in pces))
            if not bounds[0] * (1 - 1e-9) - 1e-300 <= p_fa <= bounds[1] * (1 + 1e-9) + 1e-300:
                problems.append(f"{what} gives p_fa {p_fa:.3g}, but PCE {', '.join(f'{x:g}' for x in pces)} over "
                                f"{n} shift(s) gives {want:.3g}")  # fmt: skip
    for (image, camera), n in sorted((k, n) for k, n in seen.items() if n > 1):
        problems.append(f"{source}: {n} rows for {image or 'the pooled probe'} against {camera} (one expected)")
    return problems


def _file_map(value) -> dict[str, dict] | None:
    """A ``files``/``report_files`` record as {relative path: {sha256, size}}, or None if it is not one."""
    if not isinstance(value, dict):
        return None
    for d in value.values():
        if not (isinstance(d, dict) and _is_hex64(d.get("sha256")) and isinstance(d.get("size"), int)
                and not isinstance(d.get("size"), bool) and d["size"] >= 0):  # fmt: skip
            return None
    return value


def _is_report_name(rel: str) -> bool:
    """A file ``spn report`` writes into a case: a top-level .html (and its .pdf)."""
    return "/" not in rel and rel.endswith((".html", ".pdf"))


def _entry_problems(i: int, e: dict, in_run: bool) -> list[str]:
    """What makes audit entry ``i`` malformed: fields of the wrong type, a files record that is not one,
    report files that a report never writes, a checkpoint outside a run."""
    event = e.get("event")
    name = f"audit entry {i} ({event})" if isinstance(event, str) else f"audit entry {i}"
    problems = []
    if not isinstance(event, str) or not isinstance(e.get("utc"), str):
        problems.append(f"{name}: malformed (an event and a UTC time expected)")
    for key in ("files", "report_files"):
        if key in e and _file_map(e[key]) is None:
            problems.append(f"{name}: malformed {key} (path: SHA-256 and size expected)")
    report = e.get("report_files")
    if isinstance(report, dict):
        wrong = sorted(rel for rel in report if event != "report" or not _is_report_name(rel))
        if wrong:
            problems.append(f"{name}: records {', '.join(wrong)} as report files, which a report never writes")
    if isinstance(event, str) and event.endswith(CHECKPOINT) and not in_run:
        problems.append(f"{name}: a checkpoint outside a run")
    if isinstance(event, str) and event.endswith("-start"):
        evidence = e.get("evidence", [])
        if not (isinstance(e.get("parameters", {}), dict) and isinstance(evidence, list)
                and all(isinstance(p, str) for p in evidence)
                and isinstance(e.get("database_sha256", ""), (str, type(None)))):  # fmt: skip
            problems.append(f"{name}: malformed (parameters an object, evidence a list of paths expected)")
    return problems


def _recorded(entries: list[dict]) -> tuple[dict[str, dict], dict[str, str], int | None]:
    """The files the trail records (see :meth:`Case.recorded_files`), the entry that recorded each (``""``:
    the last run end), and the index of the last run end. Malformed records are skipped (verify names them)."""
    last = next((i for i in range(len(entries) - 1, -1, -1) if entries[i].get("event") in RUN_END), None)
    files: dict[str, dict] = {}
    by: dict[str, str] = {}

    def take(i: int, record) -> None:
        label = f"audit entry {i} ({entries[i].get('event')}, {entries[i].get('utc')})"
        for rel, d in (_file_map(record) or {}).items():
            files[rel], by[rel] = d, label

    if last is not None:
        take(last, entries[last].get("files"))
        by[""] = f"audit entry {last} ({entries[last].get('event')}, {entries[last].get('utc')})"
    in_run = False
    for i in range(0 if last is None else last + 1, len(entries)):
        event = str(entries[i].get("event", ""))
        if event.startswith(RUN_KINDS) and event.endswith("-start"):
            in_run = True
        elif event.endswith(CHECKPOINT) and in_run:
            take(i, entries[i].get("files"))
        if event == "report":
            take(i, {k: v for k, v in (_file_map(entries[i].get("report_files")) or {}).items()
                     if _is_report_name(k)})  # fmt: skip
    return files, by, last


def _all_scored(rows: list[dict], cameras: set[str]) -> bool:
    """Whether an image's rows hold every camera it was to be scored against.

    Every camera of the database, or, for a pre-screened image (rows with
    ``prescreen_scored`` "K of N"), the K candidates its rows name.
    """
    have = {r["camera"] for r in rows}
    if cameras <= have:
        return True
    scored = str(rows[0].get("prescreen_scored") or "").split(" of ")
    return len(scored) == 2 and scored[0].isdigit() and len(have) == int(scored[0]) and have <= cameras
