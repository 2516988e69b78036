"""Classic commands start fast: they never import torch, nor Dask when they run in-process.

Checked in a fresh interpreter (``sys.modules``), not by timing: importing the CLI and running
``extract``, ``fingerprint`` and ``match`` in-process on Dresden images must leave ``torch`` and
``distributed`` (and ``dask``) unloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .conftest import ROOT

SCRIPT = r"""
import json, sys
import spncli.cli
from spncli.cli import app

def run(*args):
    try:
        code = app(args=list(args), prog_name="spn", standalone_mode=False)
    except SystemExit as exc:
        code = exc.code
    return code or 0

ff1, ff2, nat, out = sys.argv[1:5]
after_import = sorted(m for m in ("torch", "distributed", "dask") if m in sys.modules)
codes = {
    "extract": run("extract", nat, "-o", out + "/residuals", "--crop", "256"),
    "fingerprint": run("fingerprint", ff1, ff2, "-c", "cam", "--db", out + "/db.h5", "--crop", "256"),
    "match": run("match", nat, "--db", out + "/db.h5", "--crop", "256", "-f", "json"),
}
loaded = sorted(m for m in ("torch", "distributed", "dask") if m in sys.modules)
print(json.dumps({"after_import": after_import, "loaded": loaded, "codes": codes}), file=sys.stderr)
"""


def test_classic_commands_never_import_torch_or_dask(dresden, tmp_path):
    ff1, ff2 = sorted((dresden / "ff-jpg").glob("Nikon_D70_0_*.JPG"))[:2]  # a fingerprint needs 2 images or more
    nat = dresden / "nat-jpg" / "Nikon_D70_0_19445.JPG"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ff1), str(ff2), str(nat), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stderr.strip().splitlines()[-1])
    assert report["codes"] == {"extract": 0, "fingerprint": 0, "match": 0}, res.stderr
    assert report["after_import"] == [], report
    assert report["loaded"] == [], report
    # the commands did their work: a residual was written and the match printed one record
    assert len(list((tmp_path / "residuals").glob("*.residual.npy"))) == 1
    record = json.loads(res.stdout.strip().splitlines()[-1])
    assert record["camera"] == "cam" and record["rows"] == 256


LAZY = r"""
import json, sys
from spncli.cli import main
sys.argv = ["spn", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.startswith("spncli.cli."))), file=sys.stderr)
"""


def _cli_modules(*argv: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", LAZY, *argv], capture_output=True, text=True, env=env, timeout=120)
    return json.loads(res.stderr.strip().splitlines()[-1])


def test_a_command_line_imports_only_its_own_command():
    from spncli.cli import COMMAND_MODULES, command_of

    assert command_of(["--max-pixels", "5", "match", "x.jpg"]) == "match"
    assert command_of(["--max-bytes=9", "eval", "--db", "d"]) == "eval"
    assert command_of(["--help"]) is None and command_of(["nosuch"]) is None
    commands = {f"spncli.cli.{m}" for m in COMMAND_MODULES.values()}
    loaded = set(_cli_modules("--max-pixels", "7", "extract", "--help")) & commands
    assert loaded == {"spncli.cli.extract"}
    loaded = set(_cli_modules("db", "--help")) & commands
    assert loaded == {"spncli.cli.db"}
    # help, and an unknown command's error, list every command
    assert set(_cli_modules("--help")) >= commands
    assert set(_cli_modules("nosuch")) >= commands
    # the library's app has them all too
    import typer

    import spncli.cli

    assert set(typer.main.get_command(spncli.cli.app).commands) == set(COMMAND_MODULES)
