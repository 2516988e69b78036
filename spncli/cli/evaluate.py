"""``spn eval``: classic versus restored residual on probes of known cameras, per quality."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..evaluation import ALL_COLUMNS, COLUMNS, METHODS, camera_for, quality_label, score_probe, summarize
from ..jpegdomain import AwareSettings
from ..evidence import EvidenceError, load_image
from ..geometry import centre_crop
from ..identify import gather_inputs
from ..pce import FingerprintSpectrum
from ..plots import eval_bars, png_bytes
from ..provenance import (
    OutputInsideEvidence,
    atomic_write_bytes,
    atomic_write_json,
    check_apart,
    tool_info,
    utc_now,
    writable_folder,
)
from ..store import FingerprintStore, StoreError
from ._app import State, app
from ._common import EXIT_SOME_FAILED, Format, crop_option, die, err, fail_line, finite, note, render
from .restore import DeviceOption, ModelOption, TileOption, open_restorer



@app.command("eval")
def evaluate(
    probes: Annotated[
        list[Path], typer.Argument(help="Probe images or folders; the camera is the file-name prefix.", readable=False)
    ],
    db: Annotated[Path, typer.Option("--db", help="HDF5 fingerprint database of the probes' cameras.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for eval.json, eval.csv, eval.png.")] = None,
    crop: Annotated[str | None, typer.Option(help="Centre crop of probes and fingerprints: N or HxW.")] = "1024",
    threshold: Annotated[
        float, typer.Option(help="PCE decision threshold (finite, > 0).", callback=finite("--threshold", positive=True))
    ] = 60.0,
    units: Annotated[
        str, typer.Option(help="Count matching pairs only for cameras whose id ends with this (e.g. _1).")
    ] = "",
    model: ModelOption = None,
    device: DeviceOption = "auto",
    tile: TileOption = 1024,
    aware: Annotated[
        bool,
        typer.Option(
            "--aware",
            help="Also score the classic residual without the spectral Wiener filter and the compression-aware "
            "residual (surviving JPEG DCT coefficients; spn match --residual compression-aware).",
        ),
    ] = False,
    format: Annotated[Format, typer.Option("--format", "-f", help="table, json or csv.")] = Format.table,
):
    """Per quality: TPR at the threshold, non-matching pairs above it, ROC AUC and median matching PCE,
    classic residual vs restored residual side by side.

    A probe's camera is the longest database camera id that starts its file name (as `spn degrade`
    names keep it). The quality is the qNN tag of a `spn degrade` name, else the estimated JPEG quality.
    """
    size = crop_option(crop)
    if out is not None:
        try:
            check_apart(out, probes)
            writable_folder(out)
        except (OutputInsideEvidence, ValueError) as exc:
            die(str(exc))
    try:
        store = FingerprintStore(db)
        cams = store.cameras()
        spectra = {}
        for c in cams:
            k = store.load(c).k
            spectra[c] = FingerprintSpectrum(centre_crop(k, size) if size else k)
    except (StoreError, ValueError) as exc:
        die(str(exc))
    restorer = open_restorer(model, device)
    aware_settings = AwareSettings() if aware else None
    pairs, inputs, failures = [], [], []

    def failed_input(path, reason: str) -> None:
        fail_line(str(path), reason)
        failures.append({"path": str(path), "reason": reason})

    for path in gather_inputs(probes):
        true = camera_for(path, cams)
        if true is None:
            failed_input(path, f"no database camera id starts the file name (cameras: {', '.join(cams)})")
            continue
        try:
            ev = load_image(path, max_pixels=State.max_pixels)
            pairs += score_probe(ev, quality_label(ev), true, spectra, size, restorer, tile=tile, aware=aware_settings)
        except (EvidenceError, ValueError) as exc:
            failed_input(path, getattr(exc, "reason", str(exc)))
            continue
        inputs.append({"path": str(path), "sha256": ev.sha256, "size_bytes": ev.size_bytes, "camera": true,
                       "quality": quality_label(ev), "decoder_warnings": ev.warnings})  # fmt: skip
        note(f"scored {path}")
    failed = len(failures)
    rows = summarize(pairs, threshold, (lambda c: c.endswith(units)) if units else (lambda c: True))
    columns = ALL_COLUMNS if aware else COLUMNS
    render(rows, format, columns, title=f"Residuals compared (crop {crop}, threshold {threshold:g})")
    if out is not None:
        record = {
            "rows": rows,
            "inputs": inputs,
            "failed": failures,
            "pairs": [p.__dict__ for p in pairs],
            "settings": {
                "crop": list(size) if size else None,
                "threshold": threshold,
                "units": units,
                "tile": tile,
                "aware_settings": AwareSettings().as_dict() if aware else None,
            },
            "model": restorer.card.get("name"),
            "weights_sha256": restorer.weights_sha256,
            "db": str(db),
            "db_sha256": store.file_sha256(),
            "created_utc": utc_now(),
            "seed": None,
            **tool_info(),
        }
        atomic_write_json(out / "eval.json", record)
        atomic_write_bytes(out / "eval.png", png_bytes(eval_bars(rows, threshold, "classic vs restored residual")))
        import csv
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(out / "eval.csv", buf.getvalue().encode())
        err.print(f"wrote {out / 'eval.json'}, {out / 'eval.csv'}, {out / 'eval.png'}")
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)
