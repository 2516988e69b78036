"""``spn case verify``: check a case folder without writing to it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..casefile import Case, CaseError
from ._app import app
from ._common import EXIT_SOME_FAILED, die, err, fail_line, out

case_app = typer.Typer(help="Case folders: verify the evidence, the case files and the audit trail.",
                       no_args_is_help=True)  # fmt: skip
app.add_typer(case_app, name="case")


def _hex64(value: str | None) -> str | None:
    if value is not None and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value.lower())):
        raise typer.BadParameter("a SHA-256 head is 64 hexadecimal digits")
    return value.lower() if value else None


@case_app.command()
def verify(
    folder: Annotated[Path, typer.Argument(help="Case folder.")],
    head: Annotated[
        str | None,
        typer.Option("--head", callback=_hex64, help="The chain head noted at the end of a run: must be in the chain."),
    ] = None,
    record: Annotated[
        bool, typer.Option("--record", help="Append a 'verify' entry to the audit trail (default: write nothing).")
    ] = False,
):
    """Check the case and write nothing: the audit chain, every case file against the SHA-256 the last run
    recorded (results, errors, manifest, artifacts, reports), files added or missing, links, and every
    input re-hashed. Each difference is one line; exit 1 if there is any."""
    case = Case(folder)
    if not folder.is_dir():
        die(f"{folder}: no such case folder")
    try:
        v = case.verify(head=head)
    except CaseError as exc:
        die(str(exc), EXIT_SOME_FAILED)
    for p in v.problems:
        fail_line(str(folder), p)
    for note in v.notes:
        err.print(f"note: {note}")
    out.print(f"audit chain head: {v.head} ({v.entries} entries)")
    if record:
        try:
            with case.lock():
                case.audit("verify", problems=v.problems, inputs_checked=v.inputs_checked, head_checked=v.head)
        except CaseError as exc:
            die(str(exc), EXIT_SOME_FAILED)
    if v.problems:
        err.print(f"case {folder}: {len(v.problems)} difference(s): the case does NOT verify")
        raise typer.Exit(EXIT_SOME_FAILED)
    out.print(
        f"case {folder}: verifies: {v.inputs_checked} input(s) unchanged, {v.files_checked} case file(s) as recorded, "
        f"audit chain intact"
    )
