"""The ``spn`` command line: a thin Typer layer over the library core.

Each command parses its options, calls the core, and renders. Per-file
failures print one line naming the file and the reason and the batch goes
on; the exit code is 1 when some input failed, 2 for a usage error.
"""

from __future__ import annotations

import importlib
import signal
import sys

from ..batch import one_malloc_arena
from . import _app, _common

COMMAND_MODULES = {
    "case": "case",
    "db": "db",
    "degrade": "degrade",
    "demo": "demo",
    "eval": "evaluate",
    "extract": "extract",
    "fingerprint": "fingerprint",
    "match": "match",
    "quality": "quality",
    "report": "report",
    "restore": "restore",
    "train": "train",
    "cluster": "cluster",
    "calibrate": "calibrate",
}
"""Each command's module, in the order ``spn --help`` lists them as registered."""

_ROOT_OPTIONS_WITH_VALUE = ("--max-pixels", "--max-bytes")


def register(command: str | None = None):
    """Import the module of ``command`` (every command's with None) so that it is on the app; returns the app."""
    names = COMMAND_MODULES.values() if command is None else (COMMAND_MODULES[command],)
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return _app.app


def __getattr__(name: str):
    """``spncli.cli.app`` is the application with every command (library users and tests)."""
    if name == "app":
        return register()
    if name == "State":
        return _app.State
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def command_of(argv: list[str]) -> str | None:
    """The command a command line names (after the root options), or None (help, version, a typo)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _ROOT_OPTIONS_WITH_VALUE:
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        return arg if arg in COMMAND_MODULES else None
    return None


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
        argv = expand_list_options(sys.argv[1:])
        register(command_of(argv))(args=argv, prog_name="spn")
    except KeyboardInterrupt:
        _common.err.print("interrupted: results written so far are kept")
        raise SystemExit(130) from None
