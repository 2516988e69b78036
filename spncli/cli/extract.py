"""``spn extract``: noise residuals saved as float32 with their provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..jobs import ExtractJob
from ..jpegdomain import RESIDUAL_KINDS
from ..provenance import OutputInsideEvidence, check_apart, clashing_stems, writable_folder
from ..residual import ResidualParams
from ._app import State, app
from ._batch import SchedulerOption, WorkersOption, run_jobs
from ._common import EXIT_SOME_FAILED, DeviceOption, crop_option, device_option, die, err, image_paths


ResidualOption = Annotated[
    str,
    typer.Option(
        "--residual",
        help="classic, or compression-aware: the residual restricted to the DCT coefficients that survived the "
        "JPEG's quantization, on its own 8x8 grid (non-JPEG inputs fall back to classic; outputs say which).",
    ),
]


def check_residual_kind(kind: str) -> str:
    """The kind, or a one-line error naming the allowed values."""
    if kind not in RESIDUAL_KINDS:
        die(f"--residual {kind!r}: allowed values are {', '.join(RESIDUAL_KINDS)}")
    return kind


@app.command()
def extract(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (walked recursively).", readable=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (outside the evidence).")],
    crop: Annotated[str | None, typer.Option(help="Centre crop before extraction: N or HxW (rows x cols).")] = None,
    preview: Annotated[bool, typer.Option(help="Also write an 8-bit PNG preview of each residual.")] = False,
    sigma: Annotated[float, typer.Option(help="Noise std of the wavelet denoiser (0..255 scale).")] = 5.0,
    residual: ResidualOption = "classic",
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
):
    """Extract the Lukáš-Fridrich-Goljan noise residual of each image.

    Writes NAME-SHA8.residual.npy (float32, rows x cols) and NAME-SHA8.residual.json
    (input SHA-256, parameters, residual_kind, device and backend, tool version, time) per image; with
    --residual compression-aware the stem ends .ca-residual.
    """
    size = crop_option(crop)
    kind = check_residual_kind(residual)
    device_option(device, here=not scheduler)  # local workers (--workers) run on this machine
    try:
        params = ResidualParams(sigma=sigma)
        check_apart(out, images)
        paths = image_paths(images)  # before the output folder is made: inputs without an image leave nothing
        writable_folder(out)
    except (ValueError, OutputInsideEvidence) as exc:
        die(str(exc))
    job = ExtractJob(out.absolute(), params, size, preview, State.max_pixels, kind=kind, device=device,
                     clashes=clashing_stems(paths))  # fmt: skip
    done, failed = run_jobs(paths, job, workers=workers, scheduler=scheduler, label="extract", gpu=device == "cuda")
    err.print(f"{done} residual(s) written to {out}, {failed} failed")
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)
