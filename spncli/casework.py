"""The case workflow: one locked, resumable, audited run of ``match`` over evidence into a case folder.

:func:`run_case` is what ``spn match --case`` does, without the command line:

1. the case folder is checked (not a link, not a file, not inside the evidence, not holding it) and its
   lock taken for the whole run (a second run fails at once, naming the holder);
2. a case that changed since its audit trail recorded it is refused (a run never builds on a case that
   does not verify), as is a resume with another database or other scoring parameters;
3. the images are scored through the one executor (:func:`spncli.batch.execute`: in-process or Dask),
   each committed as one unit (pictures first, rows last, fsync'd); images already in the case, keyed
   by (path, SHA-256), are skipped, so a second path with the same bytes gets its own rows;
4. Ctrl-C or SIGTERM is deferred: the run stops after the image in progress is committed (a second one
   stops at once, which leaves the case as a kill does: every committed image kept);
5. at the end, errors settled, ``results.csv`` and ``manifest.json`` written (every walked path, with
   duplicates and their rows), and an audit entry records the SHA-256 of every file the case holds;
   its hash, the chain head, is returned for the examiner's notes.

Nothing here prints: the caller renders through the ``on_*`` callbacks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .batch import close_client, execute, make_client
from .casefile import (
    Case,
    CaseBusy,
    CaseError,
    input_problems,
    scored_digest,
    scored_inputs,
    scoring_parameters,
    unscored_digest,
)
from .evidence import DEFAULT_MAX_PIXELS
from .identify import Matcher, gather_inputs, no_images_found
from .jobs import MatchJob
from .provenance import OutputInsideEvidence, check_apart, utc_now

__all__ = ["CaseSummary", "CaseError", "CaseBusy", "open_case", "run_case", "case_parameters"]

@dataclass
class CaseSummary:
    """What one run did. ``status``: ``"completed"`` or ``"interrupted"``; ``head``: the audit chain head."""

    folder: Path
    status: str
    files: int
    scored: int
    skipped: int
    errors: int
    consistent: int
    head: str
    duplicates: list[dict] = field(default_factory=list)


class _Stop(Exception):
    """Raised after a committed image when a stop was asked for."""


def case_parameters(matcher: Matcher, *, max_pixels: int, workers=None, scheduler=None) -> dict:
    """The parameters recorded with a case (all but :data:`spncli.casefile.RUN_ONLY` must agree between its
    runs)."""
    restorer = matcher.restorer
    screen = getattr(matcher, "prescreen", None)  # recorded only when on: cases without it resume as before
    return matcher.settings.as_dict() | ({"prescreen": screen.setting} if screen is not None else {}) | {
        "restored": restorer is not None,
        "weights_sha256": restorer.weights_sha256 if restorer is not None else None,
        "cameras": [c for c, _ in matcher.cameras],
        "max_pixels": max_pixels,
        "workers": workers,
        "scheduler": scheduler,
    }


def _check_resume(case: Case, parameters: dict, db_sha: str) -> tuple[bool, int | None]:
    """Refuse a case that does not verify (its files, and the scored inputs re-hashed), or one started with
    another database or parameters.

    Returns whether the last run ended without an end entry (killed), and then the size of results.jsonl
    that the audit trail covers (its last checkpoint): the rows past it are not adopted."""
    entries = case.base_entries()
    if entries is None:
        return False, None  # a new case (Case.create refused a folder holding files but no audit trail)
    open_run = case._last_run_open(entries)
    if open_run is not None and open_run.get("event") != "match-start":
        raise CaseError(f"{case.root}: its last run ({open_run.get('event')}) has no end entry; run that command "
                        "again first")  # fmt: skip
    first = next((e for e in entries if e.get("event") == "match-start"), None)
    if first is not None:
        if first.get("database_sha256") != db_sha:
            raise CaseError(
                f"{case.root}: the case was started with another database (SHA-256 "
                f"{str(first.get('database_sha256'))[:16]}...); use a new case folder"
            )
        before, now = scoring_parameters(first.get("parameters", {})), scoring_parameters(parameters)
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        if changed:
            diff = ", ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in changed)
            raise CaseError(f"{case.root}: the case was started with other parameters ({diff}); use a new case folder")
    protected = None
    if open_run is not None:
        recorded, _ = case.recorded_files(entries)
        protected = recorded.get("results.jsonl", {}).get("size", 0)
    _check_scored_inputs(case, protected)
    return open_run is not None, protected


def _check_scored_inputs(case: Case, protected: int | None = None) -> None:
    """Refuse to build on a case whose scored evidence changed: every input its rows name is re-hashed against
    the SHA-256 they record (the rows, not the manifest: after a kill only the rows are covered by the audit
    trail). Inputs that failed or were not reached are tried again by the run."""
    problems: list[str] = []
    for item in scored_inputs(case.rows(upto=protected)):  # after a kill: the rows the trail covers
        problems += input_problems(item)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CaseError(f"{case.root}: the evidence changed since the case scored it: {problems[0]}{more}; a case "
                        "is built on unchanged evidence: restore it, or use a new case folder")  # fmt: skip


def _inputs(case: Case, walked: list[str], errors: list[dict], others: Sequence[str] = ()
            ) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """Every input (scored, error, not an image, or not reached) and the groups of paths holding the same
    bytes.

    A scored input's ``sha256`` is that of the file read (a saved residual's own file; its source image's is
    ``source_sha256``). A failed input is hashed here (:func:`spncli.casefile.unscored_digest`) unless its
    error row has the digest of the bytes refused; files that are not images are listed with their size, not
    read; inputs a stopped run did not reach are listed only (the next run reads them).
    """
    rows_of: dict[str, list[dict]] = {}
    for r in case.rows():
        rows_of.setdefault(r["image"], []).append(r)
    inputs: dict[str, dict] = {}
    for path, rs in rows_of.items():
        inputs[path] = {"path": path, **scored_digest(rs[0]), "size_bytes": rs[0].get("size_bytes"),
                        "status": "scored", "rows": len(rs)}  # fmt: skip
    for e in errors:
        item = inputs.setdefault(e["file"], {"path": e["file"], "status": "error", "reason": e["reason"]})
        if item["status"] == "error":
            item.update({"sha256": e["sha256"]} if e.get("sha256") else unscored_digest(e["file"]))
    for path in others:
        try:
            size = os.lstat(path).st_size
        except OSError:
            size = None
        inputs.setdefault(path, {"path": path, "sha256": None, "size_bytes": size,
                                 "status": "not an image or saved residual: not read"})  # fmt: skip
    for path in walked:
        inputs.setdefault(path, {"path": path, "sha256": None, "status": "not reached (run interrupted)"})
    by_sha: dict[str, list[str]] = {}
    for item in inputs.values():
        if item["status"] == "scored":
            by_sha.setdefault(item["sha256"], []).append(item["path"])  # the files' own bytes
    duplicates = []
    for sha, paths in sorted(by_sha.items()):
        if len(paths) > 1:
            duplicates.append({
                "sha256": sha,
                "paths": [{"path": p, "rows": [{"camera": r["camera"], "pce": r["pce"], "decision": r["decision"]}
                                               for r in sorted(rows_of[p], key=lambda r: r["camera"])]}
                          for p in sorted(paths)],
            })  # fmt: skip
            for p in paths:
                inputs[p]["same_bytes_as"] = sorted(set(paths) - {p})
    return sorted(inputs.values(), key=lambda i: i["path"]), duplicates


@contextlib.contextmanager
def _deferred_signals(enabled: bool, on_notice: Callable[[str], None]):
    """While the block runs, SIGINT/SIGTERM only ask for a stop; a second one stops at once."""
    asked = {"n": 0}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield asked
        return

    def handler(signum, frame):
        asked["n"] += 1
        if asked["n"] > 1:
            raise KeyboardInterrupt
        on_notice("interrupt: stopping after the image in progress is committed (again: stop at once)")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield asked
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def open_case(folder: str | os.PathLike, evidence) -> Case:
    """The case folder, created if new, once checked apart from the evidence (neither inside the other).

    Raises
    ------
    CaseError
        Naming the folder or the evidence.
    """
    try:
        check_apart(folder, evidence)
    except OutputInsideEvidence as exc:
        raise CaseError(str(exc)) from None
    case = Case(folder)
    case.create()
    return case


def run_case(
    evidence: Sequence[str | os.PathLike],
    folder: str | os.PathLike,
    matcher: Matcher,
    *,
    db: str | os.PathLike,
    db_sha: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    cluster: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
    examiner: str | None = None,
    case_id: str | None = None,
    on_start: Callable[[int], None] = lambda total: None,
    on_result: Callable[[dict], None] = lambda result: None,
    on_notice: Callable[[str], None] = lambda message: None,
    stop: Callable[[], bool] = lambda: False,
    handle_signals: bool = True,
) -> CaseSummary:
    """Score the evidence into a case folder: locked, resumable, committed image by image, audited.

    Parameters
    ----------
    evidence : sequence of path-like
        Files and folders (walked by :func:`spncli.identify.gather_inputs`).
    folder : path-like
        The case folder (created if absent).
    matcher : Matcher
    db, db_sha : path-like, str
        The fingerprint database and its SHA-256 (a case keeps one database).
    max_pixels : int
    cluster, workers, scheduler
        Dask (a local cluster of ``workers`` processes, or ``scheduler``), or in-process when
        ``cluster`` is False and no scheduler is given.
    examiner, case_id : str or None
        Recorded in the audit trail and the manifest.
    on_start, on_result, on_notice : callable
        Called with the number of files walked, with each result (after it is committed), and with
        a message meant for the user.
    stop : callable
        Checked after each committed image; True stops the run as Ctrl-C does.
    handle_signals : bool
        Defer SIGINT/SIGTERM to the next commit (main thread only).

    Returns
    -------
    CaseSummary

    Raises
    ------
    CaseError
        The folder cannot be used (one line naming it); :class:`CaseBusy` when another run holds it.
    """
    others: list = []
    walked = [os.path.abspath(p) for p in gather_inputs(evidence, on_other=others.append, residuals=True)]
    if not walked:  # before the case folder is made or locked: nothing is left behind
        raise CaseError(no_images_found([os.path.abspath(p) for p in evidence], len(others)))
    case = open_case(folder, evidence)
    parameters = case_parameters(matcher, max_pixels=max_pixels, workers=workers, scheduler=scheduler)
    with case.lock(), _deferred_signals(handle_signals, on_notice) as asked:
        killed, protected = _check_resume(case, parameters, db_sha)
        cameras = {c for c, _ in matcher.cameras}
        if killed:
            done = case.done(cameras, protected=protected)
            if case.dropped_lines:
                on_notice(f"dropped {case.dropped_lines} row(s) past the last audit entry that records results.jsonl "
                          "(a killed run's after its last checkpoint; cases written before checkpoints keep only "
                          "their completed runs): their images are scored again")  # fmt: skip
            removed = case.tidy()
            if removed:
                on_notice(f"removed {len(removed)} file(s) a killed run left unfinished")
        else:
            done = case.done(cameras)
        client = None
        if cluster or scheduler:
            try:
                client = make_client(workers, scheduler)
            except OSError as exc:
                raise CaseError(f"cannot reach the Dask scheduler {scheduler}: {exc}" if scheduler
                                else f"the local Dask cluster failed to start: {exc}") from None  # fmt: skip
        try:
            return _run(case, matcher, evidence, (walked, others), parameters, client, done, asked, stop,
                        db=db, db_sha=db_sha, examiner=examiner, case_id=case_id,
                        on_start=on_start, on_result=on_result, on_notice=on_notice)  # fmt: skip
        finally:
            close_client(client)


def _run(case, matcher, evidence, found, parameters, client, done, asked, stop, *, db, db_sha, examiner, case_id,
         on_start, on_result, on_notice=lambda message: None) -> CaseSummary:  # fmt: skip
    started, t0 = utc_now(), time.perf_counter()
    try:
        previous_runs = (case.read_manifest() or {}).get("runs", [])
    except ValueError:  # only after a killed run (a finished one verified): the runs are in the audit trail too
        previous_runs = []
    given = [os.path.abspath(p) for p in evidence]  # absolute and normal: one key per file, whatever the spelling
    paths, others = found  # the image files walked (absolute; never none) and the other files
    case.audit(
        "match-start",
        parameters=parameters,
        database=str(db),
        database_sha256=db_sha,
        examiner=examiner,
        case_id=case_id,
        evidence=given,
        resumed_images=len(done),
    )
    if others:  # nothing skipped silently
        on_notice(f"{len(others)} file(s) in the folders are not images or saved residuals: not read")
    on_start(len(paths))
    counts = {"scored": 0, "skipped": 0, "errors": 0}

    def stopping() -> bool:
        return asked["n"] > 0 or stop()

    def handle(result: dict) -> None:
        if result.get("lost") and stopping():
            raise _Stop  # its worker was stopped with us: not an error of the file; a resume retries it
        if "error" in result:
            case.add_error(result["path"], result["error"], result.get("sha256"))
            counts["errors"] += 1
        elif result.get("skipped"):
            counts["skipped"] += 1
        else:
            case.commit_image(result["records"], result["preview"], result["surfaces"], result.get("thumbnail"))
            case.checkpoint()  # what a resume after a kill may keep
            counts["scored"] += 1
        on_result(result)
        if stopping():
            raise _Stop

    status = "completed"
    try:
        if stopping():
            raise _Stop
        job = MatchJob(matcher, frozenset(done), parameters["max_pixels"])
        gpu = matcher.restorer is not None or matcher.device == "cuda"
        execute(paths, job, on_result=handle, client=client, gpu=gpu)
    except _Stop:
        status = "interrupted"
    errors = case.settle_errors()
    case.write_csv()
    inputs, duplicates = _inputs(case, paths, errors, [os.path.abspath(p) for p in others])
    rows = case.rows()
    run = {
        "started_utc": started,
        "finished_utc": utc_now(),
        "status": status,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "files": len(paths),
        **counts,
        "resumed_images": len(done),
        "max_pixels": parameters["max_pixels"],
        "workers": parameters["workers"],
        "scheduler": parameters["scheduler"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    case.write_manifest({
        "case_id": case_id,
        "examiner": examiner,
        "evidence": given,
        "database": str(db),
        "database_sha256": db_sha,
        "parameters": parameters,
        "runs": previous_runs + [run],
        "inputs": inputs,
        "duplicates": duplicates,
    })  # fmt: skip
    end = case.audit(f"match-{status}", examiner=examiner, case_id=case_id, **counts, files=case.files())
    return CaseSummary(
        folder=case.root,
        status=status,
        files=len(paths),
        **counts,
        consistent=sum(r["decision"] == "consistent" for r in rows),
        head=end["hash"],
        duplicates=duplicates,
    )
