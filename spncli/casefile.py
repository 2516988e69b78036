"""The case directory: results, errors, manifest and a hash-chained audit trail.

Layout of a case directory (never inside the evidence)::

    results.jsonl   one row per image x camera, appended image by image (fsync'd)
    results.csv     the same rows, sorted, regenerated at the end of every run
    errors.jsonl    one row per file that could not be analysed (file, reason)
    manifest.json   every input with its SHA-256, tool version, parameters,
                    database checksum, runs with start/end UTC
    audit.jsonl     append-only; each entry carries the SHA-256 of the previous
    artifacts/      per matched image: residual preview and correlation surfaces

A run killed at any moment leaves every complete row; a partial last line is
dropped when the case is resumed. A resumed run skips the images already done
(by SHA-256) and ends with the same ``results.csv`` as an uninterrupted run:
rows hold no timing, and the CSV is sorted.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from .evidence import sha256_file
from .provenance import atomic_write_bytes, atomic_write_json, tool_info, utc_now

__all__ = ["CSV_COLUMNS", "Case"]

CSV_COLUMNS = [
    "image", "sha256", "size_bytes", "jpeg_quality", "camera", "pce", "ncc", "decision", "threshold",
    "rotation", "restored", "peak_row", "peak_col", "n_shifts", "p_fa", "rows", "cols", "fingerprint_sha256",
]  # fmt: skip
GENESIS = "0" * 64


def _entry_hash(entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _append_lines(path: Path, lines: list[str]) -> None:
    """Append whole lines in one write, then fsync: a kill leaves at most a partial last line."""
    data = "".join(line + "\n" for line in lines).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_jsonl(path: Path, repair: bool = False) -> list[dict]:
    """Rows of a JSON Lines file; a partial last line (from a kill) is dropped (and cut off if ``repair``)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if repair and end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    return [json.loads(line) for line in data[:end].decode().splitlines() if line.strip()]


class Case:
    """A case directory.

    Parameters
    ----------
    root : Path
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.results = self.root / "results.jsonl"
        self.errors = self.root / "errors.jsonl"
        self.csv = self.root / "results.csv"
        self.manifest = self.root / "manifest.json"
        self.audit_log = self.root / "audit.jsonl"
        self.artifacts = self.root / "artifacts"

    # -- results ----------------------------------------------------------
    def done(self, n_cameras: int) -> dict[str, list[dict]]:
        """Images already fully scored, by SHA-256 (rows of incomplete images are removed)."""
        rows = _read_jsonl(self.results, repair=True)
        by_sha: dict[str, list[dict]] = {}
        for r in rows:
            by_sha.setdefault(r["sha256"], []).append(r)
        complete = {sha: rs for sha, rs in by_sha.items() if len({r["camera"] for r in rs}) >= n_cameras}
        if len(complete) != len(by_sha):  # a kill between two rows of one image: drop that image's rows
            keep = [json.dumps(r, ensure_ascii=False) for r in rows if r["sha256"] in complete]
            atomic_write_bytes(self.results, "".join(line + "\n" for line in keep).encode())
        return complete

    def add_results(self, rows: list[dict]) -> None:
        """Append the rows of one image."""
        _append_lines(self.results, [json.dumps(r, ensure_ascii=False) for r in rows])

    def add_error(self, path: str, reason: str) -> None:
        _append_lines(self.errors, [json.dumps({"file": path, "reason": reason}, ensure_ascii=False)])

    def reset_errors(self) -> None:
        """Errors are re-tried by a resumed run: start its error list afresh."""
        self.errors.unlink(missing_ok=True)

    def rows(self) -> list[dict]:
        return _read_jsonl(self.results)

    def error_rows(self) -> list[dict]:
        return _read_jsonl(self.errors)

    def write_csv(self) -> None:
        """results.csv from results.jsonl, sorted by image then camera; errors sorted too."""
        rows = sorted(self.rows(), key=lambda r: (r["image"], r["camera"]))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({c: "" if r.get(c) is None else r.get(c) for c in CSV_COLUMNS})
        atomic_write_bytes(self.csv, buf.getvalue().encode())
        errors = sorted(self.error_rows(), key=lambda e: e["file"])
        if errors:
            atomic_write_bytes(self.errors, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors).encode())

    # -- artifacts for the report -----------------------------------------
    def artifact_dir(self, sha256: str) -> Path:
        return self.artifacts / sha256[:16]

    def save_artifacts(self, sha256: str, preview_png: bytes | None, surfaces: dict[str, np.ndarray]) -> None:
        folder = self.artifact_dir(sha256)
        if preview_png is not None:
            atomic_write_bytes(folder / "residual.png", preview_png)
        for camera, surface in surfaces.items():
            buf = io.BytesIO()
            np.save(buf, surface.astype(np.float32), allow_pickle=False)
            atomic_write_bytes(folder / f"surface-{camera}.npy", buf.getvalue())

    # -- manifest and audit -------------------------------------------------
    def write_manifest(
        self,
        *,
        parameters: dict,
        db: str,
        db_sha256: str,
        runs: list[dict],
        case_id: str | None,
        examiner: str | None,
        inputs_given: list[str],
    ) -> None:
        """Every input with its SHA-256 (scored) or its error, with versions, parameters and runs."""
        inputs: dict[str, dict] = {}
        for r in self.rows():
            inputs.setdefault(
                r["image"],
                {"path": r["image"], "sha256": r["sha256"], "size_bytes": r.get("size_bytes"), "status": "scored"},
            )
        for e in self.error_rows():
            inputs.setdefault(e["file"], {"path": e["file"], "sha256": None, "status": "error", "reason": e["reason"]})
        atomic_write_json(
            self.manifest,
            {
                "case_id": case_id,
                "examiner": examiner,
                "evidence": inputs_given,
                "database": db,
                "database_sha256": db_sha256,
                "parameters": parameters,
                "runs": runs,
                "inputs": sorted(inputs.values(), key=lambda i: i["path"]),
                **tool_info(),
            },
        )

    def read_manifest(self) -> dict | None:
        return json.loads(self.manifest.read_text()) if self.manifest.exists() else None

    def audit(self, event: str, **fields) -> dict:
        """Append an audit entry chained to the previous one by its SHA-256."""
        entries = _read_jsonl(self.audit_log, repair=True)
        entry = {
            "seq": len(entries),
            "utc": utc_now(),
            "event": event,
            **tool_info(),
            **fields,
            "prev_hash": entries[-1]["hash"] if entries else GENESIS,
        }
        entry["hash"] = _entry_hash(entry)
        _append_lines(self.audit_log, [json.dumps(entry, ensure_ascii=False, sort_keys=True)])
        return entry

    def verify(self) -> list[str]:
        """Re-hash the inputs and the audit chain; return the problems found (empty: intact)."""
        problems = []
        entries = _read_jsonl(self.audit_log)
        prev = GENESIS
        for i, e in enumerate(entries):
            if e.get("prev_hash") != prev:
                problems.append(f"audit entry {i}: chain broken (prev_hash does not match entry {i - 1})")
            if _entry_hash(e) != e.get("hash"):
                problems.append(f"audit entry {i}: altered (its hash does not match its content)")
            prev = e.get("hash")
        if not entries:
            problems.append("audit.jsonl: missing or empty")
        manifest = self.read_manifest()
        if manifest is None:
            return problems + ["manifest.json: missing"]
        for item in manifest["inputs"]:
            if item.get("sha256") is None:
                continue
            path = Path(item["path"])
            if not path.exists():
                problems.append(f"{path}: missing (recorded SHA-256 {item['sha256'][:16]}...)")
                continue
            try:
                digest = sha256_file(path)
            except OSError as exc:
                problems.append(f"{path}: cannot read ({exc.strerror or exc})")
                continue
            if digest != item["sha256"]:
                problems.append(f"{path}: changed (SHA-256 {digest[:16]}... recorded {item['sha256'][:16]}...)")
        last_end = next((e for e in reversed(entries) if e.get("event") == "match-end"), None)
        if last_end and last_end.get("results_csv_sha256") and self.csv.exists():
            if sha256_file(self.csv) != last_end["results_csv_sha256"]:
                problems.append("results.csv: changed since the last run recorded it in the audit trail")
        return problems
