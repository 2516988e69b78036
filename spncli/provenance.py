"""Provenance records, atomic writes and the evidence-folder guard.

Every output of ``spn`` records the tool version, the parameters and the
SHA-256 of each input it depends on; every file is written under a temporary
name in its final folder and renamed into place, so a killed process leaves
earlier results whole and never a half-written file.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import platform
import stat
import sys
import tempfile
from pathlib import Path

from . import __version__

__all__ = [
    "read_regular_file",
    "open_regular",
    "RefusedFile",
    "utc_now",
    "tool_info",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "OutputInsideEvidence",
    "check_output_location",
    "check_apart",
]


def utc_now() -> str:
    """Current UTC time, ISO 8601 with a ``Z``."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def tool_info() -> dict:
    """Name and versions of the tool and the libraries that shape its numbers."""
    import cv2
    import numpy
    import pywt

    return {
        "tool": "spn",
        "version": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "opencv": cv2.__version__,
        "pywavelets": pywt.__version__,
        "command": " ".join([_program(), *sys.argv[1:]]),
    }


def _program() -> str:
    """The program's name as typed: ``spn`` for the console script and for ``python -m spncli``."""
    name = Path(sys.argv[0]).name
    return "spn" if name == "__main__.py" and Path(sys.argv[0]).parent.name == "spncli" else name


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_MODE = _file_mode()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside ``final``; rename it into place on success.

    The temporary file is removed if the block raises. The rename is atomic on
    POSIX filesystems, so readers see the old file or the new one, never a
    part of it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp" + suffix, dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _MODE)  # mkstemp makes 0600; give the file the user's usual mode
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(final: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


class _HashingWriter:
    """A file's ``write`` that also feeds the bytes to a SHA-256."""

    def __init__(self, f):
        self.f = f
        self.digest = hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.f.write(data)


def atomic_write_npy(final: str | os.PathLike, array) -> str:
    """Write ``array`` as a ``.npy`` file atomically, streamed (no copy of it in memory).

    The bytes are those of ``numpy.save``; returns their SHA-256.
    """
    import numpy as np

    with atomic_path(final) as tmp, open(tmp, "wb") as f:
        writer = _HashingWriter(f)  # not a real file: numpy writes it in buffered chunks
        np.lib.format.write_array(writer, np.asarray(array), allow_pickle=False)
    return writer.digest.hexdigest()


def atomic_write_json(final: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented UTF-8 JSON to ``final`` atomically."""
    atomic_write_bytes(final, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


class OutputInsideEvidence(ValueError):
    """An output path would be written into, next to or over an input."""


class RefusedFile(OSError):
    """A path :func:`open_regular` refused. ``reason``: ``"link"`` (a symbolic link), ``"special"`` (a FIFO,
    socket, device or folder) or ``"names"`` (a regular file with other hard links); ``st``: its ``fstat``
    where it was opened."""

    TEXT = {"link": "is a symbolic link", "special": "not a regular file", "names": "has other hard links"}

    def __init__(self, path: str | os.PathLike, reason: str, st: os.stat_result | None = None):
        super().__init__(errno.EINVAL, self.TEXT[reason], str(path))
        self.reason, self.st = reason, st

    def __reduce__(self):  # OSError would rebuild it from (errno, strerror, filename)
        return type(self), (self.filename, self.reason, self.st)


def open_regular(
    path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = 0o644, *, follow_links: bool = False,
    one_name: bool = False,
) -> tuple[int, os.stat_result]:
    """``os.open`` of a regular file that cannot block and, unless ``follow_links``, never follows a link.

    The one opener of every file the tool reads or writes by name (evidence, case files, the database's
    lock, model files). ``O_NONBLOCK`` keeps a FIFO put where a file is expected from hanging the open
    (and a FIFO opened to write, which has no reader, is refused rather than an error); ``O_NOFOLLOW``
    refuses a symbolic link at the last component. The descriptor is then ``fstat``-ed: anything but a
    regular file is refused, and with ``one_name`` a file with other hard links (a write through it could
    reach a file outside the folder that names it). Returns the descriptor, blocking again, and its
    ``fstat``.

    Raises
    ------
    RefusedFile
        Naming why (``reason``).
    OSError
        As ``os.open`` raises it otherwise (``FileNotFoundError``, ``PermissionError``, ...).
    """
    extra = os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags | extra, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_links:
            raise RefusedFile(path, "link") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO opened to write with no reader; a folder
            raise RefusedFile(path, "special") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RefusedFile(path, "special", st)
        if one_name and st.st_nlink > 1:
            raise RefusedFile(path, "names", st)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_regular_file(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file (a database, a model card, weights); a FIFO, socket or device is refused.

    The file is opened non-blocking, so that a FIFO put where a file is expected cannot hang the
    command, then checked to be a regular file before it is read.

    Raises
    ------
    OSError
        Unreadable, or not a regular file (``EINVAL``, with the reason in the message).
    """
    fd, _ = open_regular(path, follow_links=True)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def check_output_location(output: str | os.PathLike, inputs) -> None:
    """Refuse an output inside an evidence folder or beside an evidence file.

    Parameters
    ----------
    output : path-like
        A file or folder the command will write.
    inputs : iterable of path-like
        The files and folders given as evidence.

    Raises
    ------
    OutputInsideEvidence
        Naming both paths.
    """
    out = Path(output).resolve()
    for item in inputs:
        if not os.path.lexists(item):
            continue  # nothing there to protect: its reader says "no such file"
        p = Path(item).resolve()
        folder = p if p.is_dir() else p.parent
        if out == p or out.is_relative_to(folder):
            what = "folder" if p.is_dir() else "file's folder"
            raise OutputInsideEvidence(
                f"{output}: output would be written inside the evidence {what} {folder}; "
                "choose a path outside the evidence (evidence is read-only)"
            )


def clashing_stems(paths) -> frozenset[str]:
    """File names without suffix (case-folded) that more than one of ``paths`` has: :func:`output_stem` tells
    their outputs apart by the path, so that none overwrites another's."""
    counts = collections.Counter(Path(p).stem.casefold() for p in paths)
    return frozenset(stem for stem, n in counts.items() if n > 1)


def output_stem(path: str | os.PathLike, sha256: str, clashes: frozenset[str] = frozenset()) -> str:
    """``NAME-SHA8``, the stem of an input's outputs; ``NAME-SHA8-PPPPPP`` (six hex digits of the SHA-256 of its
    absolute path) when another input of the run has the same name (:func:`clashing_stems`): two files
    ``a/x.jpg`` and ``b/x.JPG`` with the same bytes would otherwise write one output, named by the last."""
    stem = Path(path).stem
    name = f"{stem}-{sha256[:8]}"
    if stem.casefold() in clashes:
        name += "-" + hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:6]
    return name


def writable_folder(folder: str | os.PathLike) -> None:
    """Create an output folder (and its parents) and check that a file can be written in it, before any work.

    Raises
    ------
    ValueError
        One line naming the folder: it exists and is not a folder, or it cannot be created or written.
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{folder}: exists and is not a folder; --out needs a folder (new or existing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".spn-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        why = exc.strerror or exc
        raise ValueError(f"{folder}: cannot write there ({why}); choose a writable output folder") from None


def writable_file(path: str | os.PathLike) -> None:
    """Check, before any work, that an output file can be written at ``path`` (its folder is created).

    Raises
    ------
    ValueError
        One line naming the path: it is a folder, or its folder cannot be created or written.
    """
    if Path(path).is_dir():
        raise ValueError(f"{path}: is a folder; give a file name")
    try:
        writable_folder(Path(path).parent)
    except ValueError:
        raise ValueError(f"{path}: its folder {Path(path).parent} cannot be written") from None


def check_apart(output: str | os.PathLike, inputs) -> None:
    """Refuse an output folder inside (or beside) the evidence, and evidence inside the output folder.

    For every command that writes a folder (cases, ``--out``). The second rule keeps a tool's own files from
    ever being read as evidence (e.g. evidence placed at ``CASE/artifacts``) and the outputs from being
    written among the evidence: ``--out`` naming the folder above an evidence folder wrote the residuals
    into the evidence tree.

    Raises
    ------
    OutputInsideEvidence
        Naming both paths.
    """
    inputs = list(inputs)
    check_output_location(output, inputs)
    out = Path(output).resolve()
    for item in inputs:
        p = Path(item).resolve()
        if p.is_relative_to(out):
            raise OutputInsideEvidence(
                f"{item}: evidence inside the output folder {output}; its outputs would be written among the "
                "evidence: choose an output folder that does not hold it"
            )
