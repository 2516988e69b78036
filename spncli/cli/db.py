"""``spn db``: list, show and remove cameras of a fingerprint database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..leaks import check_unscreened, store_flags
from ..store import FingerprintStore, StoreError
from ._app import app
from ._common import EXIT_SOME_FAILED, Format, die, error_line, finite, out, render

db_app = typer.Typer(help="Manage a fingerprint database: list, show, leaks, remove.", no_args_is_help=True)
app.add_typer(db_app, name="db")

DbPath = Annotated[Path, typer.Option("--db", help="HDF5 fingerprint database.")]


@db_app.command("list")
def list_(
    db: DbPath,
    format: Annotated[Format, typer.Option("--format", "-f", help="table, json or csv.")] = Format.table,
):
    """List the cameras with make, model, image count and size (each entry's checksum seal verified).

    A camera whose entry is damaged or was changed gets an error line and is
    left out of the list; the exit code is then 1.
    """
    store = FingerprintStore(db)
    try:
        cameras = store.cameras()
    except StoreError as exc:
        die(str(exc))
    flags, _problems = store_flags(store)  # a camera whose header fails gets its error line below
    rows, bad = [], 0
    for cam in cameras:
        try:
            m = store.meta(cam)
        except StoreError as exc:
            error_line(str(exc))
            bad += 1
            continue
        rows.append(
            {k: m.get(k) for k in ("camera", "make", "model", "serial", "image_count", "rows", "cols")}
            | {"created_utc": m.get("finished_utc"), "sha256": m["sha256"]}
            | _flag_columns(flags.get(cam, {}))
        )
    render(
        rows,
        format,
        ["camera", "make", "model", "serial", "image_count", "rows", "cols", "leaks", "periodic", "created_utc",
         "sha256"],  # fmt: skip
        title=f"Fingerprints in {db}",
    )
    if bad:
        raise typer.Exit(EXIT_SOME_FAILED)


def _flag_columns(flags: dict) -> dict:
    """``leaks`` (flagged partners and PCE) and ``periodic`` (peaks, energy share) of one camera, as text."""
    pairs = "; ".join(f"{p['camera']} (PCE {p['pce']:.1f})" for p in flags.get("pairs", []))
    periodic = flags.get("periodic")
    if periodic is None:
        shown = "not screened"
    else:
        shown = f"{periodic['n_peaks']} peak(s), {periodic['energy']:.3%}" + (" FLAGGED" if periodic["flagged"] else "")
    return {"leaks": pairs or "none", "periodic": shown}


@db_app.command()
def show(db: DbPath, camera: Annotated[str, typer.Argument(help="Camera id.")]):
    """Print everything recorded for one camera (JSON), after verifying its checksum, with its leak flags.

    ``leak_flags`` lists the cameras whose fingerprints correlate with this one
    above the threshold (recorded by either camera's screen), its periodic
    spectral peaks, and the cameras it was never compared with.
    """
    store = FingerprintStore(db)
    try:
        fp = store.load(camera)
        flags, problems = store_flags(store)
    except StoreError as exc:
        die(str(exc))
    record = fp.meta | {"sha256": fp.sha256, "checksum_verified": True}
    out.print_json(json.dumps(record | {"leak_flags": flags.get(camera, {}) | {"problems": problems}}))


@db_app.command()
def leaks(
    db: DbPath,
    format: Annotated[Format, typer.Option("--format", "-f", help="table, json or csv.")] = Format.table,
    check: Annotated[
        bool,
        typer.Option(
            "--check-unscreened",
            help="Also compute the PCE of every pair no screen compared (cameras added by an older version); "
            "shown, not recorded.",
        ),
    ] = False,
    threshold: Annotated[
        float,
        typer.Option(help="PCE above which --check-unscreened flags a pair (finite, > 0).",
                     callback=finite("--threshold", positive=True)),  # fmt: skip
    ] = 60.0,
):
    """Leak flags of the database: camera pairs whose fingerprints correlate, and periodic artifacts.

    Each camera added by this version was compared with every camera stored
    before it (PCE of the two fingerprints; flagged above the threshold given
    to spn fingerprint, 60 by default), and its spectrum searched for periodic
    peaks. One row per camera: its flagged partners, its periodic peaks and
    how many cameras it was never compared with (added by an older version).
    --check-unscreened computes those pairs' PCE now and shows it (nothing is
    written). A camera whose record cannot be read gets an error line; exit
    code 1.
    """
    store = FingerprintStore(db)
    try:
        flags, problems = store_flags(store, whole_files=True)  # a damaged camera file is named, not listed clean
    except StoreError as exc:
        die(str(exc))
    for line in problems:
        error_line(line)
    rows = []
    for cam, f in sorted(flags.items()):
        periodic = f.get("periodic") or {}
        row = {
            "record": "camera",
            "camera": cam,
            "flagged_with": [{"camera": p["camera"], "pce": p["pce"]} for p in f["pairs"]],
            "periodic_flagged": periodic.get("flagged"),
            "periodic_peaks": periodic.get("n_peaks"),
            "periodic_energy": periodic.get("energy"),
            "peaks": periodic.get("peaks"),
            "screened": f["screened"],
            "unscreened_pairs": f["unscreened"],
        }
        if format is not Format.json:  # one line per camera: partners and peaks as text
            row |= _flag_columns(f) | {"unscreened_pairs": len(f["unscreened"])}
        rows.append(row)
    render(rows, format, ["camera", "leaks", "periodic", "unscreened_pairs"], title=f"Leak flags in {db}")
    if check:
        computed = [{"record": "pair computed now"} | r for r in check_unscreened(store, flags, threshold=threshold)]
        for r in computed:
            if r["pce"] is None:
                error_line(r["error"])
        render(computed, format, ["camera", "other", "pce", "flagged", "size"],
               title=f"Pairs never screened, computed now (not recorded; flagged above PCE {threshold:g})")  # fmt: skip
        problems += [r for r in computed if r["pce"] is None]
    if problems:
        raise typer.Exit(EXIT_SOME_FAILED)


@db_app.command()
def remove(db: DbPath, camera: Annotated[str, typer.Argument(help="Camera id.")]):
    """Remove one camera from the database."""
    try:
        FingerprintStore(db).remove(camera)
    except StoreError as exc:
        die(str(exc))
    out.print(f"removed {camera} from {db}")
