"""``spn match --pool``: several images of one suspected source scored as one probe (optionally into a case)."""

from __future__ import annotations

from pathlib import Path

import typer

from .. import __version__
from ..caseanalysis import next_pool_name, pool_files, run_analysis
from ..casefile import CaseError
from ..evidence import EvidenceError, load_image
from ..identify import Matcher, MatchSettings, gather_inputs
from ..leaks import match_warnings
from ..pooling import WEIGHTINGS, pool_match
from ..store import FingerprintStore, StoreError
from ._app import State
from ._common import (
    EXIT_SOME_FAILED, Format, decoder_warnings, die, err, fail_line, note, note_not_images, render, warn,
)

POOL_COLUMNS = ["camera", "pce", "p_fa", "verdict", "n_images", "best_single_pce", "rotation"]
CSV_COLUMNS = [
    "camera", "pce", "ncc", "p_fa", "decision", "threshold", "n_images", "best_single_pce", "rotation", "rows", "cols",
    "weighting", "pooled_images", "warnings", "fingerprint_sha256", "db_sha256", "tool_version",
]  # fmt: skip


def check_pool_options(*, restore: bool, residual: str, workers, scheduler, weighting: str) -> None:
    """Refuse the ``match`` options that have no meaning for one pooled probe."""
    if restore or residual != "classic":
        die("--pool pools the classic residual: leave out --restore and --residual")
    if workers or scheduler:
        die("--pool scores one probe in this process: leave out --workers and --scheduler")
    if weighting not in WEIGHTINGS:
        die(f"--weighting {weighting!r} is not one of {', '.join(WEIGHTINGS)}")


def _pooled(images, matcher: Matcher, *, singles: bool, weighting: str) -> tuple[list[dict], list[dict]]:
    """Load the images (failures named, the rest go on) and score their pooled statistic; records and failures.

    Raises ``ValueError`` (:class:`spncli.pooling.PoolSizeError` naming files and sizes) when nothing can be pooled.
    """
    evidences, failed, others, seen = [], [], [], {}
    for path in gather_inputs(images, on_other=others.append):
        try:
            ev = load_image(path, max_pixels=State.max_pixels)
            if ev.sha256 in seen:  # one image twice is not two observations of the sensor
                raise EvidenceError(str(path), f"same bytes as {seen[ev.sha256]} (SHA-256 {ev.sha256[:16]}...): "
                                    "pooled once")  # fmt: skip
            seen[ev.sha256] = str(path)
            decoder_warnings({"path": str(path), "warnings": ev.warnings})
            evidences.append(ev)
        except EvidenceError as exc:
            fail_line(exc.path, exc.reason)
            failed.append({"path": exc.path, "reason": exc.reason})
    note_not_images(others)
    if not evidences:
        raise ValueError("no usable image to pool")
    if len(evidences) == 1:  # T = W I / s2 of one image: not the plain match the thresholds were calibrated for
        note(f"one image pooled ({evidences[0].path}): its pooled statistic is its residual weighted by its "
             "intensity; the calibrated test for one image is the plain match, without --pool (README, --pool)")
    try:
        return pool_match(evidences, matcher, singles=singles, weighting=weighting), failed
    except EvidenceError as exc:
        raise ValueError(f"{exc.path}: {exc.reason}") from None


def match_pool(images, db: Path, settings: MatchSettings, *, camera, singles: bool, weighting: str, case, examiner,
               case_id, format: Format) -> None:  # fmt: skip
    """The whole of ``match --pool``: score, write into the case if given, render."""
    try:
        store = FingerprintStore(db)
        names = store.select(camera)
        db_sha = store.file_sha256()
        matcher = Matcher(store.load_many(names), settings)
        leaks = match_warnings(store, names)  # a pooled probe against a flagged camera carries its warning too
    except StoreError as exc:
        die(str(exc))
    for cam, lines in leaks.items():
        for line in lines:
            warn(f"matches against {cam}: {line}")
    extra = {"db": str(db), "db_sha256": db_sha, "tool_version": __version__}

    def annotated(records: list[dict]) -> list[dict]:
        return [r | extra | {"warnings": list(leaks.get(r["camera"], ()))} for r in records]

    made, head = {}, None
    try:
        if case is None:
            made["records"], made["failed"] = _pooled(images, matcher, singles=singles, weighting=weighting)
        else:

            def compute(c):
                made["records"], made["failed"] = _pooled(images, matcher, singles=singles, weighting=weighting)
                made["name"] = next_pool_name(c)
                return pool_files(made["name"], annotated(made["records"]), made["failed"])

            parameters = settings.as_dict() | {"weighting": weighting, "singles": singles, "database": str(db),
                                               "database_sha256": db_sha, "cameras": names}  # fmt: skip
            head = run_analysis(case, images, "pool", parameters, compute, examiner=examiner, case_id=case_id)
    except (ValueError, CaseError) as exc:
        die(str(exc), EXIT_SOME_FAILED)
    records = [r | ({"case": str(case), "case_file": made["name"]} if head else {}) for r in annotated(made["records"])]
    _render(records, format, settings.threshold, singles)
    n = records[0]["n_images"] if records else 0
    err.print(f"{n} image(s) pooled, {len(records)} camera(s) scored, {len(made['failed'])} file(s) failed")
    if head is not None:
        err.print(f"case {case}: {made['name']} written and audited")
        err.print(f"audit chain head: {head}  (note it: spn case verify {case} --head HASH)")
    if made["failed"]:
        raise typer.Exit(EXIT_SOME_FAILED)


def _render(records: list[dict], format: Format, threshold: float, singles: bool) -> None:
    if format is Format.json:
        render(records, format, [])
        return
    pooled = "; ".join(f"{im['path']} (SHA-256 {im['sha256']})" for im in records[0]["images"]) if records else ""
    if format is Format.csv:
        render([r | {"pooled_images": pooled, "warnings": "; ".join(r["warnings"])} for r in records], format,
               CSV_COLUMNS)
        return
    view = [
        r
        | {
            "verdict": f"{'consistent' if r['decision'] == 'consistent' else 'not consistent'} with {r['camera']}"
            + (" (leak warning)" if r["warnings"] else ""),
            "p_fa": r["p_fa"] if r["p_fa"] > 0 else "< 1e-300",  # below the smallest double
        }
        for r in records
    ]
    columns = POOL_COLUMNS if singles else POOL_COLUMNS[:-2] + POOL_COLUMNS[-1:]
    render(view, format, columns, title=f"Pooled PCE of {records[0]['n_images'] if records else 0} image(s) "
           f"as one probe (threshold {threshold:g})",
           caption=f"Pooled: {pooled}. A PCE at or below the threshold does not exclude the camera.")  # fmt: skip
