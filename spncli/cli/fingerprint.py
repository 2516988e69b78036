"""``spn fingerprint``: estimate a camera fingerprint and store it in the database."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..identify import RECOMMENDED_IMAGES, FingerprintRefused, build_fingerprint, walk_inputs
from ..leaks import Screener, screen_summary
from ..provenance import OutputInsideEvidence, check_output_location
from ..residual import ResidualParams
from ..store import FingerprintStore, StoreError, check_camera_id
from ._app import State, app
from ._common import (
    EXIT_SOME_FAILED, DeviceOption, crop_option, device_option, die, fail_line, finite, note, note_not_images, warn
)

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
    sigma: Annotated[
        float,
        typer.Option(
            help="Noise std of the wavelet denoiser (0..255 scale; finite, > 0).",
            callback=finite("--sigma", positive=True),
        ),
    ] = 5.0,
    allow_mixed: Annotated[
        bool, typer.Option(help="Accept images whose EXIF make, model or serial differ (refused by default).")
    ] = False,
    leak_threshold: Annotated[
        float,
        typer.Option(
            help="Leak screen: flag a stored camera whose fingerprint has a PCE above this with the new one (finite).",
            callback=finite("--leak-threshold"),
        ),
    ] = 60.0,
    leak_screen: Annotated[
        str,
        typer.Option(
            help="signs: exact PCE for the stored cameras whose sign agreement with the new fingerprint is z >= 2, "
            "the 8 best and any without a pre-screen record, z recorded for the rest (cost nearly flat in the "
            "database's size); exact: the PCE against every stored camera.",
        ),
    ] = "signs",
    device: DeviceOption = "auto",
):
    """Estimate the maximum-likelihood PRNU fingerprint of a camera and add it to the database.

    Images are read one at a time (memory stays a few image-sized arrays);
    saturated pixels are excluded. Refused, with nothing stored: images of
    different sizes, images whose EXIF make/model/serial differ (unless
    --allow-mixed), fewer than 2 usable images; fewer than 10 give a warning.
    An existing camera id is refused before any image is read (unless
    --replace). The database records the camera's EXIF make/model/serial,
    each source file's name and SHA-256, the geometry (frame, crop and its
    origin), quality statistics, parameters, tool version and UTC time, all
    under a checksum verified whenever the fingerprint is read.

    Leak screen: the new fingerprint's PCE against every stored one (with
    --leak-screen signs, the default, only where the pre-screen's sign agreement
    does not rule a leak out) and its periodic spectral peaks are sealed into its record; a pair above
    --leak-threshold, or a periodic artifact, gives a warning line here and a
    warning on every later match against either camera (spn db leaks lists them).
    """
    size = crop_option(crop)
    if leak_screen not in ("signs", "exact"):
        die(f"--leak-screen: {leak_screen!r} is not a screen (allowed: signs, exact)")
    device_option(device)
    store = FingerprintStore(db)
    try:
        check_camera_id(camera)
        params = ResidualParams(sigma=sigma)
        check_output_location(db, images)
        if db.exists() and camera in store.cameras() and not replace:
            raise StoreError(f"{db}: camera {camera!r} exists already (use --replace to overwrite it)")
    except (ValueError, StoreError, OutputInsideEvidence) as exc:
        die(str(exc))
    failed, others = [], []

    def on_error(path, reason):
        failed.append(path)
        fail_line(path, reason)

    try:
        k, meta = build_fingerprint(
            (path for path, _reason in walk_inputs(images, on_other=others.append)),
            camera,
            params=params,
            crop=size,
            max_pixels=State.max_pixels,
            max_bytes=State.max_bytes,
            allow_mixed=allow_mixed,
            on_error=on_error,
            on_progress=lambda p: note(f"added {p}"),
            on_warning=warn,
            device=device,
        )
        screen = Screener(store, camera, k, threshold=leak_threshold, sources=[s["sha256"] for s in meta["sources"]],
                          exact=leak_screen == "exact")  # fmt: skip
        digest = store.add(camera, k, meta, replace=replace, screen=screen)
    except (FingerprintRefused, StoreError) as exc:
        die(str(exc), EXIT_SOME_FAILED)
    except Exception as exc:  # a defect, not bad evidence: say so, without a traceback
        die(f"internal error (please report): {type(exc).__name__}: {exc}; nothing stored", EXIT_SOME_FAILED)
    note_not_images(others)
    note(
        f"camera {camera}: fingerprint of {meta['image_count']} image(s), {meta['cols']}x{meta['rows']} (cols x rows), "
        f"sha256 {digest[:16]}..., stored in {db}; {len(failed)} file(s) failed"
        + ("" if meta["image_count"] >= RECOMMENDED_IMAGES else f" (fewer than {RECOMMENDED_IMAGES} images)")
    )
    summary, warnings = screen_summary(camera, screen.result)
    note(summary)
    for line in warnings:
        warn(line)
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)
