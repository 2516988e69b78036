"""A saved residual whose array is not the region its provenance names is refused in one line, never scored."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from spncli.cli import app
from spncli.evidence import EvidenceError
from spncli.residualfile import load_residual_file

from .test_prescreen import dresden_small_db  # noqa: F401  (fixture: three Dresden cameras, crop 1024)


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


def test_saved_residuals_in_a_walked_folder_are_matched_not_skipped(dresden, dresden_small_db, tmp_path):
    """A folder of JPEGs and saved residuals: each residual scored or refused, other files counted, none silent."""
    from typer.testing import CliRunner

    folder = tmp_path / "mixed"
    image = dresden / "nat-jpg" / "Nikon_D200_1_17226.JPG"
    res = CliRunner().invoke(app, ["extract", str(image), "-o", str(folder), "--crop", "1024"])
    assert res.exit_code == 0, res.output
    (npy,) = folder.glob("*.npy")
    (folder / "copy.JPG").write_bytes(image.read_bytes())
    _forge(npy, folder, "turned", np.ascontiguousarray(np.rot90(np.load(npy))[:, :1000]))
    (folder / "notes.txt").write_text("examiner's notes")
    args = ["match", str(folder), "--db", str(dresden_small_db), "--crop", "1024", "-f", "json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert {r["image"].rsplit("/", 1)[1] for r in rows} == {"copy.JPG", npy.name}
    by = {(r["image"].endswith(".npy"), r["camera"]): r["pce"] for r in rows}
    own = by[(True, "Nikon_D200_1")]
    assert own == pytest.approx(by[(False, "Nikon_D200_1")], rel=1e-6, abs=1e-3) and own > 60
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "turned.npy: array is 1024x1000" in errors[0], res.stderr
    assert "1 file(s) in the folders are not images" in res.stderr  # notes.txt; the .json beside each .npy is not


def test_saved_residual_is_prescreened_as_its_image_is(dresden, dresden_small_db, tmp_path):
    """--prescreen applies to a saved residual: exact = the exhaustive scores, K=1 scores the source camera."""
    from typer.testing import CliRunner

    image = dresden / "nat-jpg" / "Nikon_D200_1_17226.JPG"
    res = CliRunner().invoke(app, ["extract", str(image), "-o", str(tmp_path), "--crop", "1024"])
    assert res.exit_code == 0, res.output
    (npy,) = tmp_path.glob("*.npy")

    def rows(*options):
        args = ["match", str(npy), "--db", str(dresden_small_db), "--crop", "1024", "-f", "json", *options]
        out = CliRunner().invoke(app, args)
        assert out.exit_code == 0, out.output
        return {r["camera"]: r for r in map(json.loads, out.stdout.splitlines())}

    off, exact, top1 = rows(), rows("--prescreen", "exact"), rows("--prescreen", "1")
    assert off.keys() == exact.keys() and len(off) == 3
    assert all(exact[c]["pce"] == off[c]["pce"] and exact[c]["prescreen_scored"] == "3 of 3" for c in off)
    assert all("prescreen" not in r for r in off.values())
    assert list(top1) == ["Nikon_D200_1"] and top1["Nikon_D200_1"]["prescreen_scored"] == "1 of 3"
    assert top1["Nikon_D200_1"]["pce"] == off["Nikon_D200_1"]["pce"] > 60


def test_npy_header_declaring_more_than_the_file_holds_is_refused_before_allocating(saved, tmp_path):
    import io

    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": (200000, 200000)})
    npy = _forge(saved, tmp_path, "bomb", np.zeros((1, 1), np.float32))
    npy.write_bytes(head.getvalue() + bytes(4096))  # 160 GB declared, 4 KiB held
    prov = json.loads(npy.with_suffix(".json").read_text())
    prov |= {"array_sha256": hashlib.sha256(npy.read_bytes()).hexdigest(), "shape": [200000, 200000]}
    npy.with_suffix(".json").write_text(json.dumps(prov))
    with pytest.raises(EvidenceError, match=r"header declares \[200000, 200000\] float32 .* holds 4,096 bytes"):
        load_residual_file(npy)


def test_an_edited_residual_kind_is_refused_and_rows_record_the_provenance_hash(saved, tmp_path):
    """A classic residual's JSON edited to say 'restored' was matched as a restored residual with no weights."""
    good = load_residual_file(saved)
    assert good.provenance_sha256 == hashlib.sha256(saved.with_suffix(".json").read_bytes()).hexdigest()
    assert good.row_fields()["residual_provenance_sha256"] == good.provenance_sha256
    forged = _forge(saved, tmp_path, "kind", good.residual, residual_kind="restored")
    with pytest.raises(EvidenceError, match="'restored' without the restoration record"):
        load_residual_file(forged)
    forged = _forge(saved, tmp_path, "kind2", good.residual, restoration={"weights_sha256": "0" * 64})
    with pytest.raises(EvidenceError, match="with a restoration record"):
        load_residual_file(forged)
