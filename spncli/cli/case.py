"""``spn match --case`` (the batch), ``spn case verify``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from ..casefile import Case
from ..evidence import sha256_file
from ..identify import Matcher, gather_inputs
from ..provenance import OutputInsideEvidence, check_output_location, utc_now
from . import State, app
from ._batch import run_jobs
from ._common import EXIT_SOME_FAILED, Format, die, err, fail_line, out

case_app = typer.Typer(help="Case folders: verify the evidence and the audit trail.", no_args_is_help=True)
app.add_typer(case_app, name="case")


def run_case(
    images: list[Path],
    folder: Path,
    matcher: Matcher,
    *,
    db: Path,
    db_sha: str,
    workers: int | None,
    scheduler: str | None,
    examiner: str | None,
    case_id: str | None,
    format: Format,
) -> None:
    """The parallel, resumable batch behind ``spn match --case``."""
    from ..batch import MatchJob
    from .match import render_matches

    try:
        check_output_location(folder, images)
    except OutputInsideEvidence as exc:
        die(str(exc))
    folder.mkdir(parents=True, exist_ok=True)
    case = Case(folder)
    previous = case.read_manifest()
    if previous and previous.get("database_sha256") not in (None, db_sha):
        die(
            f"{folder}: the case was started with another database (SHA-256 {previous['database_sha256'][:16]}...); "
            "use a new case folder"
        )
    done = case.done(len(matcher.cameras))
    case.reset_errors()
    parameters = matcher.settings.as_dict() | {
        "restored": matcher.restorer is not None,
        "weights_sha256": matcher.restorer.weights_sha256 if matcher.restorer else None,
        "cameras": [c for c, _ in matcher.cameras],
        "max_pixels": State.max_pixels,
        "workers": workers,
        "scheduler": scheduler,
    }
    command = " ".join(["spn", *sys.argv[1:]])
    run = {"started_utc": utc_now(), "status": "running", "resumed_images": len(done)}
    case.audit(
        "match-start",
        command_line=command,
        parameters=parameters,
        database=str(db),
        database_sha256=db_sha,
        examiner=examiner,
        case_id=case_id,
        evidence=[str(p.absolute()) for p in images],
    )
    paths = [p.absolute() for p in gather_inputs(images)]
    counts = {"scored": 0, "skipped": 0, "errors": 0}
    started = time.perf_counter()

    def finish(status: str) -> None:
        case.write_csv()
        run.update(
            status=status,
            finished_utc=utc_now(),
            files=len(paths),
            **counts,
            seconds=round(time.perf_counter() - started, 1),
        )
        runs = (previous or {}).get("runs", []) + [run]
        case.write_manifest(
            parameters=parameters,
            db=str(db),
            db_sha256=db_sha,
            runs=runs,
            case_id=case_id,
            examiner=examiner,
            inputs_given=[str(p.absolute()) for p in images],
        )
        case.audit(
            f"match-{status}",
            command_line=command,
            examiner=examiner,
            case_id=case_id,
            **counts,
            results_csv_sha256=sha256_file(case.csv),
            manifest_sha256=sha256_file(case.manifest),
        )

    def on_result(result: dict) -> bool:
        if "error" in result:
            case.add_error(result["path"], result["error"])
            fail_line(result["path"], result["error"])
            counts["errors"] += 1
            return True
        if result.get("skipped"):
            counts["skipped"] += 1
        else:
            case.add_results(result["records"])
            if result["surfaces"]:
                case.save_artifacts(result["sha256"], result["preview"], result["surfaces"])
            counts["scored"] += 1
        return False

    job = MatchJob(matcher, frozenset(done), State.max_pixels)
    run_jobs(
        paths,
        job,
        workers=workers,
        scheduler=scheduler,
        label="match",
        gpu=matcher.restorer is not None,
        cluster=True,
        on_result=on_result,
        on_interrupt=lambda: finish("interrupted"),
    )
    finish("completed")
    rows = [r for r in case.rows() if r["decision"] == "consistent"]
    if format is Format.table:
        render_matches(sorted(rows, key=lambda r: (r["camera"], r["image"])), format, matcher.settings.threshold)
    else:
        render_matches(sorted(case.rows(), key=lambda r: (r["image"], r["camera"])), format, matcher.settings.threshold)
    err.print(
        f"case {folder}: {counts['scored']} scored, {counts['skipped']} already done, {counts['errors']} failed; "
        f"{len(rows)} consistent pair(s); results.csv, manifest.json, audit.jsonl written"
    )
    if counts["errors"]:
        raise typer.Exit(EXIT_SOME_FAILED)


@case_app.command()
def verify(folder: Annotated[Path, typer.Argument(help="Case folder.")]):
    """Re-hash every input and the audit chain; report any change (exit 1 if something changed)."""
    case = Case(folder)
    if not folder.is_dir():
        die(f"{folder}: no such case folder")
    problems = case.verify()
    manifest = case.read_manifest() or {}
    n = sum(1 for i in manifest.get("inputs", []) if i.get("sha256"))
    case.audit("verify", problems=problems, inputs_checked=n)
    for p in problems:
        fail_line(str(folder), p)
    if problems:
        raise typer.Exit(EXIT_SOME_FAILED)
    out.print(f"case {folder}: {n} input(s) unchanged, audit chain intact, results.csv as recorded")
