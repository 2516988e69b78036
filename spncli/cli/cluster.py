"""``spn cluster``: blind grouping of images by source camera, optionally into a case folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..caseanalysis import cluster_files, cluster_order, run_analysis
from ..casefile import CaseError
from ..cluster import ClusterResult, ClusterSettings, cluster_fingerprint, cluster_images
from ..evidence import EvidenceError
from ..leaks import Screener, screen_summary
from ..plots import similarity_png
from ..provenance import OutputInsideEvidence, atomic_write_json, check_output_location, writable_file
from ..store import FingerprintStore, StoreError, check_camera_id
from ._app import State, app
from ._common import EXIT_SOME_FAILED, Format, crop_option, die, err, fail_line, image_paths, note, render, warn

CLUSTER_COLUMNS = ["cluster", "size", "image", "rotation", "member_z", "jpeg_quality", "sha256"]
CLUSTER_CAPTION = (
    "Images in one cluster are consistent with one source camera. An image alone was not placed: "
    "that does not exclude any camera (small, dark, textured or compressed images give weak scores)."
)

FormatOption = Annotated[Format, typer.Option("--format", "-f", help="table, json (one JSON record) or csv.")]


def _check_outputs(outputs, inputs) -> None:
    for path in outputs:
        if path is not None:
            try:
                check_output_location(path, inputs)
                writable_file(path)
            except (OutputInsideEvidence, ValueError) as exc:
                die(str(exc))


def _emit_json(record: dict) -> None:
    sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _stored_by_this_run(store: FingerprintStore, camera: str, result, c: dict, case: Path | None) -> str | None:
    """K's SHA-256 of ``camera`` when it is this cluster's fingerprint stored for this case by a run that was killed
    before the case recorded it (same case, same member SHA-256s); None otherwise."""
    if case is None or not store.path.exists() or camera not in store.cameras():
        return None
    sha, meta, _shape = store.header(camera)
    members = sorted(result.images[i]["sha256"] for i in c["members"])
    same = meta.get("case") == str(case.absolute()) and sorted(s["sha256"] for s in meta.get("sources", [])) == members
    return sha if same else None


def _store_clusters(result, db: Path, prefix: str, min_size: int, replace: bool, case: Path | None = None) -> int:
    """Store one fingerprint per cluster of ``min_size`` or more, each leak-screened; return the number of failures.

    A fingerprint this case's earlier, killed run stored for the same members is kept, so that the run can simply be
    made again. A database that cannot be written raises ``ValueError`` (with --case: the run ends with a failed
    entry)."""
    try:
        store, failed = FingerprintStore(db), 0
    except StoreError as exc:
        raise ValueError(str(exc)) from None
    for c in result.clusters:
        if c["size"] < min_size:
            continue
        camera = f"{prefix}{c['id']:02d}"
        try:
            check_camera_id(camera)
            if not replace and (kept := _stored_by_this_run(store, camera, result, c, case)) is not None:
                c["fingerprint_camera"], c["fingerprint_sha256"] = camera, kept
                err.print(f"kept {camera}: stored for these {c['size']} image(s) by this case's interrupted run")
                continue
            k, meta = cluster_fingerprint(result, c, max_pixels=State.max_pixels)
            c["fingerprint_camera"] = camera
            origin = {"camera": camera, "case": str(case.absolute()) if case else None}
            screen = Screener(store, camera, k, sources=[s["sha256"] for s in meta["sources"]])
            c["fingerprint_sha256"] = store.add(camera, k, meta | origin, replace=replace, screen=screen)
            err.print(f"stored {camera}: {c['size']} image(s), {meta['cols']}x{meta['rows']} (cols x rows), in {db}")
            summary, warnings = screen_summary(camera, screen.result)
            err.print(summary)
            for line in warnings:
                warn(line)
        except EvidenceError as exc:
            fail_line(exc.path, exc.reason)
            failed += 1
        except StoreError as exc:
            raise ValueError(str(exc)) from None
    return failed


@app.command()
def cluster(
    inputs: Annotated[list[Path], typer.Argument(help="Images or folders (walked recursively).", readable=False)],
    crop: Annotated[
        str | None,
        typer.Option(help="Analysis size N or HxW (centre crop) [default: 1024, or the smallest image's side]."),
    ] = None,
    alpha: Annotated[
        float, typer.Option(min=1e-12, max=0.5, help="False-alarm probability of the whole grouping (all tests).")
    ] = 1e-3,
    to_db: Annotated[
        Path | None, typer.Option("--to-db", help="Store a fingerprint per cluster in this HDF5 database.")
    ] = None,
    prefix: Annotated[str, typer.Option(help="Camera id prefix of stored cluster fingerprints.")] = "cluster-",
    min_size: Annotated[int, typer.Option(min=2, help="Smallest cluster stored with --to-db.")] = 2,
    replace: Annotated[bool, typer.Option(help="Overwrite stored cameras of the same id.")] = False,
    format: FormatOption = Format.table,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the full result (with the similarity matrix) as JSON.")
    ] = None,
    case: Annotated[
        Path | None,
        typer.Option("--case", help="Case folder: the clustering and its matrix picture go into its audit chain."),
    ] = None,
    examiner: Annotated[str | None, typer.Option(help="Examiner's name for the audit trail (with --case).")] = None,
    case_id: Annotated[str | None, typer.Option("--case-id", help="Case identifier for the audit trail.")] = None,
):
    """Group images by source camera with no reference camera (blind PRNU clustering).

    Residuals at one analysis size (centre crop; portrait images rotated by 90
    degrees in the analysis), spectral peaks shared by the set (JPEG grid)
    notched out; every pair scored by its PCE at zero shift (two matrix
    products); clusters merged on their consensus while it is significant at
    the false-alarm probability --alpha over all the tests made (Bonferroni),
    and only when every member stays supported by the others. An image that
    cannot be placed stays alone.

    With --case DIR the result goes into a case folder under its lock:
    cluster/clusters.json (clusters, members, pairwise scores, the threshold
    and the false-alarm probability it came from, every image's SHA-256) and
    cluster/similarity.png (the matrix ordered by cluster), both recorded in
    the audit chain (spn case verify), and shown by spn report.
    """
    size = crop_option(crop)
    _check_outputs([to_db, out], inputs)
    try:
        settings = ClusterSettings(crop=size, alpha=alpha)
        if to_db is not None:
            check_camera_id(f"{prefix}00")
    except (ValueError, StoreError) as exc:
        die(str(exc))
    for path in (to_db, out):
        if case is not None and path is not None and path.resolve().is_relative_to(case.resolve()):
            die(f"{path}: inside the case folder {case}; only the case's own files go there (write it outside)")
    store = (lambda result: _store_clusters(result, to_db, prefix, min_size, replace, case)) if to_db else None
    paths = image_paths(inputs, absolute=False)  # before any case is touched: none at all is one line, exit 2
    if len(paths) < 2:
        die(f"clustering needs at least two images; the inputs hold one ({paths[0]})")
    head = None
    if case is None:
        try:
            result, failed = _cluster(paths, settings, store)
        except ValueError as exc:
            die(str(exc), EXIT_SOME_FAILED)
    else:
        made = {}

        def compute(_case):
            made["result"], made["failed"] = _cluster(paths, settings, store)
            return cluster_files(made["result"].as_dict(), similarity_picture(made["result"]))

        parameters = settings.as_dict() | {"to_db": str(to_db) if to_db else None, "prefix": prefix,
                                           "min_size": min_size, "max_pixels": State.max_pixels}  # fmt: skip
        try:
            head = run_analysis(case, inputs, "cluster", parameters, compute, examiner=examiner, case_id=case_id)
        except CaseError as exc:  # the case refuses (busy, does not verify, ...): nothing was measured
            die(str(exc))
        except ValueError as exc:  # as without --case; the run's failure is audited
            die(str(exc), EXIT_SOME_FAILED)
        result, failed = made["result"], made["failed"]
    record = result.as_dict()
    if head is not None:
        record |= {"case": str(case), "audit_head": head}
    if out is not None:
        atomic_write_json(out, record)
    if format is Format.json:
        _emit_json(record)
    else:
        rows = [
            im | {"image": Path(im["path"]).name, "size": result.clusters[im["cluster"]]["size"]}
            for im in sorted(result.images, key=lambda im: (im["cluster"], im["path"]))
        ]
        title = f"{result.info['n_clusters']} cluster(s) of {result.info['n_images']} image(s)"
        caption = (
            f"Merged above z {result.info['z_threshold']:.2f} (PCE {result.info['pce_threshold']:.1f}): false-alarm "
            f"probability {alpha:g} over {result.info['n_tests']} tests. {CLUSTER_CAPTION}"
        )
        render(rows, format, CLUSTER_COLUMNS if format is Format.csv else CLUSTER_COLUMNS[:-1], title=title,
               caption=caption)
    if head is not None:
        err.print(f"case {case}: cluster/clusters.json and cluster/similarity.png written and audited")
        err.print(f"audit chain head: {head}  (note it: spn case verify {case} --head HASH)")
    grouped = sum(c["size"] for c in result.clusters if c["size"] > 1)
    err.print(
        f"{result.info['n_images']} image(s): {grouped} in {sum(c['size'] > 1 for c in result.clusters)} group(s), "
        f"{result.info['n_images'] - grouped} alone; {failed} file(s) failed"
    )
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def _cluster(paths, settings: ClusterSettings, store) -> tuple[ClusterResult, int]:
    """Cluster the images (and store the cluster fingerprints); the result and the number of failures."""
    result = cluster_images(
        paths,
        settings,
        max_pixels=State.max_pixels,
        on_error=fail_line,
        on_progress=lambda p: note(f"residual {p}"),
    )
    failed = len(result.failed)
    if store is not None:
        failed += store(result)
    return result, failed


def similarity_picture(result: ClusterResult) -> bytes:
    """The similarity matrix ordered by cluster, as a PNG."""
    record = {"clusters": result.clusters, "images": result.images}
    order = cluster_order(record)
    sizes = [c["size"] for c in sorted(result.clusters, key=lambda c: (-c["size"], c["id"]))]
    return similarity_png(result.z, order, sizes, result.info["z_threshold"])
