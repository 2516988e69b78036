"""``spn degrade``: re-compress images at chosen qualities (double compression for camera JPEGs)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Annotated

import typer

from ..degrade import CODECS, SUBSAMPLING, DegradeSettings, encode, output_name
from ..evidence import EvidenceError, load_image
from ..provenance import (
    OutputInsideEvidence,
    RefusedFile,
    atomic_write_bytes,
    atomic_write_json,
    check_apart,
    clashing_stems,
    open_regular,
    output_stem,
    tool_info,
    utc_now,
    writable_folder,
)
from ._app import State, app
from ._common import EXIT_SOME_FAILED, die, err, fail_line, image_paths, note


def previous_manifest(path: Path) -> dict | None:
    """The manifest a previous ``spn degrade`` left in the output folder (its files are kept in the new one).

    Raises
    ------
    ValueError
        One line, when a manifest.json there is not a degrade manifest (nothing is written over it).
    """
    if not path.exists() and not path.is_symlink():
        return None
    try:
        doc = json.loads(path.read_bytes()) if path.is_file() and not path.is_symlink() else None
    except (OSError, ValueError):
        doc = None
    if not (isinstance(doc, dict) and isinstance(doc.get("files"), list)):
        raise ValueError(f"{path}: exists and is not a manifest of spn degrade; choose another --out")
    return doc


JOURNAL = ".manifest-journal.jsonl"
"""Entries appended after each image (fsync'd); merged into manifest.json at the end, then removed. A killed
run's journal is merged by the next run into the same folder."""


LOCK = ".degrade.lock"
"""Held (``flock``) by the one ``spn degrade`` writing an output folder: two runs into one folder would each
write the manifest from their own entries, and one run's record would be lost."""


@contextlib.contextmanager
def folder_lock(out: Path):
    """Hold the output folder's lock for the run; one line (exit 2) when another run holds it."""
    import fcntl

    try:
        fd, _ = open_regular(out / LOCK, os.O_RDWR | os.O_CREAT, one_name=True)
    except (RefusedFile, OSError) as exc:
        die(f"{out / LOCK}: cannot open the folder's lock ({exc.strerror}); choose another --out")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            die(f"{out}: another spn degrade is writing this folder; wait for it or choose another --out")
        yield
    finally:
        os.close(fd)


def append_journal(path: Path, entries: list[dict]) -> None:
    """Append entries to the journal, fsync'd, through :func:`spncli.provenance.open_regular` (never a link)."""
    fd, _ = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, one_name=True)
    with os.fdopen(fd, "a", encoding="utf-8") as log:
        log.write("".join(json.dumps(e) + "\n" for e in entries))
        log.flush()
        os.fsync(log.fileno())


def journal_entries(path: Path) -> list[dict]:
    """The whole lines of a journal a killed ``spn degrade`` left (none when absent).

    Raises
    ------
    ValueError
        One line, when the journal is a link, a special file or a file with other names (it is never
        followed, read or appended to).
    """
    try:
        fd, _ = open_regular(path, one_name=True)
    except FileNotFoundError:
        return []
    except RefusedFile as exc:
        raise ValueError(f"{path}: {exc.strerror}, not a journal of spn degrade; choose another --out") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    lines = data[: data.rfind(b"\n") + 1].decode("utf-8", "replace").splitlines()
    out = []
    for line in lines:
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and isinstance(entry.get("output"), str):
                out.append(entry)
    return out


@app.command()
def degrade(
    images: Annotated[list[Path], typer.Argument(help="Images or folders (walked recursively).", readable=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (outside the evidence).")],
    quality: Annotated[
        list[int] | None,
        typer.Option(
            "--quality", "-q", help="Qualities 1-100: --quality 90 70 50 30 (or repeat -q) [default: 90 70 50 30]."
        ),
    ] = None,
    codec: Annotated[str, typer.Option(help=f"One of: {', '.join(CODECS)}.")] = "jpeg",
    subsampling: Annotated[
        str, typer.Option(help=f"JPEG chroma subsampling, one of: {', '.join(SUBSAMPLING)}.")
    ] = "420",
):
    """Re-compress each image at every quality; names carry the settings; a manifest records them.

    Camera JPEGs become doubly compressed, as after a messaging app. Writes
    OUT/NAME-SHA8.qQ.SUB.jpg (or .webp) and OUT/manifest.json with the source
    SHA-256, settings and output SHA-256 of every file.
    """
    try:
        settings = [DegradeSettings(q, codec, subsampling) for q in (quality or [90, 70, 50, 30])]
        check_apart(out, images)
        paths = image_paths(images, absolute=False)  # before the output folder is made
        writable_folder(out)
    except (ValueError, OutputInsideEvidence) as exc:
        die(str(exc))
    with folder_lock(out):
        _degrade(paths, out, settings)


def _degrade(paths, out: Path, settings: list[DegradeSettings]) -> None:
    """The run itself, under the folder's lock."""
    manifest_path = out / "manifest.json"
    try:
        earlier = previous_manifest(manifest_path)
    except ValueError as exc:
        die(str(exc))
    journal = out / JOURNAL
    try:
        entries, failed = journal_entries(journal), 0  # a killed run's files: kept
    except ValueError as exc:
        die(str(exc))
    merged = len(entries)
    clashes = clashing_stems(paths)
    started = utc_now()

    def write_manifest() -> None:
        latest = {e["output"]: e for e in entries}  # a file written again (a killed run's, rerun): its last entry
        run = {"started_utc": started, **tool_info(), **({"killed_run_entries_merged": merged} if merged else {})}
        atomic_write_json(manifest_path, {
            "created_utc": earlier.get("created_utc", started) if earlier else started,
            "updated_utc": utc_now(),
            "settings": [s.as_dict() for s in settings],
            "runs": [*(earlier or {}).get("runs", []), run],
            "files": [e for e in (earlier or {}).get("files", []) if e.get("output") not in latest]
            + list(latest.values()),
            "seed": None,
            **tool_info(),
        })  # fmt: skip

    for path in paths:
        try:
            ev = load_image(path, max_pixels=State.max_pixels)
        except EvidenceError as exc:
            fail_line(exc.path, exc.reason)
            failed += 1
            continue
        for s in settings:
            data = encode(ev.pixels, s)
            name = output_name(output_stem(path, ev.sha256, clashes), s)
            atomic_write_bytes(out / name, data)
            entries.append(
                {
                    "output": name,
                    "output_sha256": hashlib.sha256(data).hexdigest(),
                    "source": str(path),
                    "source_sha256": ev.sha256,
                    "source_jpeg_quality": ev.quality.quality if ev.quality else None,
                    **s.as_dict(),
                }
            )
        try:  # a kill leaves every written file in the journal
            append_journal(journal, entries[-len(settings):])
        except OSError as exc:
            die(f"{journal}: cannot append to the journal ({exc.strerror}); the files written so far are kept")
        note(f"{path}: {len(settings)} version(s) written")
    write_manifest()
    journal.unlink(missing_ok=True)
    written = len({e["output"] for e in entries[merged:]})
    err.print(f"{written} file(s) written to {out}, {failed} input(s) failed; manifest {manifest_path}")
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)
