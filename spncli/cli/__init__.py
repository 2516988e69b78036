"""The ``spn`` command line: a thin Typer layer over the library core.

Each command parses its options, calls the core, and renders. Per-file
failures print one line naming the file and the reason and the batch goes
on; the exit code is 1 when some input failed, 2 for a usage error.
"""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from .. import __version__
from ..evidence import DEFAULT_MAX_PIXELS
from . import _common

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


def _version(value: bool):
    if value:
        typer.echo(f"spn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=1, help="Refuse images whose header declares more pixels than this.")
    ] = DEFAULT_MAX_PIXELS,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
):
    """Camera identification from sensor pattern noise (PRNU)."""
    State.max_pixels = max_pixels


from . import case, db, degrade, demo, evaluate, extract, fingerprint, match, quality, report, restore, train  # noqa: E402,F401  (register commands)


def _stop(signum, frame):
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point. Ctrl-C and SIGTERM stop cleanly: results written so far are kept."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent shell ignored it
    signal.signal(signal.SIGTERM, _stop)
    try:
        app()
    except KeyboardInterrupt:
        _common.err.print("interrupted: results written so far are kept")
        raise SystemExit(130) from None
