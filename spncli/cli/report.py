"""``spn report``: a self-contained HTML (and optional PDF) report of a case."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from ..casefile import CASE_FILES, Case, CaseError
from ..provenance import OutputInsideEvidence, atomic_write_bytes, check_output_location
from ..report import build_report, check_fingerprints, pool_database_warnings
from ._app import app
from ._common import EXIT_SOME_FAILED, die, err, fail_line, warn


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _check_target(folder: Path, target: Path, evidence: list[str]) -> None:
    """The report goes outside the evidence, and inside the case only as a new top-level .html file."""
    try:
        check_output_location(target, evidence)
    except OutputInsideEvidence as exc:
        die(str(exc))
    if target.resolve().parent == folder.resolve():
        if target.suffix != ".html" or target.name in CASE_FILES:
            die(f"{target}: not a report name inside the case (an .html name other than the case's own files)")
    elif target.resolve().is_relative_to(folder.resolve()):
        die(f"{target}: inside the case's own folders; write the report at the case's top level or outside it")


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="Case folder made by spn match --case.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="HTML file [default: CASE/report.html].")] = None,
    pdf: Annotated[
        bool, typer.Option(help="Also print a PDF with the system's Chromium (none is downloaded).")
    ] = False,
    allow_unverified: Annotated[
        bool,
        typer.Option(help="Write the report of a case that does not verify, marked NOT VERIFIED at the top."),
    ] = False,
    head: Annotated[
        str | None,
        typer.Option(help="The audit chain head noted at the end of the run: the case must still contain it."),
    ] = None,
):
    """Write a self-contained HTML report: case summary, images consistent with each camera with their
    correlation surfaces and residual previews, PCE against the threshold, and the limitations.

    The case is verified first (spn case verify); a case that does not verify gets no report unless
    --allow-unverified, which marks it NOT VERIFIED."""
    case = Case(folder)
    if not any((folder / name).exists() for name in ("results.jsonl", "cluster", "pool")):
        die(f"{folder}: not a case folder (no results.jsonl, cluster/ or pool/); run spn match ... --case {folder}, "
            f"spn cluster ... --case {folder} or spn match --pool ... --case {folder} first")
    target = out or folder / "report.html"
    try:
        with case.lock():
            v = case.verify(head=head, locked_by_us=True)
            if v.problems:
                for p in v.problems:
                    fail_line(str(folder), p)
                if not allow_unverified:
                    die(f"{folder}: the case does not verify; no report written (--allow-unverified writes one "
                        "marked NOT VERIFIED)", EXIT_SOME_FAILED)  # fmt: skip
                err.print("warning: the report is marked NOT VERIFIED")
            given = [p for e in case.audit_entries()[0] if str(e.get("event", "")).endswith("-start")
                     and isinstance(e.get("evidence"), list) for p in e["evidence"] if isinstance(p, str)]  # fmt: skip
            _check_target(folder, target, (case.read_manifest() or {}).get("evidence", []) + given)
            fingerprints = check_fingerprints(case.read_manifest() or {}, case.rows())
            for line in fingerprints.warnings() + pool_database_warnings(case):  # the report says so too
                warn(line)
            page = build_report(folder, problems=v.problems, head=v.head, fingerprints=fingerprints).encode()
            atomic_write_bytes(target, page)
            written = {target: page}
            err.print(f"report written to {target}")
            if pdf:
                pdf_path = target.with_suffix(".pdf")
                written[pdf_path] = _print_pdf(target)
                atomic_write_bytes(pdf_path, written[pdf_path])
                err.print(f"PDF written to {pdf_path}")
            inside = {p.resolve().relative_to(folder.resolve()).as_posix(): data for p, data in written.items()
                      if p.resolve().parent == folder.resolve()}  # fmt: skip
            case.audit(
                "report",
                html=str(target),
                verified=not v.problems,
                problems=v.problems,
                report_files={r: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for r, d in inside.items()},
            )
    except CaseError as exc:
        die(str(exc), EXIT_SOME_FAILED)


def _print_pdf(html: Path) -> bytes:
    chromium = find_chromium()
    if chromium is None:
        die("--pdf needs a system Chromium (e.g. Debian's 'chromium' package); the HTML report was written")
    with tempfile.TemporaryDirectory() as profile:
        tmp_pdf = Path(profile) / "report.pdf"
        subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--print-to-pdf={tmp_pdf}",
                "--no-pdf-header-footer",
                html.resolve().as_uri(),
            ],
            check=False,
            capture_output=True,
            timeout=120,
        )
        if not tmp_pdf.exists():
            die("Chromium did not produce the PDF; the HTML report was written")
        return tmp_pdf.read_bytes()
