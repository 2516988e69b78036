"""The ``spn`` command line: a thin Typer layer over the library core.

Each command parses its options, calls the core, and renders. Per-file
failures print one line naming the file and the reason and the batch goes
on; the exit code is 1 when some input failed, 2 for a usage error.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated

import typer

from .. import __version__
from ..batch import one_malloc_arena
from ..evidence import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, MAX_BYTES_ENV
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


from . import case, db, degrade, demo, evaluate, extract, fingerprint, match, quality, report, restore, train  # noqa: E402,F401  (register commands)
from . import cluster  # noqa: E402,F401  (spn cluster)
from . import calibrate  # noqa: E402,F401  (spn calibrate)


def expand_list_options(argv: list[str], command: str = "degrade", options=("--quality", "-q")) -> list[str]:
    """Let ``spn degrade ... --quality 90 70 50 30`` mean ``-q 90 -q 70 -q 50 -q 30``.

    Numbers (1-3 digits) following ``--quality`` are taken as further qualities, so
    an image argument must not be a bare number there (write ``./70``).
    """
    if command not in argv:
        return argv
    out, i = [], 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] in options and i + 1 < len(argv):
            out.append(argv[i + 1])
            i += 2
            while i < len(argv) and argv[i].isdigit() and len(argv[i]) <= 3:
                out += [options[0], argv[i]]
                i += 1
            continue
        i += 1
    return out


def _stop(signum, frame):
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point. Ctrl-C and SIGTERM stop cleanly: results written so far are kept."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent shell ignored it
    signal.signal(signal.SIGTERM, _stop)
    one_malloc_arena()  # before any thread exists: glibc's arena limit binds only threads not yet started
    try:
        app(args=expand_list_options(sys.argv[1:]), prog_name="spn")
    except KeyboardInterrupt:
        _common.err.print("interrupted: results written so far are kept")
        raise SystemExit(130) from None
