"""The ``spn`` Typer application and its root options, without any command.

The commands (one module each in this package) register themselves on :data:`app` when imported;
:func:`spncli.cli.main` imports only the one a command line names, so a process pays for that
command's imports and no other's.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from .. import __version__
from ..evidence import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, MAX_BYTES_ENV

app = typer.Typer(
    name="spn",
    help="Camera identification from sensor pattern noise (PRNU): extract, fingerprint, match.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)


class State:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES


def _version(value: bool):
    if value:
        typer.echo(f"spn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=1, help="Refuse images whose header declares more pixels than this.")
    ] = DEFAULT_MAX_PIXELS,
    max_bytes: Annotated[
        int,
        typer.Option(
            "--max-bytes",
            min=1,
            max=DEFAULT_MAX_BYTES,
            help="Refuse files larger than this many bytes, before reading them (at most 2 GiB - 1, "
            "the decoder's limit).",
        ),
    ] = DEFAULT_MAX_BYTES,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
):
    """Camera identification from sensor pattern noise (PRNU)."""
    State.max_pixels = max_pixels
    State.max_bytes = max_bytes
    os.environ[MAX_BYTES_ENV] = str(max_bytes)  # read by evidence.read_bytes here and in local worker processes
