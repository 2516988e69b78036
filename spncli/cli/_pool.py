"""``spn match --pool``: several images of one suspected source scored as one probe (optionally into a case)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.markup import escape

from .. import __version__
from ..caseanalysis import next_pool_name, pool_files, run_analysis
from ..casefile import CaseError, unscored_digest
from ..evidence import EvidenceError, load_image, repeated_image
from ..identify import Matcher, MatchSettings
from ..leaks import match_warnings
from ..pooling import WEIGHTINGS, PoolSizeError, pool_match
from ..store import FingerprintStore, StoreError
from ._app import State
from ._common import (
    EXIT_SOME_FAILED, Format, decoder_warnings, die, err, fail_line, image_paths, note, printable, render, warn,
)

POOL_COLUMNS = ["camera", "pce", "p_fa", "verdict", "n_images", "best_single_pce", "rotation"]
CSV_COLUMNS = [
    "camera", "pce", "ncc", "p_fa", "decision", "threshold", "n_images", "best_single_pce", "single_pce", "rotation",
    "shift_row", "shift_col", "n_shifts", "rows", "cols", "alignment", "estimator", "weighting", "crop", "max_shift",
    "rotations", "residual_params", "pooled_images", "notes", "warnings", "fingerprint_sha256", "db", "db_sha256",
    "tool_version",
]  # fmt: skip


def check_pool_options(*, restore: bool, residual: str, workers, scheduler, weighting: str) -> None:
    """Refuse the ``match`` options that have no meaning for one pooled probe."""
    if restore or residual != "classic":
        die("--pool pools the classic residual: leave out --restore and --residual")
    if workers or scheduler:
        die("--pool scores one probe in this process: leave out --workers and --scheduler")
    if weighting not in WEIGHTINGS:
        die(f"--weighting {weighting!r} is not one of {', '.join(WEIGHTINGS)}")


def _pooled(paths, matcher: Matcher, *, singles: bool, weighting: str) -> tuple[list[dict], list[dict]]:
    """Load the images (failures named and hashed, the rest go on) and score their pooled statistic; records and
    failures.

    An image whose bytes or decoded pixels another pooled image already has is one observation of the sensor, not
    two: it fails, naming the other. Raises ``ValueError`` when nothing can be pooled (every image failed), and
    :class:`spncli.pooling.PoolSizeError` (naming files and sizes) when the images cannot be pooled together.
    """
    evidences, failed, seen = [], [], {}
    for path in paths:
        try:
            ev = load_image(path, max_pixels=State.max_pixels)
            repeated = repeated_image(ev, seen)
            if repeated:
                raise EvidenceError(str(path), f"{repeated}: pooled once")
            decoder_warnings({"path": str(path), "warnings": ev.warnings})
            evidences.append(ev)
        except EvidenceError as exc:
            fail_line(exc.path, exc.reason)
            failed.append({"path": str(path), "reason": exc.reason, **unscored_digest(path)})
    if not evidences:
        raise ValueError("no usable image to pool: every image failed")
    try:
        records = pool_match(evidences, matcher, singles=singles, weighting=weighting)
    except EvidenceError as exc:
        raise ValueError(f"{exc.path}: {exc.reason}") from None
    for line in records[0]["notes"] if records else ():
        note(line)
    return records, failed


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
    extra = {"db": os.path.abspath(db), "db_sha256": db_sha, "tool_version": __version__}

    def annotated(records: list[dict]) -> list[dict]:
        return [r | extra | {"warnings": list(leaks.get(r["camera"], ()))} for r in records]

    paths = image_paths(images)  # no image file at all: one line, exit 2, before any case is touched
    made, head = {}, None
    try:
        if case is None:
            made["records"], made["failed"] = _pooled(paths, matcher, singles=singles, weighting=weighting)
        else:

            def compute(c):
                made["records"], made["failed"] = _pooled(paths, matcher, singles=singles, weighting=weighting)
                made["name"] = next_pool_name(c)
                return pool_files(made["name"], annotated(made["records"]), made["failed"])

            parameters = settings.as_dict() | {"weighting": weighting, "singles": singles,
                                               "database": os.path.abspath(db), "database_sha256": db_sha,
                                               "cameras": names}  # fmt: skip
            head = run_analysis(case, images, "pool", parameters, compute, examiner=examiner, case_id=case_id)
    except (PoolSizeError, CaseError) as exc:  # the images cannot be pooled together, or the case refuses: usage
        die(str(exc))
    except ValueError as exc:  # every image failed (each named above)
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
    images = records[0]["images"] if records else []
    if format is Format.csv:  # lists as JSON in one cell: a file name cannot forge another entry
        cell = {"pooled_images": json.dumps([{k: im[k] for k in ("path", "sha256", "weight_share")} for im in images]),
                "notes": json.dumps(records[0]["notes"]) if records else "[]"}  # fmt: skip
        render([r | cell | {"warnings": json.dumps(r["warnings"]), "single_pce": json.dumps(r.get("single_pce")),
                            "residual_params": json.dumps(r.get("residual_params"))} for r in records],
               format, CSV_COLUMNS)  # fmt: skip
        return
    pooled = "; ".join(f"{printable(im['path'])} (SHA-256 {im['sha256']})" for im in images)
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
    caption = escape(f"Pooled: {pooled}. A PCE at or below the threshold does not exclude the camera.")
    render(view, format, columns, title=f"Pooled PCE of {records[0]['n_images'] if records else 0} image(s) "
           f"as one probe (threshold {threshold:g})", caption=caption)  # fmt: skip
