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
