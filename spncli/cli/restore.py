"""``spn restore``: restored sensor noise of compressed images, saved with provenance."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ..jobs import RestoreJob
from ..provenance import (
    OutputInsideEvidence,
    check_apart,
    clashing_stems,
    writable_folder,
)
from ..residual import ResidualParams
from ._app import State, app
from ._batch import SchedulerOption, WorkersOption, run_jobs
from ._common import EXIT_SOME_FAILED, crop_option, die, err, image_paths

ModelOption = Annotated[
    Path | None, typer.Option("--model", help="Model card (JSON) of the weights [default: shipped].")
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
PrecisionOption = Annotated[str, typer.Option(help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16.")]
def _tile(value: int) -> int:
    from ..restoration import check_tile

    try:
        return check_tile(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


TileOption = Annotated[
    int,
    typer.Option(callback=_tile, help="Core tile side in pixels, a multiple of 16, >= 64 (memory is bounded by it)."),
]


def default_out() -> Path:
    """A fresh folder under ~/spn-results (never beside the evidence)."""
    return Path.home() / "spn-results" / time.strftime("restore-%Y%m%dT%H%M%SZ", time.gmtime())


def open_restorer(model: Path | None, device: str):
    """Load the restorer or exit with one line."""
    from ..restoration import DEFAULT_MODEL, ModelError, load_restorer

    try:
        return load_restorer(model or DEFAULT_MODEL, device)
    except ModelError as exc:
        die(str(exc))


@app.command()
def restore(
    images: Annotated[list[Path], typer.Argument(help="Images or folders (walked recursively).", readable=False)],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder [default: ~/spn-results/restore-UTC].")
    ] = None,
    model: ModelOption = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    tile: TileOption = 1024,
    quality: Annotated[int | None, typer.Option(min=1, max=100, help="Quality for files without JPEG tables.")] = None,
    crop: Annotated[str | None, typer.Option(help="Centre crop before restoration: N or HxW.")] = None,
    preview: Annotated[bool, typer.Option(help="Also write an 8-bit PNG preview.")] = False,
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
):
    """Restore the sensor noise of each image with the quality-conditioned restoration network.

    The compression level is read from the file's quantization tables (or --quality). Writes
    NAME-SHA8.restored.npy (float32) and NAME-SHA8.restored.json (input SHA-256, model and
    weights SHA-256, quality used, post-processing, tile, precision, tool version, time).
    """
    size = crop_option(crop)
    out = out or default_out()
    try:
        check_apart(out, images)
        paths = image_paths(images)  # before the output folder is made: inputs without an image leave nothing
        writable_folder(out)
    except (OutputInsideEvidence, ValueError) as exc:
        die(str(exc))
    restorer = open_restorer(model, device)
    job = RestoreJob(
        out.absolute(), restorer, ResidualParams(), size, preview, tile, precision, quality, State.max_pixels,
        clashes=clashing_stems(paths),
    )
    done, failed = run_jobs(paths, job, workers=workers, scheduler=scheduler, label="restore", gpu=True)
    err.print(f"{done} restored residual(s) written to {out}, {failed} failed")
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)
