"""``spn report``: a self-contained HTML (and optional PDF) report of a case."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from ..casefile import Case
from ..provenance import atomic_write_bytes
from ..report import build_report
from . import app
from ._common import die, err

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


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="Case folder made by spn match --case.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="HTML file [default: CASE/report.html].")] = None,
    pdf: Annotated[
        bool, typer.Option(help="Also print a PDF with the system's Chromium (none is downloaded).")
    ] = False,
):
    """Write a self-contained HTML report: case summary, images consistent with each camera with their
    correlation surfaces and residual previews, PCE against the threshold, and the limitations."""
    if not (folder / "results.jsonl").exists():
        die(f"{folder}: not a case folder (no results.jsonl); run spn match ... --case {folder} first")
    target = out or folder / "report.html"
    page = build_report(folder).encode()
    atomic_write_bytes(target, page)
    Case(folder).audit("report", html=str(target))
    err.print(f"report written to {target}")
    if pdf:
        chromium = find_chromium()
        if chromium is None:
            die("--pdf needs a system Chromium (e.g. Debian's 'chromium' package); the HTML report was written")
        pdf_path = target.with_suffix(".pdf")
        with tempfile.TemporaryDirectory() as profile:
            tmp_pdf = Path(profile) / "report.pdf"
            subprocess.run(
                [
                    chromium,
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={profile}",
                    f"--print-to-pdf={tmp_pdf}",
                    "--no-pdf-header-footer",
                    target.resolve().as_uri(),
                ],
                check=False,
                capture_output=True,
                timeout=120,
            )
            if not tmp_pdf.exists():
                die("Chromium did not produce the PDF; the HTML report was written")
            atomic_write_bytes(pdf_path, tmp_pdf.read_bytes())
        err.print(f"PDF written to {pdf_path}")
