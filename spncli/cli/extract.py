"""``spn extract``: noise residuals saved as float32 with their provenance."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ..evidence import EvidenceError, load_image
from ..identify import gather_inputs, residual_of
from ..plots import preview_png
from ..provenance import (
    OutputInsideEvidence,
    atomic_write_bytes,
    atomic_write_json,
    check_output_location,
    tool_info,
    utc_now,
)
from ..residual import ResidualParams
from . import State, app
from ._common import EXIT_SOME_FAILED, crop_option, die, err, fail_line


@app.command()
def extract(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (walked recursively).", readable=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (outside the evidence).")],
    crop: Annotated[str | None, typer.Option(help="Centre crop before extraction: N or HxW (rows x cols).")] = None,
    preview: Annotated[bool, typer.Option(help="Also write an 8-bit PNG preview of each residual.")] = False,
    sigma: Annotated[float, typer.Option(help="Noise std of the wavelet denoiser (0..255 scale).")] = 5.0,
):
    """Extract the Lukáš-Fridrich-Goljan noise residual of each image.

    Writes NAME-SHA8.residual.npy (float32, rows x cols) and NAME-SHA8.residual.json
    (input SHA-256, parameters, tool version, time) per image.
    """
    size = crop_option(crop)
    try:
        params = ResidualParams(sigma=sigma)
        check_output_location(out, images)
    except (ValueError, OutputInsideEvidence) as exc:
        die(str(exc))
    failed = done = 0
    for path in gather_inputs(images):
        try:
            ev = load_image(path, max_pixels=State.max_pixels)
            w = residual_of(ev, params, size)
        except EvidenceError as exc:
            fail_line(exc.path, exc.reason)
            failed += 1
            continue
        stem = f"{path.stem}-{ev.sha256[:8]}.residual"
        buf = io.BytesIO()
        np.save(buf, w, allow_pickle=False)
        npy = buf.getvalue()
        atomic_write_bytes(out / f"{stem}.npy", npy)
        files = {"residual": f"{stem}.npy"}
        if preview:
            atomic_write_bytes(out / f"{stem}.png", preview_png(w))
            files["preview"] = f"{stem}.png"

        atomic_write_json(
            out / f"{stem}.json",
            {
                "input": ev.provenance(),
                "files": files,
                "residual_sha256": hashlib.sha256(npy).hexdigest(),
                "residual_dtype": "float32",
                "residual_shape": list(w.shape),
                "residual_std": float(w.std()),
                "crop": list(size) if size else None,
                "params": params.as_dict(),
                "seed": None,
                "created_utc": utc_now(),
                **tool_info(),
            },
        )
        done += 1
        err.print(f"{path} -> {out / (stem + '.npy')}")
    err.print(f"{done} residual(s) written to {out}, {failed} failed")
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)
