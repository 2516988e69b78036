"""Shared CLI plumbing: consoles, one-line errors, progress, output rendering."""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..geometry import parse_crop

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False)
if not out.is_terminal:  # piped: do not squeeze tables into 80 columns
    out = Console(highlight=False, width=200)

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


def printable(text: object) -> str:
    """``text`` with control characters (newline, tab, escape, ...) as backslash escapes: one line, no escapes."""
    return "".join(
        c if c.isprintable() or c == " " else c.encode("unicode_escape", "backslashreplace").decode("ascii")
        for c in str(text)
    )


def error_line(message: str) -> None:
    """One ``error:`` line on stderr (control characters escaped); the command goes on."""
    err.print("[bold red]error[/]: " + escape(printable(message)), markup=True, highlight=False)


def fail_line(path: str, reason: str) -> None:
    """One line on stderr naming the file and the reason (control characters in either escaped)."""
    error_line(f"{path}: {reason}")


def die(message: str, code: int = EXIT_USAGE) -> None:
    """Print one error line and exit with ``code``."""
    error_line(message)
    raise typer.Exit(code)


def note(message: str) -> None:
    """One line on stderr (control characters escaped)."""
    err.print(printable(message), markup=False, highlight=False)


def note_not_images(others: list) -> None:
    """Say how many files the walked folders held that are not images (nothing is skipped silently)."""
    if others:
        note(f"{len(others)} file(s) in the folders are not images (no image name or signature): not read")


def image_paths(inputs, *, residuals: bool = False, absolute: bool = True) -> list:
    """The image files of the inputs (folders walked; see :func:`spncli.identify.gather_inputs`), absolute or
    as given.

    Says how many files were not images; inputs that hold no image file at all are one error line (exit 2),
    not an empty report.
    """
    from ..identify import gather_inputs, no_images_found

    others: list = []
    paths = [p.absolute() if absolute else p for p in gather_inputs(inputs, on_other=others.append,
                                                                     residuals=residuals)]  # fmt: skip
    note_not_images(others)
    if not paths:
        die(no_images_found(inputs, len(others)))
    return paths


def warn(message: str) -> None:
    """One ``warning:`` line on stderr."""
    err.print("[bold yellow]warning[/]: " + escape(printable(message)), markup=True, highlight=False)


def decoder_warnings(result: dict) -> None:
    """One ``warning:`` line per decoder message of a file (damaged data that was still decoded)."""
    for message in result.get("warnings") or ():
        warn(f"{result['path']}: decoder: {message} (the image was used; its outputs record this)")


def finite(name: str, *, positive: bool = False):
    """A Typer callback refusing NaN and infinity (and values <= 0 with ``positive``), naming what is allowed."""

    def check(value):
        if value is not None and not (math.isfinite(value) and (value > 0 or not positive)):
            allowed = "a finite number > 0" if positive else "a finite number"
            raise typer.BadParameter(f"{value} is not allowed: {name} must be {allowed}")
        return value

    return check


DeviceOption = Annotated[
    str,
    typer.Option(
        "--device",
        help="auto, cpu or cuda. cpu: the numpy reference path; cuda: the classic pipeline (and any restoration) "
        "through torch on a CUDA GPU; auto: cuda where one is usable (in Dask workers: those declaring a GPU "
        "resource), else cpu. Outputs record the device and backend.",
    ),
]


def device_option(request: str, *, here: bool = True) -> str:
    """Check ``--device``; with ``here`` (work in this process) also that cuda is usable. One line on failure."""
    from ..device import check_device, resolve_device

    try:
        check_device(request)
        if here:
            resolve_device(request)
    except ValueError as exc:
        die(f"--device: {exc}")
    return request


def crop_option(text: str | None):
    """Parse ``--crop``; a bad value exits with a one-line message."""
    try:
        return parse_crop(text)
    except ValueError as exc:
        die(f"--crop: {exc}")


def progress(total: int | None, label: str) -> Progress:
    """A progress bar on stderr with rate and ETA (hidden when stderr is not a terminal)."""
    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def render(
    rows: Sequence[dict],
    fmt: Format,
    columns: Sequence[str],
    title: str | None = None,
    styles: dict | None = None,
    caption: str | None = None,
) -> None:
    """Write rows as a rich table, JSON Lines or CSV on stdout."""
    if fmt is Format.json:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    if fmt is Format.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
        sys.stdout.flush()
        return
    table = Table(title=title, caption=caption, show_lines=False)
    for c in columns:
        table.add_column(c, justify="right" if c in (styles or {}).get("_right", ()) else "left")
    for row in rows:
        table.add_row(*[_cell(row.get(c)) for c in columns])
    out.print(table)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return escape(printable(value))  # a file name with a newline or an escape sequence stays on its row
