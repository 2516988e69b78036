"""Acceptance on real cameras: 6 Dresden Nikon units, fingerprints from 10 flat-fields each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spncli.cli import app

from .conftest import REFERENCE, camera_of


def auc(pos, neg) -> float:
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (pos.size * neg.size))


@pytest.fixture(scope="module")
def dresden_db(dresden, tmp_path_factory):
    from typer.testing import CliRunner

    runner = CliRunner()
    db = tmp_path_factory.mktemp("dresden") / "nikon.h5"
    flats = sorted((dresden / "ff-jpg").glob("*.JPG"))
    for cam in sorted({camera_of(p) for p in flats}):
        files = [str(p) for p in flats if camera_of(p) == cam]
        res = runner.invoke(app, ["fingerprint", *files, "--camera", cam, "--db", str(db), "--crop", "2000x3008"])
        assert res.exit_code == 0, res.output
    return db


def _match(db, dresden, crop):
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["match", str(dresden / "nat-jpg"), "--db", str(db), "--crop", crop, "-f", "json"])
    assert res.exit_code == 0, res.output
    return [json.loads(line) for line in res.stdout.splitlines()]


def test_fingerprint_metadata(dresden_db):
    from spncli.store import FingerprintStore

    store = FingerprintStore(dresden_db)
    assert len(store.cameras()) == 6
    meta = store.meta("Nikon_D200_0")
    assert meta["image_count"] == 10 and (meta["rows"], meta["cols"]) == (2000, 3008)
    assert meta["model"] == "NIKON D200" and meta["crop"] == [2000, 3008]
    assert all(len(s["sha256"]) == 64 for s in meta["sources"])


def test_full_crop_identifies_every_image(dresden_db, dresden):
    rows = _match(dresden_db, dresden, "2000x3008")
    assert len(rows) == 16 * 6
    for r in rows:
        own = camera_of(Path(r["image"])) == r["camera"]
        assert (r["pce"] > 60) == own, (Path(r["image"]).name, r["camera"], r["pce"])
        assert (r["decision"] == "consistent") == own


def test_512_crop_auc(dresden_db, dresden):
    rows = _match(dresden_db, dresden, "512")
    pos = [r["pce"] for r in rows if camera_of(Path(r["image"])) == r["camera"]]
    neg = [r["pce"] for r in rows if camera_of(Path(r["image"])) != r["camera"]]
    assert len(pos) == 16 and len(neg) == 80
    assert auc(pos, neg) >= 0.96
    ref = json.loads((REFERENCE / "pce-zero-shift.json").read_text()) if REFERENCE.exists() else None
    if ref:  # never worse than the reference implementation at this size
        r = np.array(ref["centre_512x512"])
        truth = np.array([[camera_of(Path(i)) == c for i in ref["images"]] for c in ref["fingerprints"]])
        assert auc(pos, neg) >= auc(r[truth], r[~truth]) - 1e-9
