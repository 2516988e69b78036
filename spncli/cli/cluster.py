"""``spn cluster`` (blind grouping by source camera) and ``spn pool`` (several images as one probe)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..cluster import ClusterSettings, cluster_fingerprint, cluster_images
from ..evidence import EvidenceError
from ..identify import gather_inputs
from ..provenance import OutputInsideEvidence, atomic_write_json, check_output_location
from ..store import FingerprintStore, StoreError, check_camera_id
from . import State, app
from ._common import EXIT_SOME_FAILED, Format, crop_option, die, err, fail_line, render

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
            except OutputInsideEvidence as exc:
                die(str(exc))


def _emit_json(record: dict) -> None:
    sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _store_clusters(result, db: Path, prefix: str, min_size: int, replace: bool) -> int:
    """Store one fingerprint per cluster of ``min_size`` or more; return the number of failures."""
    store, failed = FingerprintStore(db), 0
    for c in result.clusters:
        if c["size"] < min_size:
            continue
        camera = f"{prefix}{c['id']:02d}"
        try:
            check_camera_id(camera)
            k, meta = cluster_fingerprint(result, c, max_pixels=State.max_pixels)
            c["fingerprint_camera"] = camera
            c["fingerprint_sha256"] = store.add(camera, k, meta | {"camera": camera}, replace=replace)
            err.print(f"stored {camera}: {c['size']} image(s), {meta['cols']}x{meta['rows']}, in {db}")
        except EvidenceError as exc:
            fail_line(exc.path, exc.reason)
            failed += 1
        except StoreError as exc:
            die(str(exc), EXIT_SOME_FAILED)
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
):
    """Group images by source camera with no reference camera (blind PRNU clustering).

    Residuals at one analysis size (centre crop; portrait images rotated by 90
    degrees in the analysis), spectral peaks shared by the set (JPEG grid)
    notched out; every pair scored by its PCE at zero shift (two matrix
    products); clusters merged on their consensus while it is significant at
    the false-alarm probability --alpha over all the tests made (Bonferroni),
    and only when every member stays supported by the others. An image that
    cannot be placed stays alone.
    """
    size = crop_option(crop)
    _check_outputs([to_db, out], inputs)
    try:
        settings = ClusterSettings(crop=size, alpha=alpha)
        if to_db is not None:
            check_camera_id(f"{prefix}00")
    except (ValueError, StoreError) as exc:
        die(str(exc))
    try:
        result = cluster_images(
            gather_inputs(inputs),
            settings,
            max_pixels=State.max_pixels,
            on_error=fail_line,
            on_progress=lambda p: err.print(f"residual {p}"),
        )
    except ValueError as exc:
        die(str(exc), EXIT_SOME_FAILED)
    failed = len(result.failed)
    if to_db is not None:
        failed += _store_clusters(result, to_db, prefix, min_size, replace)
    record = result.as_dict()
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
    grouped = sum(c["size"] for c in result.clusters if c["size"] > 1)
    err.print(
        f"{result.info['n_images']} image(s): {grouped} in {sum(c['size'] > 1 for c in result.clusters)} group(s), "
        f"{result.info['n_images'] - grouped} alone; {failed} file(s) failed"
    )
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


POOL_COLUMNS = ["camera", "pce", "p_fa", "verdict", "n_images", "best_single_pce", "rotation"]


@app.command()
def pool(
    images: Annotated[
        list[Path], typer.Argument(help="Images of one suspected source, or folders of them.", readable=False)
    ],
    db: Annotated[Path, typer.Option("--db", help="HDF5 fingerprint database.")],
    threshold: Annotated[float, typer.Option(help="PCE above which the pool is consistent with a camera.")] = 60.0,
    crop: Annotated[str | None, typer.Option(help="Centre crop of images and fingerprints: N or HxW.")] = None,
    camera: Annotated[list[str] | None, typer.Option("--camera", "-c", help="Only these cameras (repeatable).")] = None,
    singles: Annotated[bool, typer.Option(help="Also score each image alone (best single PCE).")] = False,
    weighting: Annotated[
        str, typer.Option(help="variance: each image weighted by 1/variance of its residual; none: all alike.")
    ] = "variance",
    format: Annotated[
        Format, typer.Option("--format", "-f", help="table, json (JSON Lines) or csv, on stdout.")
    ] = Format.table,
):
    """Score several images of one suspected source as ONE probe (multi-image pooling).

    The images' common PRNU is estimated by maximum likelihood as for a
    fingerprint, sum(W*I/s2)/sum(I^2/s2) with s2 each image's residual variance
    (--weighting none: all alike), and scored by PCE against every camera: one
    test per camera, with its false-alarm probability. All images must share one size
    and orientation (after --crop); otherwise nothing is scored and the files
    and sizes are named. Every pooled image is listed with its SHA-256.
    """
    from .. import __version__
    from ..evidence import load_image
    from ..identify import Matcher, MatchSettings
    from ..pooling import WEIGHTINGS, PoolSizeError, pool_match

    size = crop_option(crop)
    if weighting not in WEIGHTINGS:
        die(f"--weighting {weighting!r} is not one of {', '.join(WEIGHTINGS)}")
    try:
        store = FingerprintStore(db)
        names = store.select(camera)
        db_sha = store.file_sha256()
        matcher = Matcher((store.load(n) for n in names), MatchSettings(threshold=threshold, crop=size))
    except StoreError as exc:
        die(str(exc))
    evidences, failed = [], 0
    for path in gather_inputs(images):
        try:
            evidences.append(load_image(path, max_pixels=State.max_pixels))
        except EvidenceError as exc:
            fail_line(exc.path, exc.reason)
            failed += 1
    if not evidences:
        die("no usable image to pool", EXIT_SOME_FAILED)
    try:
        records = pool_match(evidences, matcher, singles=singles, weighting=weighting)
    except (PoolSizeError, EvidenceError) as exc:
        die(str(exc), EXIT_SOME_FAILED)
    for r in records:
        r.update(db=str(db), db_sha256=db_sha, tool_version=__version__)
    if format is Format.table:
        view = [
            r
            | {
                "verdict": f"{'consistent' if r['decision'] == 'consistent' else 'not consistent'} with {r['camera']}",
                "p_fa": r["p_fa"] if r["p_fa"] > 0 else "< 1e-300",  # below the smallest double
            }
            for r in records
        ]
        pooled = ", ".join(Path(e.path).name for e in evidences)
        render(view, format, POOL_COLUMNS if singles else POOL_COLUMNS[:-2] + POOL_COLUMNS[-1:],
               title=f"Pooled PCE of {len(evidences)} image(s) (threshold {threshold:g})",
               caption=f"Pooled: {pooled}. A PCE at or below the threshold does not exclude the camera.")
    else:
        render(records, format, [c for c in records[0] if c != "images"] if format is Format.csv else [])
    err.print(f"{len(evidences)} image(s) pooled, {len(records)} camera(s) scored, {failed} file(s) failed")
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)
