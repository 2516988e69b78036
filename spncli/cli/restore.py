"""``spn restore``: restored sensor noise of compressed images, saved with provenance."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ..evidence import EvidenceError, load_image
from ..geometry import centre_crop
from ..identify import gather_inputs
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

ModelOption = Annotated[
    Path | None, typer.Option("--model", help="Model card (JSON) of the weights [default: shipped].")
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
PrecisionOption = Annotated[str, typer.Option(help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16.")]
TileOption = Annotated[int, typer.Option(min=64, help="Core tile side in pixels (memory is bounded by the tile).")]


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
):
    """Restore the sensor noise of each image with the quality-conditioned GAN.

    The compression level is read from the file's quantization tables (or --quality). Writes
    NAME-SHA8.restored.npy (float32) and NAME-SHA8.restored.json (input SHA-256, model and
    weights SHA-256, quality used, post-processing, tile, precision, tool version, time).
    """
    size = crop_option(crop)
    out = out or default_out()
    try:
        check_output_location(out, images)
    except OutputInsideEvidence as exc:
        die(str(exc))
    restorer = open_restorer(model, device)
    params = ResidualParams()
    failed = done = 0
    for path in gather_inputs(images):
        try:
            ev = load_image(path, max_pixels=State.max_pixels)
            pixels = np.ascontiguousarray(centre_crop(ev.pixels, size))
            started = time.perf_counter()
            restored, info = restorer.restore(
                ev, pixels, quality=quality, params=params, tile=tile, precision=precision
            )
        except EvidenceError as exc:
            fail_line(exc.path, exc.reason)
            failed += 1
            continue
        except ValueError as exc:
            fail_line(str(path), str(exc))
            failed += 1
            continue
        stem = f"{path.stem}-{ev.sha256[:8]}.restored"
        buf = io.BytesIO()
        np.save(buf, restored, allow_pickle=False)
        atomic_write_bytes(out / f"{stem}.npy", buf.getvalue())
        files = {"restored": f"{stem}.npy"}
        if preview:
            atomic_write_bytes(out / f"{stem}.png", preview_png(restored))
            files["preview"] = f"{stem}.png"
        atomic_write_json(
            out / f"{stem}.json",
            {
                "input": ev.provenance(),
                "files": files,
                "restored_sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
                "shape": list(restored.shape),
                "crop": list(size) if size else None,
                "restoration": info,
                "residual_params": params.as_dict(),
                "seconds": round(time.perf_counter() - started, 3),
                "seed": None,
                "created_utc": utc_now(),
                **tool_info(),
            },
        )
        done += 1
        err.print(f"{path} -> {out / (stem + '.npy')} (quality {info['quality_used']}, {info['device']})")
    err.print(f"{done} restored residual(s) written to {out}, {failed} failed")
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)
