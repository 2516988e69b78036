"""The sign-binarized pre-screen keeps every camera that the exact PCE puts above 60."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from spncli.geometry import centre_crop
from spncli.pce import FingerprintSpectrum, ResidualSpectrum, score
from spncli.prescreen import PrescreenIndex, sign_digest

from .test_pce_fast import dresden_pair  # noqa: F401  (fixture: Dresden residuals and fingerprints)

SHAPE = (128, 192)


@pytest.fixture(scope="module")
def synthetic_db():
    """200 cameras with i.i.d. Gaussian PRNU, their spectra, and the pre-screen index."""
    rng = np.random.default_rng(2010)
    ks = [rng.standard_normal(SHAPE, dtype=np.float32) for _ in range(200)]
    index = PrescreenIndex()
    for i, k in enumerate(ks):
        index.add(f"cam{i:03d}", k)
    return ks, [FingerprintSpectrum(k) for k in ks], index


def _queries(ks, rng):
    """Residuals of 12 images from random cameras, PCE about 40..2000; some turned, some cropped."""
    n = SHAPE[0] * SHAPE[1]
    out = []
    for i, target in enumerate(np.geomspace(40, 2000, 12)):
        src = int(rng.integers(len(ks)))
        w = (np.sqrt(target / n) * ks[src] + rng.standard_normal(SHAPE)).astype(np.float32)
        if i % 3 == 1:
            w = np.ascontiguousarray(np.rot90(w, -1))  # portrait: the camera was turned
        elif i % 3 == 2:
            w = np.ascontiguousarray(centre_crop(w, (101, 150)))  # smaller image, centre-aligned
        out.append((src, w))
    return out


def test_recall_against_brute_force_exact_pce(synthetic_db):
    ks, spectra, index = synthetic_db
    rng = np.random.default_rng(7)
    above, kept, nulls = 0, 0, []
    for src, w in _queries(ks, rng):
        probe = ResidualSpectrum(w)
        exact = np.array([score(probe, s).pce for s in spectra])  # brute force
        ranked = index.query(w, top=None)
        assert sorted(c.camera for c in ranked) == index.cameras() == [f"cam{i:03d}" for i in range(200)]
        candidates = {c.camera for c in index.query(w, top=10)}  # 5% of the cameras
        for i in np.flatnonzero(exact > 60):
            above += 1
            kept += f"cam{i:03d}" in candidates
        if w.shape[0] <= w.shape[1]:  # a turned residual scores the better of two turns: not N(0, 1)
            nulls += [c.z for c in ranked if c.camera != f"cam{src:03d}"]
    assert above >= 8  # most queries are matches above the threshold
    assert kept == above  # recall 100% at top=10 of 200
    nulls = np.array(nulls)
    assert abs(nulls.mean()) < 0.1 and 0.85 < nulls.std() < 1.15  # unrelated cameras: z about N(0, 1)


def test_index_is_compact_and_grows_by_one_camera(synthetic_db):
    ks, _, index = synthetic_db
    words = -(-SHAPE[0] * SHAPE[1] // 64)
    assert index.nbytes == len(index) * words * 8  # one bit per pixel
    assert index.nbytes * 32 == sum(k.nbytes for k in ks)
    with pytest.raises(ValueError, match="already"):
        index.add("cam000", ks[0])
    other = PrescreenIndex()
    other.add_digest("cam000", sign_digest(ks[0]))
    assert other.query(ks[0], top=1)[0].z == pytest.approx(np.sqrt(SHAPE[0] * SHAPE[1]))
    small = PrescreenIndex(crop=(64, 64))
    small.add("cam000", ks[0])
    assert small.nbytes == 64 * 64 // 8
    with pytest.raises(ValueError, match="top"):
        index.query(ks[0], top=0)


def test_real_fingerprints_rank_the_source_camera_first(dresden_pair, dresden):
    """Dresden Nikon fingerprints among five Praktica reference fingerprints (all 600x800)."""
    fps, probes = dresden_pair
    index = PrescreenIndex()
    spectra = {}
    praktica = sorted((dresden.parent / "praktica-fingerprints").glob("*.png"))
    assert len(praktica) == 5
    for p in praktica:
        k = (cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).astype(np.float32) - 127.5) / 32.5
        fps[p.stem] = np.ascontiguousarray(centre_crop(k, (600, 800)))
    for cam, k in fps.items():
        index.add(cam, k)
        spectra[cam] = FingerprintSpectrum(k)
    for src, w in probes.items():
        exact = {cam: score(w, s).pce for cam, s in spectra.items()}
        ranked = index.query(w, top=None)
        assert max(exact, key=exact.get) == src == ranked[0].camera, (exact, ranked[:3])
        above = {cam for cam, v in exact.items() if v > 60}
        assert above <= {c.camera for c in ranked[:2]}
    # the Praktica units are unrelated to the Nikon images: their scores stay in the noise
    assert all(abs(c.z) < 4 for c in index.query(probes["Nikon_D70s_0"], top=None) if "Praktica" in c.camera)


# -- the database's pre-screen records and `spn match --prescreen` -------------------------------------------------


def _k(seed: int, shape=(96, 128)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def test_store_keeps_one_checked_record_per_camera(tmp_path):
    from spncli.prescreen import Prescreen
    from spncli.store import SIGNS, FingerprintStore

    store = FingerprintStore(tmp_path / "db.h5")
    for i in range(3):
        store.add(f"cam{i}", _k(i), {})
    signs = store.folder / SIGNS
    size = signs.stat().st_size
    digests, missing = store.sign_digests()
    assert sorted(digests) == ["cam0", "cam1", "cam2"] and missing == []
    np.testing.assert_array_equal(digests["cam1"].words, sign_digest(_k(1)).words)
    store.add("cam1", _k(11), {}, replace=True)  # the old record stays in the file, unused
    digests, _ = store.sign_digests()
    np.testing.assert_array_equal(digests["cam1"].words, sign_digest(_k(11)).words)
    store.remove("cam2")
    assert sorted(store.sign_digests()[0]) == ["cam0", "cam1"]
    # a killed writer's uncommitted tail is ignored, then truncated by the next writer
    grown = signs.stat().st_size
    with open(signs, "ab") as fh:
        fh.write(b"SPNSIG1\n" + b"\xff" * 1000)
    assert sorted(store.sign_digests()[0]) == ["cam0", "cam1"]
    store.add("cam3", _k(3), {})
    assert signs.stat().st_size == grown + (grown - size)  # one record more, of the same size as the last
    # a damaged record: that camera has none, and a pre-screen scores it exactly instead of leaving it out
    data = bytearray(signs.read_bytes())
    data[-40] ^= 0xFF  # inside cam3's sign words
    signs.write_bytes(bytes(data))
    digests, missing = store.sign_digests()
    assert missing == ["cam3"] and sorted(digests) == ["cam0", "cam1"]
    screen = Prescreen(str(store.path), 1)
    keep, z = screen.select(_k(0), ["cam0", "cam1", "cam3"])
    assert keep == {"cam0", "cam3"} and set(z) == {"cam0", "cam1"} and screen.unindexed == ["cam3"]


@pytest.fixture(scope="module")
def dresden_small_db(dresden, tmp_path_factory):
    """Three Dresden cameras, fingerprints from 4 flats each, centre 1024x1024, through the CLI."""
    from typer.testing import CliRunner

    from spncli.cli import app

    db = tmp_path_factory.mktemp("prescreen") / "db.h5"
    for cam in ("Nikon_D70_0", "Nikon_D70s_0", "Nikon_D200_1"):
        flats = [str(p) for p in sorted((dresden / "ff-jpg").glob(f"{cam}_*.JPG"))[:4]]
        res = CliRunner().invoke(app, ["fingerprint", *flats, "-c", cam, "--db", str(db), "--crop", "1024"])
        assert res.exit_code == 0, res.output
    return db


def _match_rows(db, images, *options):
    import json

    from typer.testing import CliRunner

    from spncli.cli import app

    args = ["match", *map(str, images), "--db", str(db), "--crop", "1024", "-f", "json", *options]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return {(r["image"], r["camera"]): r for r in map(json.loads, res.stdout.splitlines())}


def test_match_prescreen_exact_is_brute_force_and_top_k_finds_the_camera(dresden_small_db, dresden):
    names = ["Nikon_D200_1_17226", "Nikon_D70_0_19445", "Nikon_D70s_0_21853", "Nikon_D70_1_20543"]
    images = [dresden / "nat-jpg" / f"{n}.JPG" for n in names]
    brute = _match_rows(dresden_small_db, images)
    exact = _match_rows(dresden_small_db, images, "--prescreen", "exact")
    assert brute.keys() == exact.keys() and len(brute) == 4 * 3
    for key, row in brute.items():
        assert "prescreen" not in row
        assert {k: v for k, v in exact[key].items() if not k.startswith("prescreen")} == row
        assert exact[key]["prescreen"] == "exact" and exact[key]["prescreen_scored"] == "3 of 3"
    top1 = _match_rows(dresden_small_db, images, "--prescreen", "1")
    assert len(top1) == 4 and all(r["prescreen_scored"] == "1 of 3" for r in top1.values())
    matched = [key for key, row in brute.items() if row["pce"] > 60]
    assert len(matched) >= 2  # D200_1 and D70s_0 match at this size
    for key in matched:
        assert top1[key]["pce"] == brute[key]["pce"]  # the true camera ranked first, scored exactly
    from typer.testing import CliRunner

    from spncli.cli import app

    res = CliRunner().invoke(app, ["match", str(images[0]), "--db", str(dresden_small_db), "--prescreen", "0"])
    assert res.exit_code == 2 and "off, exact" in res.output


def test_damaged_signs_file_loses_only_the_damaged_records_and_is_never_a_fifo(tmp_path):
    """A truncated file (zero gap after the next write) keeps later records; a FIFO in its place is one error."""
    import os

    from spncli.store import SIGNS, FingerprintStore, StoreError

    store = FingerprintStore(tmp_path / "db.h5")
    for i in range(3):
        store.add(f"cam{i}", _k(i), {})
    signs = store.folder / SIGNS
    os.truncate(signs, signs.stat().st_size // 2)  # cam1's and cam2's records cut away
    store.add("cam3", _k(3), {})  # the writer pads to the committed length, then appends
    digests, missing = store.sign_digests()
    assert sorted(digests) == ["cam0", "cam3"] and missing == ["cam1", "cam2"]
    np.testing.assert_array_equal(digests["cam3"].words, sign_digest(_k(3)).words)
    signs.unlink()
    os.mkfifo(signs)
    with pytest.raises(StoreError, match="prescreen.sig: not a regular file"):
        store.add("cam4", _k(4), {})
    assert sorted(store.sign_digests()[0]) == []  # read side: not a regular file, every camera scored exactly
    assert "cam4" not in store.sign_digests()[1]


def test_case_with_prescreen_resumes_its_images_and_refuses_another_setting(dresden_small_db, dresden, tmp_path):
    """A pre-screened image is done when its K candidates are scored; the setting is a case parameter."""
    import json

    from typer.testing import CliRunner

    from spncli.cli import app

    evidence = tmp_path / "ev"
    evidence.mkdir()
    (evidence / "a.JPG").write_bytes((dresden / "nat-jpg" / "Nikon_D200_1_17226.JPG").read_bytes())
    case = tmp_path / "case"
    args = ["match", str(evidence), "--db", str(dresden_small_db), "--crop", "1024", "--case", str(case),
            "--workers", "1"]
    first = CliRunner().invoke(app, [*args, "--prescreen", "1"])
    assert first.exit_code == 0 and "1 scored, 0 already done" in first.output, first.output
    again = CliRunner().invoke(app, [*args, "--prescreen", "1"])
    assert again.exit_code == 0 and "0 scored, 1 already done" in again.output, again.output
    assert json.loads((case / "manifest.json").read_text())["parameters"]["prescreen"] == "top 1"
    other = CliRunner().invoke(app, [*args, "--prescreen", "exact"])
    assert other.exit_code != 0 and "prescreen 'top 1' -> 'exact'" in other.output, other.output


def test_parse_prescreen_names_the_allowed_values_for_every_bad_value():
    from spncli.prescreen import parse_prescreen

    assert (parse_prescreen("off"), parse_prescreen("EXACT"), parse_prescreen(" 7 ")) == (False, None, 7)
    for bad in ("0", "-1", "abc", "", "²", "1.5", "+3", "０"):
        with pytest.raises(ValueError, match="use off, exact, or a number of candidate cameras K >= 1"):
            parse_prescreen(bad)
