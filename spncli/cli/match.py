"""``spn match``: PCE of each image against every fingerprint of a database."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from ..evidence import EvidenceError, load_image
from ..identify import Matcher, MatchSettings, gather_inputs
from ..residual import ResidualParams
from ..store import FingerprintStore, StoreError
from . import State, app
from ._common import EXIT_SOME_FAILED, Format, crop_option, die, err, fail_line, render
from .extract import ResidualOption, check_residual_kind
from .restore import DeviceOption, ModelOption, open_restorer

COLUMNS = [
    "image",
    "sha256",
    "camera",
    "pce",
    "ncc",
    "decision",
    "threshold",
    "peak_row",
    "peak_col",
    "shift_row",
    "shift_col",
    "n_shifts",
    "p_fa",
    "rotation",
    "rows",
    "cols",
    "jpeg_quality",
    "restored",
    "residual_kind",
    "wiener_applied",
    "pce_classic",
    "pce_restored",
    "decision_classic",
    "decision_restored",
    "residuals_disagree",
    "network_applied",
    "weights_sha256",
    "crop",
    "max_shift",
    "fingerprint_sha256",
    "db_sha256",
    "tool_version",
]
TABLE_COLUMNS = [
    "image", "camera", "pce", "ncc", "verdict", "rotation", "shift", "jpeg_quality", "restored", "residual_kind"
]
CAPTION = (
    "PCE above the threshold: consistent with that camera. A PCE at or below it does not exclude the "
    "camera (small, dark, saturated, compressed, resized or cropped images give low PCE)."
)


def render_matches(rows: list[dict], format: Format, threshold: float) -> None:
    """Render match records: a readable table, or every field as JSON Lines / CSV."""
    if format is not Format.table:
        render(rows, format, COLUMNS)
        return
    view = []
    for r in rows:
        verdict = "consistent with" if r["decision"] == "consistent" else "not consistent with"
        view.append(
            r
            | {
                "verdict": f"{verdict} {r['camera']}",
                "image": Path(r["image"]).name,
                "shift": f"{r['shift_row']},{r['shift_col']}",
            }
        )
    render(view, format, TABLE_COLUMNS, title=f"PCE match report (threshold {threshold:g})", caption=CAPTION)


@app.command()
def match(
    images: Annotated[list[Path], typer.Argument(help="Images or folders (walked recursively).", readable=False)],
    db: Annotated[Path, typer.Option("--db", help="HDF5 fingerprint database.")],
    threshold: Annotated[float, typer.Option(help="PCE above which an image is consistent with a camera.")] = 60.0,
    crop: Annotated[str | None, typer.Option(help="Centre crop of images and fingerprints: N or HxW.")] = None,
    max_shift: Annotated[int, typer.Option(min=0, help="Search the peak within +-N pixels (cropped images).")] = 0,
    rotations: Annotated[bool, typer.Option(help="Try 90/270-degree rotations when orientations differ.")] = True,
    camera: Annotated[list[str] | None, typer.Option("--camera", "-c", help="Only these cameras (repeatable).")] = None,
    format: Annotated[
        Format, typer.Option("--format", "-f", help="table, json (JSON Lines) or csv, on stdout.")
    ] = Format.table,
    restore: Annotated[
        bool,
        typer.Option(
            help="Also score the GAN-restored residual; decide on both (Bonferroni on the two false-alarm "
            "probabilities); rows carry both PCEs."
        ),
    ] = False,
    residual: ResidualOption = "classic",
    model: ModelOption = None,
    device: DeviceOption = "auto",
    case: Annotated[
        Path | None, typer.Option("--case", help="Case folder: parallel, resumable batch with results and audit trail.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes with --case [default: the cores].")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="With --case: an existing Dask scheduler, e.g. tcp://10.0.0.5:8786.")
    ] = None,
    examiner: Annotated[str | None, typer.Option(help="Examiner's name for the audit trail.")] = None,
    case_id: Annotated[str | None, typer.Option("--case-id", help="Case identifier for the audit trail.")] = None,
):
    """Score each image against every camera fingerprint: PCE, NCC and a decision.

    PCE follows Goljan et al. (2009): signed, read at zero shift (or the best
    of the searched shifts with --max-shift, with the false-alarm probability
    for the number of shifts searched), energy outside an 11x11 neighbourhood.

    With --case DIR the images are scored in parallel worker processes (Dask; a
    local cluster, or --scheduler), the case folder gets results.jsonl/csv,
    errors.jsonl, manifest.json and a hash-chained audit.jsonl, and a re-run
    resumes: images already scored (by SHA-256) are skipped.
    """
    size = crop_option(crop)
    kind = check_residual_kind(residual)
    if restore and kind != "classic":
        die("--restore refines the classic residual: use --residual classic with --restore")
    try:
        store = FingerprintStore(db)
        names = store.cameras()
        if camera:
            missing = sorted(set(camera) - set(names))
            if missing:
                raise StoreError(f"{db}: no camera {', '.join(missing)} (cameras: {', '.join(names) or 'none'})")
            names = [n for n in names if n in camera]
        if not names:
            raise StoreError(f"{db}: the database holds no camera")
        db_sha = store.file_sha256()
        settings = MatchSettings(
            threshold=threshold,
            crop=size,
            max_shift=max_shift,
            rotations=rotations,
            params=ResidualParams(),
            residual=kind,
        )
        restorer = open_restorer(model, device) if restore else None
        # one fingerprint in memory at a time: only its transform is kept
        matcher = Matcher((store.load(n) for n in names), settings, restorer)
    except StoreError as exc:
        die(str(exc))
    if case is not None:
        from .case import run_case

        run_case(
            images,
            case,
            matcher,
            db=db,
            db_sha=db_sha,
            workers=workers,
            scheduler=scheduler,
            examiner=examiner,
            case_id=case_id,
            format=format,
        )
        return
    extra = {
        "crop": f"{size[0]}x{size[1]}" if size else None,
        "max_shift": max_shift,
        "db_sha256": db_sha,
        "tool_version": __version__,
    }
    rows, failed = [], 0
    for path in gather_inputs(images):
        try:
            ev = load_image(path, max_pixels=State.max_pixels)
            records = matcher.match(ev)
        except EvidenceError as exc:
            fail_line(exc.path, exc.reason)
            failed += 1
            continue
        for r in records:
            r.update(extra)
            if format is Format.json:
                render([r], format, COLUMNS)  # stream: one line per record as soon as it is known
        rows.extend(records)
        err.print(f"matched {path}")
    if format is not Format.json:  # JSON was streamed above
        render_matches(rows, format, threshold)
    err.print(f"{len(rows)} score(s), {failed} file(s) failed")
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)
