"""Blind clustering and pooled probes written into a case folder, inside its audit chain.

:func:`run_analysis` is the one path by which ``spn cluster --case`` and ``spn match --pool --case`` write
into a case (the match batch has its own, :func:`spncli.casework.run_case`):

1. the case folder is checked as for a match (not a link, not inside the evidence, not holding it),
   created if new, and its lock held for the whole run (a second run fails at once, naming the holder);
2. a case that changed since its audit trail recorded it is refused, as is one whose last match run
   has no end entry (resume that first); a clustering or pooling run that was killed is simply run again:
   the files it left under ``cluster/`` or ``pool/`` (never recorded as completed) are removed first and
   named, with their SHA-256, in the new start entry (``discarded``), so no later run adopts them;
3. a ``<kind>-start`` audit entry records the parameters and the evidence given; the analysis runs; its
   files are written atomically into ``cluster/`` or ``pool/`` (a JSON record whose ``inputs`` list every
   image with its SHA-256, so ``spn case verify`` re-hashes them, and pictures);
4. a ``<kind>-completed`` entry records the SHA-256 of every file the case holds (or ``<kind>-failed``
   with the reason, when the analysis could not be made); its hash, the new chain head, is returned.

A case holds at most one clustering (a second is refused: the first stays the recorded one) and any
number of pooled probes (``pool/pool-001.json``, ``pool-002`` ...). Nothing here prints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .casefile import ANALYSES, Case, CaseError
from .casework import open_case

__all__ = [
    "AnalysisFiles", "run_analysis", "cluster_files", "pool_files", "cluster_order", "next_pool_name", "CLUSTER_RECORD",
    "CLUSTER_PICTURE",
]  # fmt: skip

CLUSTER_RECORD = "cluster/clusters.json"
CLUSTER_PICTURE = "cluster/similarity.png"


@dataclass
class AnalysisFiles:
    """What one analysis puts into the case: files by path relative to the case, and a summary for the audit."""

    files: dict[str, bytes]
    summary: dict


def _json_bytes(record: dict) -> bytes:
    return (json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode()


def _check_state(case: Case, kind: str) -> None:
    """Refuse a case that does not verify, an unfinished match run, or (``cluster``) a second clustering."""
    entries = case.base_entries()
    if entries is None:
        return
    open_run = case._last_run_open(entries)
    if open_run is not None and open_run.get("event") == "match-start":
        raise CaseError(f"{case.root}: its last match run has no end entry; resume it (the same spn match --case) "
                        "before adding an analysis")  # fmt: skip
    recorded, _ = case.recorded_files(entries)
    if kind == "cluster" and CLUSTER_RECORD in recorded:
        raise CaseError(f"{case.root}: the case already holds a clustering ({CLUSTER_RECORD}); a case keeps its "
                        "first one: use a new case folder for another")  # fmt: skip


def _discard_killed_outputs(case: Case) -> dict[str, str]:
    """Remove the analysis files a killed clustering or pooling run left (not recorded by any run end); their SHA-256.

    Called under the case lock after :func:`_check_state`: the last run is then complete, or a killed
    ``cluster``/``pool`` run whose outputs were never audited as completed.
    """
    entries = case.base_entries()
    if entries is None or case._last_run_open(entries) is None:
        return {}
    recorded, _ = case.recorded_files(entries)
    discarded = {}
    for rel, info in case.files().items():
        if rel.startswith(ANALYSES) and rel not in recorded:
            discarded[rel] = info["sha256"]
            (case.root / rel).unlink()
    return discarded


def next_pool_name(case: Case) -> str:
    """``pool/pool-NNN.json``: the next free number in the case."""
    folder = case.root / "pool"
    taken = {p.name for p in folder.iterdir()} if folder.is_dir() and not folder.is_symlink() else set()
    n = 1
    while f"pool-{n:03d}.json" in taken:
        n += 1
    return f"pool/pool-{n:03d}.json"


def run_analysis(
    folder: str | os.PathLike,
    evidence: Sequence[str | os.PathLike],
    kind: str,
    parameters: dict,
    compute: Callable[[Case], AnalysisFiles],
    *,
    examiner: str | None = None,
    case_id: str | None = None,
) -> str:
    """Run one analysis into a case under its lock and audit it; return the new chain head.

    Parameters
    ----------
    folder : path-like
        The case folder (created if absent).
    evidence : sequence of path-like
        The files and folders given (recorded; the case must lie apart from them).
    kind : {"cluster", "pool"}
    parameters : dict
        Recorded in the start entry.
    compute : callable
        Called with the case once the lock is held and the case checked; returns the files to write
        (each under :data:`spncli.casefile.ANALYSES`). A ``ValueError`` it raises ends the run with a
        ``<kind>-failed`` entry and is raised again, unchanged (the images', not the case's, fault).
    examiner, case_id : str or None

    Raises
    ------
    CaseError
        The folder cannot be used (one line naming the case).
    ValueError
        The analysis could not be made from these images (``compute``'s own, after the failure is audited).
    """
    if kind not in ("cluster", "pool"):
        raise ValueError(f"kind {kind!r} is not one of cluster, pool")
    case = open_case(folder, evidence)
    given = [str(Path(p).absolute()) for p in evidence]
    with case.lock():
        _check_state(case, kind)
        discarded = _discard_killed_outputs(case)
        case.audit(f"{kind}-start", parameters=parameters, evidence=given, examiner=examiner, case_id=case_id,
                   **({"discarded": discarded} if discarded else {}))  # fmt: skip
        try:
            made = compute(case)
        except ValueError as exc:
            case.audit(f"{kind}-failed", reason=str(exc), examiner=examiner, case_id=case_id, files=case.files())
            raise
        for rel, data in made.files.items():
            if not rel.startswith(ANALYSES):
                raise ValueError(f"{rel}: an analysis writes only under {', '.join(ANALYSES)}")
            case.write_analysis(rel, data)
        end = case.audit(f"{kind}-completed", examiner=examiner, case_id=case_id, **made.summary,
                         written=sorted(made.files), files=case.files())  # fmt: skip
    return end["hash"]


def cluster_files(record: dict, picture_png: bytes) -> AnalysisFiles:
    """The clustering's files: its JSON record (with ``inputs`` for verification) and the matrix picture."""
    record = record | {"inputs": [{"path": im["path"], "sha256": im["sha256"]} for im in record["images"]]}
    summary = {
        "n_images": record["n_images"],
        "n_clusters": record["n_clusters"],
        "failed": len(record.get("failed", [])),
        "z_threshold": record["z_threshold"],
    }
    return AnalysisFiles({CLUSTER_RECORD: _json_bytes(record), CLUSTER_PICTURE: picture_png}, summary)


def pool_files(name: str, records: list[dict], failed: list[dict]) -> AnalysisFiles:
    """A pooled probe's file: every camera's record, the pooled images (path, SHA-256) and the files that failed
    (path, reason and :func:`spncli.casefile.unscored_digest`'s fields); ``inputs`` lists both for verify."""
    images = records[0]["images"] if records else []
    record = {
        "pooled": [{k: v for k, v in r.items() if k != "images"} for r in records],
        "images": images,
        "inputs": [{"path": im["path"], "sha256": im["sha256"]} for im in images]
        + [{**f, "status": "error"} for f in failed],  # path, reason, unscored_digest's fields: verify re-hashes
        "failed": failed,
    }
    best = max(records, key=lambda r: r["pce"]) if records else None
    summary = {"n_images": len(images), "cameras": len(records), "best_camera": best and best["camera"],
               "best_pce": best and best["pce"]}  # fmt: skip
    return AnalysisFiles({name: _json_bytes(record)}, summary)


def cluster_order(record: dict) -> np.ndarray:
    """Image indices ordered by cluster (largest first), members in path order: the matrix picture's order."""
    clusters = sorted(record["clusters"], key=lambda c: (-c["size"], c["id"]))
    paths = [im["path"] for im in record["images"]]
    return np.array([i for c in clusters for i in sorted(c["members"], key=lambda i: paths[i])], int)
