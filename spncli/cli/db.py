"""``spn db``: list, show and remove cameras of a fingerprint database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..store import FingerprintStore, StoreError
from . import app
from ._common import EXIT_SOME_FAILED, Format, die, error_line, out, render

db_app = typer.Typer(help="Manage a fingerprint database: list, show, remove.", no_args_is_help=True)
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
        )
    render(
        rows,
        format,
        ["camera", "make", "model", "serial", "image_count", "rows", "cols", "created_utc", "sha256"],
        title=f"Fingerprints in {db}",
    )
    if bad:
        raise typer.Exit(EXIT_SOME_FAILED)


@db_app.command()
def show(db: DbPath, camera: Annotated[str, typer.Argument(help="Camera id.")]):
    """Print everything recorded for one camera (JSON), after verifying its checksum."""
    try:
        fp = FingerprintStore(db).load(camera)
    except StoreError as exc:
        die(str(exc))
    out.print_json(json.dumps(fp.meta | {"sha256": fp.sha256, "checksum_verified": True}))


@db_app.command()
def remove(db: DbPath, camera: Annotated[str, typer.Argument(help="Camera id.")]):
    """Remove one camera from the database."""
    try:
        FingerprintStore(db).remove(camera)
    except StoreError as exc:
        die(str(exc))
    out.print(f"removed {camera} from {db}")
