"""``spn calibrate``: the null PCE distribution of each camera, per JPEG quality band, stored with the database."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..calibration import (
    DEFAULT_QUALITIES,
    HEAVY_FACTOR,
    OTHER,
    calibrate as measure,
    labelled_backgrounds,
    parse_qualities,
    read_labels,
    summary_rows,
)
from ..identify import MatchSettings
from ..provenance import OutputInsideEvidence, check_output_location
from ..residual import ResidualParams
from ..store import FingerprintStore, StoreError
from ._app import State, app
from ._common import (
    EXIT_SOME_FAILED, Format, crop_option, die, err, fail_line, finite, note, note_not_images, render, warn,
)  # fmt: skip

COLUMNS = [
    "camera", "band", "count", "median", "p99", "max", "above_threshold", "tail_at_threshold", "p_fa_at_threshold",
    "check_level", "tail_at_check", "p_fa_at_check", "tail_ratio", "heavier_than_theory", "n_shifts", "threshold",
    "fingerprint_sha256",
]  # fmt: skip
TABLE_COLUMNS = ["camera", "band", "count", "median", "p99", "max", "above_threshold", "tail_ratio", "verdict"]


def _render(doc: dict, sha256: str, format: Format, path: Path) -> None:
    rows = summary_rows(doc)
    if format is Format.json:  # one JSON record: what is stored (less the samples) and the summaries
        record = {k: v for k, v in doc.items() if k not in ("cameras", "background")}
        record["background"] = {k: v for k, v in doc["background"].items() if k != "images"}
        record |= {"calibration_file": str(path), "calibration_sha256": sha256, "bands": rows}
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        return
    view = [r | {"verdict": "HEAVIER than theory" if r["heavier_than_theory"] else "within theory"} for r in rows]
    p = doc["parameters"]
    crop = "x".join(map(str, p["scoring"]["crop"])) if p["scoring"]["crop"] else "full frame"
    render(
        view, format, COLUMNS if format is Format.csv else TABLE_COLUMNS,
        title=f"Null PCE per camera and JPEG quality band ({doc['background']['count']} background images, "
        f"crop {crop}, threshold {p['threshold']:g})",
        caption=f"tail_ratio: empirical tail over the theoretical p_fa at the level the 5 (or 1%) largest null PCEs "
        f"reach; HEAVIER when above {HEAVY_FACTOR:g} or when a null PCE exceeds the threshold.",
    )  # fmt: skip


@app.command()
def calibrate(
    db: Annotated[Path, typer.Option("--db", help="HDF5 fingerprint database (the calibration is stored with it).")],
    background: Annotated[
        list[Path] | None,
        typer.Argument(help="Images or folders known not to come from the cameras they are scored against.",
                       readable=False),
    ] = None,  # fmt: skip
    leave_one_camera_out: Annotated[
        bool,
        typer.Option(
            "--leave-one-camera-out",
            help="Each image is labelled with the database camera that took it (BACKGROUND/<camera-id>/..., or "
            f"--labels) and scored against every other camera; the label '{OTHER}' means none of them.",
        ),
    ] = False,
    labels: Annotated[
        Path | None,
        typer.Option(help="CSV with the header 'path,camera' labelling each image (relative paths: from the CSV)."),
    ] = None,
    qualities: Annotated[
        str,
        typer.Option(help="Also score each image re-compressed in memory at these JPEG qualities (comma-separated; "
                     "'none': only the files as they are).")
    ] = ",".join(map(str, DEFAULT_QUALITIES)),  # fmt: skip
    crop: Annotated[
        str | None,
        typer.Option(help="Centre crop, N or HxW, as spn match will use it (the null depends on it) [default: full "
                     "frame, as spn match]."),
    ] = None,  # fmt: skip
    max_shift: Annotated[int, typer.Option(min=0, help="Peak search +-N pixels, as spn match will use it.")] = 0,
    rotations: Annotated[bool, typer.Option(help="Try 90/270-degree rotations, as spn match will.")] = True,
    threshold: Annotated[
        float,
        typer.Option(help="Decision threshold the tails are summarized at.",
                     callback=finite("--threshold", positive=True)),  # fmt: skip
    ] = 60.0,
    show: Annotated[bool, typer.Option("--show", help="Print the stored calibration; measure nothing.")] = False,
    replace: Annotated[
        bool, typer.Option(help="Replace a stored calibration (refused without it, before anything is measured).")
    ] = False,
    format: Annotated[
        Format, typer.Option("--format", "-f", help="table, json (one JSON record) or csv, on stdout.")
    ] = Format.table,
):
    """Measure each camera's null PCE distribution per JPEG quality band and store it with the database.

    ASSUMPTION: a background image comes from none of the cameras it is
    scored against. Without --leave-one-camera-out every BACKGROUND image is
    declared to come from none of the database's cameras (its source may be
    unknown). With it, each image is labelled with the camera that took it
    and scored against every other camera. An image whose SHA-256 is a source
    of a fingerprint it would be scored against contradicts that and is refused.

    Bands by the IJG-equivalent quality of the scored file's quantization
    tables: q90-100, q70-89, q50-69, q1-49, and not-jpeg. Each image is also
    re-compressed in memory at --qualities (the analysed region, in the
    frame's JPEG grid) to fill the lower bands; the record says so.

    Stored as <db>.d/calibration.json, sealed (SHA-256 over its content),
    written atomically under the database's lock; the index and the camera
    files are not rewritten. Each camera's entry names the fingerprint it was
    measured against. spn match then records, beside the theoretical p_fa,
    p_fa_empirical = (1 + #null >= PCE) / (1 + n) with null_count n and
    null_band, when it scores with the same crop, shift search and rotations;
    otherwise those fields are null and calibration_note says why. Run again
    with --replace to replace the calibration (after adding cameras, for instance).
    """
    store = FingerprintStore(db)
    if show:
        if background:
            die("--show prints the stored calibration: give no BACKGROUND")
        try:
            loaded = store.calibration()
        except StoreError as exc:
            die(str(exc), EXIT_SOME_FAILED)
        if loaded is None:
            die(f"{db}: no calibration stored (run spn calibrate --db {db} BACKGROUND...)", EXIT_SOME_FAILED)
        _render(*loaded, format, store.calibration_path)
        return
    if not background:
        die("give BACKGROUND images or folders (or --show)")
    if labels is not None and not leave_one_camera_out:
        die("--labels labels images by camera: use it with --leave-one-camera-out")
    try:
        quals = parse_qualities(qualities)
    except ValueError as exc:
        die(f"--qualities: {exc}")
    try:
        stored = not replace and store.path.exists() and store.calibration_path.exists()
        blocked = store.calibration_target_problem()  # what store_calibration would refuse, refused before measuring
    except OSError:
        stored, blocked = False, None
    if blocked:
        die(f"{store.calibration_path}: {blocked}; nothing would be stored (remove it); nothing was measured")
    if stored:
        die(f"{db}: a calibration is stored already ({store.calibration_path}); use --replace to measure a new one "
            "(spn calibrate --db DB --show prints it)")  # fmt: skip
    try:  # the calibration is written beside the database: never inside the evidence it measures
        check_output_location(store.calibration_path, [*(background or []), *([labels] if labels else [])])
    except OutputInsideEvidence as exc:
        die(str(exc))
    settings = MatchSettings(threshold=threshold, crop=crop_option(crop), max_shift=max_shift, rotations=rotations,
                             params=ResidualParams())  # fmt: skip
    failed = 0

    def on_error(path: str, reason: str) -> None:
        nonlocal failed
        failed += 1
        fail_line(path, reason)

    try:
        label_map = read_labels(labels) if labels is not None else None
    except ValueError as exc:
        die(str(exc))
    try:
        cameras = store.select()
    except StoreError as exc:  # no database, or not one: a usage error, as for spn match
        die(str(exc))
    try:
        others = []
        items = labelled_backgrounds(background, leave_one_camera_out=leave_one_camera_out, cameras=cameras,
                                     labels=label_map, on_error=on_error, on_other=others.append)  # fmt: skip
        note_not_images(others)
        doc = measure(
            store, items, settings=settings, qualities=quals, leave_one_camera_out=leave_one_camera_out,
            labels=label_map, max_pixels=State.max_pixels, max_bytes=State.max_bytes, on_error=on_error,
            on_progress=lambda path: note(f"scored {path}"), on_notice=note,
        )  # fmt: skip
        sha = store.store_calibration(doc)
    except (StoreError, ValueError) as exc:
        die(str(exc), EXIT_SOME_FAILED)
    _render(doc, sha, format, store.calibration_path)
    heavy = [r for r in summary_rows(doc) if r["heavier_than_theory"]]
    for r in heavy:
        warn(f"{r['camera']} {r['band']}: null tail heavier than the theory (max null PCE {r['max']:.1f}, "
             f"{r['above_threshold']} above the threshold)")  # fmt: skip
    err.print(f"calibration of {len(doc['cameras'])} camera(s) from {doc['background']['count']} image(s) stored in "
              f"{store.calibration_path} (SHA-256 {sha}); {failed} file(s) not used")  # fmt: skip
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)
