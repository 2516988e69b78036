"""``spn match``: PCE of each image against every fingerprint of a database."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from ..casefile import Case
from ..calibration import FIELDS as TAIL_FIELDS
from ..calibration import tails_for
from ..casework import CaseError, run_case
from ..identify import Matcher, MatchSettings
from ..jobs import MatchJob
from ..leaks import match_warnings
from ..prescreen import Prescreen, parse_prescreen
from ..residual import ResidualParams
from ..spectra import parse_bytes
from ..store import FingerprintStore, StoreError
from ._app import State, app
from ._batch import BatchProgress, run_jobs
from ._common import (
    EXIT_SOME_FAILED, DeviceOption, Format, crop_option, decoder_warnings, device_option, die, err, error_line,
    fail_line, finite, image_paths, note, render, warn,
)
from .extract import ResidualOption, check_residual_kind
from .restore import ModelOption, open_restorer

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
    *TAIL_FIELDS,
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
    "residual_file",
    "residual_file_sha256",
    "residual_provenance_sha256",
    "residual_crop",
    "alignment",
    "warnings",
    "decoder_warnings",
    "crop",
    "max_shift",
    "fingerprint_sha256",
    "db_sha256",
    "device",
    "backend",
    "prescreen",
    "prescreen_scored",
    "prescreen_unindexed",
    "prescreen_z",
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
        joined = [r | {k: "; ".join(r.get(k) or ()) for k in ("warnings", "decoder_warnings")} for r in rows]
        render(joined if format is Format.csv else rows, format, COLUMNS)
        return
    view = []
    for r in rows:
        verdict = "consistent with" if r["decision"] == "consistent" else "not consistent with"
        view.append(
            r
            | {
                "verdict": f"{verdict} {r['camera']}" + (" (leak warning)" if r.get("warnings") else ""),
                "image": Path(r["image"]).name,
                "shift": f"{r['shift_row']},{r['shift_col']}",
            }
        )
    render(view, format, TABLE_COLUMNS, title=f"PCE match report (threshold {threshold:g})", caption=CAPTION)


@app.command()
def match(
    images: Annotated[list[Path], typer.Argument(help="Images or folders (walked recursively).", readable=False)],
    db: Annotated[Path, typer.Option("--db", help="HDF5 fingerprint database.")],
    threshold: Annotated[
        float,
        typer.Option(
            help="PCE above which an image is consistent with a camera (finite, > 0).",
            callback=finite("--threshold", positive=True),
        ),
    ] = 60.0,
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
        int | None,
        typer.Option(min=1, help="Worker processes (Dask) [default: in-process; with --case: the cores]."),
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="An existing Dask scheduler, e.g. tcp://10.0.0.5:8786.")
    ] = None,
    worker_memory: Annotated[
        str,
        typer.Option(
            help="Fingerprint transforms each worker process keeps (e.g. 1536M, 2G); cameras beyond it are "
            "read and transformed per image. Workers read the fingerprints from --db themselves; on a local "
            "cluster they share one read-only map of all the transforms instead, which this does not limit."
        ),
    ] = "1536M",
    prescreen: Annotated[
        str,
        typer.Option(
            help="off; K: rank the cameras by sign agreement with each residual (the database's pre-screen index) "
            "and compute the exact PCE for the K best only; exact: every camera scored, the ranks recorded. "
            "Rows say which, and how many cameras were scored.",
        ),
    ] = "off",
    examiner: Annotated[str | None, typer.Option(help="Examiner's name for the audit trail.")] = None,
    case_id: Annotated[str | None, typer.Option("--case-id", help="Case identifier for the audit trail.")] = None,
    pool: Annotated[
        bool,
        typer.Option(
            help="Score all the images as ONE probe of one suspected source (their residuals weighted by their "
            "intensity and summed: the matched-filter statistic, one test per camera); with --case the pooled result "
            "goes into the case."
        ),
    ] = False,
    singles: Annotated[bool, typer.Option(help="With --pool: also score each image alone (best single PCE).")] = False,
    weighting: Annotated[
        str,
        typer.Option(help="With --pool: variance (each image weighted by 1/variance of its residual) or none."),
    ] = "variance",
):
    """Score each image against every camera fingerprint: PCE, NCC and a decision.

    PCE follows Goljan et al. (2009): signed, read at zero shift (or the best
    of the searched shifts with --max-shift, with the false-alarm probability
    for the number of shifts searched), energy outside an 11x11 neighbourhood.

    With --case DIR the images are scored in parallel worker processes (Dask; a
    local cluster, or --scheduler), the case folder gets results.jsonl/csv,
    errors.jsonl, manifest.json and a hash-chained audit.jsonl, and a re-run
    resumes: images already scored (by path and SHA-256) are skipped. One run
    at a time holds a case; the chain head printed at the end proves the case
    later (spn case verify CASE --head HASH).

    With --pool all the images are one probe of one suspected source: their
    common PRNU is estimated by maximum likelihood, sum(W*I/s2)/sum(I^2/s2)
    with s2 each image's residual variance, and scored by PCE against each
    camera as one test, with that test's false-alarm probability. The images
    must share one size and orientation (after --crop), or nothing is scored
    and the files and sizes are named; each pooled image is listed with its
    SHA-256. With --case the pooled result is written to CASE/pool/ and
    audited, and spn report shows it.
    """
    size = crop_option(crop)
    kind = check_residual_kind(residual)
    device_option(device, here=not scheduler)  # local workers (--workers, --case) run on this machine
    if restore and kind != "classic":
        die("--restore refines the classic residual: use --residual classic with --restore")
    if pool:
        from ._pool import check_pool_options, match_pool

        check_pool_options(restore=restore, residual=kind, workers=workers, scheduler=scheduler, weighting=weighting)
        match_pool(images, db, MatchSettings(threshold=threshold, crop=size, max_shift=max_shift, rotations=rotations),
                   camera=camera, singles=singles, weighting=weighting, case=case, examiner=examiner,
                   case_id=case_id, format=format)  # fmt: skip
        return
    try:
        top = parse_prescreen(prescreen)
    except ValueError as exc:
        die(f"--prescreen: {exc}")
    if top is not False and max_shift:
        die("--prescreen ranks cameras at zero shift: use --max-shift 0 with --prescreen, or --prescreen off")
    try:
        store = FingerprintStore(db)
        names = store.select(camera)
        db_sha = store.file_sha256()
        settings = MatchSettings(
            threshold=threshold,
            crop=size,
            max_shift=max_shift,
            rotations=rotations,
            params=ResidualParams(),
            residual=kind,
        )
        try:
            memory = parse_bytes(worker_memory)
        except ValueError as exc:
            die(f"--worker-memory: {exc}")
        restorer = open_restorer(model, device) if restore else None
        if case is not None or workers or scheduler:
            # worker processes read the fingerprints from the database; this process never transforms one
            matcher = Matcher.from_database(store, names, settings, restorer, db_sha256=db_sha, memory=memory,
                                            device=device)  # fmt: skip
        else:  # in-process: a few fingerprints in memory at a time (read ahead, transformed), only transforms kept
            matcher = Matcher(store.load_many(names), settings, restorer, device)
        matcher.tails, refused = tails_for(store, settings, restored=restorer is not None)
        if refused:  # the scores stand; their empirical tails are null and say why
            error_line(refused)
        matcher.warnings = match_warnings(store, names)
        if top is not False:
            matcher.prescreen = Prescreen(str(Path(db).absolute()), top)
            matcher.prescreen.load(names)  # here first: a damaged index is one error line, not one per image
            if top is not None:
                note(f"--prescreen {top}: exact PCE for the {min(top, len(names))} camera(s) of {len(names)} that rank "
                     "best by sign agreement with each image; the others are not scored (rows say how many were)")
            if matcher.prescreen.unindexed:
                note(f"--prescreen: {len(matcher.prescreen.unindexed)} camera(s) have no pre-screen record "
                     f"(added by an older spn, or its record in {Path(db).name}.d/prescreen.sig is missing or "
                     "damaged); they are scored exactly")  # fmt: skip
    except StoreError as exc:
        die(str(exc))
    for cam, lines in matcher.warnings.items():
        for line in lines:
            warn(f"matches against {cam}: {line}")
    if case is not None:
        _match_case(images, case, matcher, db=db, db_sha=db_sha, workers=workers, scheduler=scheduler,
                    examiner=examiner, case_id=case_id, format=format)  # fmt: skip
        return
    _match_plain(images, matcher, db_sha=db_sha, workers=workers, scheduler=scheduler, format=format, size=size)


def _match_plain(images, matcher, *, db_sha, workers, scheduler, format, size) -> None:
    """Plain ``match``: the same job and executor as a case, scores rendered as they arrive."""
    extra = {
        "crop": f"{size[0]}x{size[1]}" if size else None,
        "max_shift": matcher.settings.max_shift,
        "db_sha256": db_sha,
        "tool_version": __version__,
    }
    rows = []

    def on_result(result: dict) -> bool:
        if "error" in result:
            fail_line(result["path"], result["error"])
            return True
        decoder_warnings(result)
        records = [r | extra for r in result["records"]]
        if format is Format.json:
            render(records, format, COLUMNS)  # stream: one line per record as soon as it is known
        rows.extend(records)
        note(f"matched {result['path']}")
        return False

    job = MatchJob(matcher, max_pixels=State.max_pixels, artifacts=False)
    paths = image_paths(images, residuals=True, absolute=False)  # saved residuals in folders too
    _, failed = run_jobs(paths, job, workers=workers, scheduler=scheduler, label="match",
                         gpu=matcher.restorer is not None or matcher.device == "cuda", on_result=on_result)  # fmt: skip
    if format is not Format.json:  # JSON was streamed above
        render_matches(sorted(rows, key=lambda r: (r["image"], r["camera"])), format, matcher.settings.threshold)
    err.print(f"{len(rows)} score(s), {failed} file(s) failed")
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def _match_case(images, folder, matcher, *, db, db_sha, workers, scheduler, examiner, case_id, format) -> None:
    """``match --case``: :func:`spncli.casework.run_case`, rendered."""
    with BatchProgress("match") as bar:

        def on_result(result: dict) -> None:
            if "error" in result:
                fail_line(result["path"], result["error"])
            decoder_warnings(result)
            bar.advance("error" in result)

        try:
            summary = run_case(
                images, folder, matcher, db=db, db_sha=db_sha, max_pixels=State.max_pixels, cluster=True,
                workers=workers, scheduler=scheduler, examiner=examiner, case_id=case_id,
                on_start=bar.start, on_result=on_result, on_notice=note,
            )  # fmt: skip
        except CaseError as exc:
            die(str(exc))
        except OSError as exc:
            die(f"{folder}: cannot write the case: {exc.strerror or exc}; every committed image is kept, "
                "re-run to resume", EXIT_SOME_FAILED)  # fmt: skip
    rows = Case(folder).rows()
    if format is Format.table:
        shown = [r for r in rows if r["decision"] == "consistent"]
        render_matches(sorted(shown, key=lambda r: (r["camera"], r["image"])), format, matcher.settings.threshold)
    else:
        render_matches(sorted(rows, key=lambda r: (r["image"], r["camera"])), format, matcher.settings.threshold)
    for group in summary.duplicates:
        err.print(f"same bytes (SHA-256 {group['sha256'][:16]}...) at {len(group['paths'])} paths, each scored: "
                  + ", ".join(d["path"] for d in group["paths"]))  # fmt: skip
    err.print(
        f"case {folder}: {summary.scored} scored, {summary.skipped} already done, {summary.errors} failed; "
        f"{summary.consistent} consistent pair(s); results.csv, manifest.json, audit.jsonl written"
    )
    err.print(f"audit chain head: {summary.head}  (note it: spn case verify {folder} --head HASH)")
    if summary.status == "interrupted":
        err.print("interrupted: every committed image is kept; re-run the same command to resume")
        raise typer.Exit(130)
    if summary.errors:
        raise typer.Exit(EXIT_SOME_FAILED)
