"""A saved residual whose array is not the region its provenance names is refused in one line, never scored."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from spncli.cli import app
from spncli.evidence import EvidenceError
from spncli.residualfile import load_residual_file


@pytest.fixture(scope="module")
def saved(dresden, tmp_path_factory):
    """spn extract's residual of a Dresden image, centre crop 128x192, with its provenance."""
    from typer.testing import CliRunner

    out = tmp_path_factory.mktemp("saved")
    image = dresden / "nat-jpg" / "Nikon_D70_0_19445.JPG"
    res = CliRunner().invoke(app, ["extract", str(image), "-o", str(out), "--crop", "128x192"])
    assert res.exit_code == 0, res.output
    (npy,) = out.glob("*.npy")
    return npy


def _forge(saved, folder, name, arr, **prov_changes):
    """A copy of the saved residual holding ``arr``, its provenance updated to the new array (hash and shape)."""
    npy = folder / f"{name}.npy"
    np.save(npy, arr)
    prov = json.loads(saved.with_suffix(".json").read_text())
    prov |= {"files": {"array": npy.name}, "shape": list(arr.shape),
             "array_sha256": hashlib.sha256(npy.read_bytes()).hexdigest()} | prov_changes  # fmt: skip
    npy.with_suffix(".json").write_text(json.dumps(prov))
    return npy


def test_array_must_be_the_crop_its_provenance_names(saved, tmp_path):
    good = load_residual_file(saved)
    assert good.residual.shape == (128, 192) and good.crop == (128, 192)
    w = good.residual
    cases = {
        "empty": (np.zeros((0, 0), np.float32), "array is 0x0"),
        "smaller": (np.ascontiguousarray(w[:100, :100]), "array is 100x100"),
        "turned": (np.ascontiguousarray(np.rot90(w)), "array is 192x128"),
        "stack": (w[None], "not a 2-D"),
    }
    for name, (arr, reason) in cases.items():
        with pytest.raises(EvidenceError) as info:
            load_residual_file(_forge(saved, tmp_path, name, arr))
        assert reason in info.value.reason and "\n" not in info.value.reason, (name, info.value.reason)
    with pytest.raises(EvidenceError) as info:  # full-frame provenance: the array must be the whole frame
        load_residual_file(_forge(saved, tmp_path, "frame", w, crop=None))
    assert "source frame 2000x3008 makes it 2000x3008" in info.value.reason
