"""``spn quality``: IJG-equivalent JPEG quality from the quantization tables."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

import typer

from ..evidence import EvidenceError, read_bytes
from ..identify import gather_inputs
from ..jpegtables import JpegFormatError, estimate_quality, parse_jpeg
from ._app import State, app
from ._common import EXIT_SOME_FAILED, Format, fail_line, render, warn

COLUMNS = ["image", "quality", "exact", "fit_error", "tables", "components", "progressive", "sha256"]


@app.command()
def quality(
    images: Annotated[list[Path], typer.Argument(help="JPEG files, or folders of them.", readable=False)],
    format: Annotated[
        Format, typer.Option("--format", "-f", help="Output: table, json (JSON Lines) or csv.")
    ] = Format.table,
):
    """Report the IJG-equivalent quality of each JPEG from its main image's quantization tables.

    Tables inside APPn segments (such as the EXIF thumbnail's) are skipped;
    "exact" says whether the tables equal libjpeg's at that quality; camera
    tables are reported as approximate with their fit error (mean absolute
    difference in quantization steps).
    """
    rows, failed = [], 0
    for path in gather_inputs(images):
        try:
            data = read_bytes(path, max_bytes=State.max_bytes)
            if not data:
                raise EvidenceError(path, "empty file (0 bytes)")
            s = parse_jpeg(data)
            q = estimate_quality(s)
        except EvidenceError as exc:
            fail_line(exc.path, exc.reason)
            failed += 1
            continue
        except JpegFormatError as exc:
            fail_line(str(path), str(exc))
            failed += 1
            continue
        if not s.has_eoi:
            warn(f"{path}: no end-of-image marker after the scan data (truncated?); its tables were read")
        rows.append(
            {
                "image": str(path),
                "quality": q.quality,
                "exact": q.exact,
                "fit_error": round(q.fit_error, 4),
                "tables": " ".join(f"{tid}:{s.precision[tid]}bit:q{qq}" for tid, qq in sorted(q.per_table.items())),
                "components": len(s.components),
                "progressive": s.progressive,
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    render(rows, format, COLUMNS, title="JPEG quality (IJG-equivalent)")
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)
