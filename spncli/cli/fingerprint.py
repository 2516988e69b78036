"""``spn fingerprint``: estimate a camera fingerprint and store it in the database."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..identify import build_fingerprint, gather_inputs
from ..provenance import OutputInsideEvidence, check_output_location
from ..residual import ResidualParams
from ..store import FingerprintStore, StoreError, check_camera_id
from . import State, app
from ._common import EXIT_SOME_FAILED, crop_option, die, err, fail_line


@app.command()
def fingerprint(
    images: Annotated[
        list[Path],
        typer.Argument(help="Images of one camera, or folders of them (flat-fields are best).", readable=False),
    ],
    camera: Annotated[str, typer.Option("--camera", "-c", help="Camera id: letters, digits, '.', '_', '-'.")],
    db: Annotated[Path, typer.Option("--db", help="HDF5 fingerprint database (created if absent).")],
    crop: Annotated[str | None, typer.Option(help="Centre crop of every image: N or HxW (rows x cols).")] = None,
    replace: Annotated[bool, typer.Option(help="Overwrite an existing camera of that id.")] = False,
    sigma: Annotated[float, typer.Option(help="Noise std of the wavelet denoiser (0..255 scale).")] = 5.0,
):
    """Estimate the maximum-likelihood PRNU fingerprint of a camera and add it to the database.

    Images are read one at a time (memory stays a few image-sized arrays);
    saturated pixels are excluded. The database records the camera's EXIF
    make/model/serial, each source file's name and SHA-256, quality
    statistics, parameters, tool version and UTC time.
    """
    size = crop_option(crop)
    try:
        check_camera_id(camera)
        params = ResidualParams(sigma=sigma)
        check_output_location(db, images)
    except (ValueError, StoreError, OutputInsideEvidence) as exc:
        die(str(exc))
    failed = []

    def on_error(path, reason):
        failed.append(path)
        fail_line(path, reason)

    try:
        k, meta = build_fingerprint(
            gather_inputs(images),
            camera,
            params=params,
            crop=size,
            max_pixels=State.max_pixels,
            on_error=on_error,
            on_progress=lambda p: err.print(f"added {p}"),
        )
        digest = FingerprintStore(db).add(camera, k, meta, replace=replace)
    except (ValueError, StoreError) as exc:
        die(str(exc), EXIT_SOME_FAILED)
    err.print(
        f"camera {camera}: fingerprint of {meta['image_count']} image(s), {meta['cols']}x{meta['rows']}, "
        f"sha256 {digest[:16]}..., stored in {db}; {len(failed)} file(s) failed"
    )
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)
