"""``spn degrade``: re-compress images at chosen qualities (double compression for camera JPEGs)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

import typer

from ..degrade import CODECS, SUBSAMPLING, DegradeSettings, encode, output_name
from ..evidence import EvidenceError, load_image
from ..identify import gather_inputs
from ..provenance import (
    OutputInsideEvidence,
    atomic_write_bytes,
    atomic_write_json,
    check_output_location,
    tool_info,
    utc_now,
)
from ._app import State, app
from ._common import EXIT_SOME_FAILED, die, err, fail_line


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
        check_output_location(out, images)
    except (ValueError, OutputInsideEvidence) as exc:
        die(str(exc))
    manifest_path = out / "manifest.json"
    entries, failed = [], 0
    for path in gather_inputs(images):
        try:
            ev = load_image(path, max_pixels=State.max_pixels)
        except EvidenceError as exc:
            fail_line(exc.path, exc.reason)
            failed += 1
            continue
        for s in settings:
            data = encode(ev.pixels, s)
            name = output_name(path.stem, ev.sha256, s)
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
        err.print(f"{path}: {len(settings)} version(s) written")
    atomic_write_json(
        manifest_path,
        {
            "created_utc": utc_now(),
            "settings": [s.as_dict() for s in settings],
            "files": entries,
            "seed": None,
            **tool_info(),
        },
    )
    err.print(f"{len(entries)} file(s) written to {out}, {failed} input(s) failed; manifest {manifest_path}")
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)
