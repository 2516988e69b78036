"""Leak safeguards: fingerprints that correlate with each other are flagged on add and on every match."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from spncli.casework import run_case
from spncli.cli import app
from spncli.geometry import centre_crop
from spncli.identify import Matcher, MatchSettings
from spncli.leaks import SIGN_TOP, SIGN_Z, Screener, database_flags, match_warnings, periodic_peaks, store_flags
from spncli.report import build_report
from spncli.store import FingerprintStore
from spncli.synthetic import dead_leaves, encode_jpeg, expose, flat_field, synthetic_prnu

from .conftest import SHARED, camera_of

SHAPE = (256, 384)
PERIOD = 32  # a period-8 pattern in the images is removed by the fingerprint's Wiener filter (Chen et al. 2008)


def _ok(res):
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Three synthetic cameras; A and B share an added periodic pattern (a 32x32 tile, as strong as the PRNU)."""
    rng = np.random.default_rng(2024)
    root = tmp_path_factory.mktemp("leak")
    tile = rng.normal(0.0, 0.01, (PERIOD, PERIOD)).astype(np.float32)
    pattern = np.tile(tile, (SHAPE[0] // PERIOD, SHAPE[1] // PERIOD))
    for cam in ("A", "B", "C"):
        k = synthetic_prnu(SHAPE, rng, std=0.01) + (pattern if cam in "AB" else 0)
        (root / cam).mkdir()
        for i in range(6):
            (root / cam / f"{cam}_{i}.jpg").write_bytes(encode_jpeg(expose(flat_field(SHAPE, rng), k, rng), 92))
        (root / f"probe_{cam}.jpg").write_bytes(encode_jpeg(expose(dead_leaves(SHAPE, rng), k, rng), 92))
    return root


@pytest.fixture(scope="module")
def planted_db(planted, tmp_path_factory):
    """The three cameras added in order A, B, C by the CLI; the add outputs and A's file before B came."""
    from typer.testing import CliRunner

    db = tmp_path_factory.mktemp("leakdb") / "db.h5"
    outputs, files = {}, {}
    for cam in ("A", "B", "C"):
        res = CliRunner().invoke(app, ["fingerprint", str(planted / cam), "--camera", cam, "--db", str(db)])
        outputs[cam] = _ok(res)
        files[cam] = sorted(p.name for p in (db.parent / "db.h5.d").iterdir())
    return db, outputs, files


def test_planted_leak_is_flagged_on_add_on_both_cameras(planted_db, runner):
    db, outputs, files = planted_db
    b = outputs["B"].stderr
    assert "leak screen of B: compared with 1 stored fingerprint(s)" in b
    assert "warning: leak: the fingerprint of B correlates with the fingerprint of A" in b
    assert "warning: leak" not in outputs["A"].stderr and "warning: leak" not in outputs["C"].stderr
    assert files["A"][0] in files["B"]  # A's sealed file was not rewritten to record the flag
    store = FingerprintStore(db)
    screen_b = store.meta("B")["leak_screen"]
    pce_ab = next(e["pce"] for e in screen_b["compared"] if e["camera"] == "A")
    assert pce_ab > 60 and screen_b["compared"][0]["fingerprint_sha256"] == store.meta("A")["sha256"]
    assert all(not e["flagged"] and e["pce"] < 60 for e in store.meta("C")["leak_screen"]["compared"])
    flags, problems = store_flags(store)
    assert not problems
    assert [p["camera"] for p in flags["A"]["pairs"]] == ["B"] and [p["camera"] for p in flags["B"]["pairs"]] == ["A"]
    assert flags["C"]["pairs"] == [] and all(f["unscreened"] == [] for f in flags.values())
    res = _ok(runner.invoke(app, ["db", "leaks", "--db", str(db), "-f", "json"]))
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert {r["camera"]: [f["camera"] for f in r["flagged_with"]] for r in rows} == {"A": ["B"], "B": ["A"], "C": []}
    shown = json.loads(_ok(runner.invoke(app, ["db", "show", "--db", str(db), "A"])).stdout)
    assert shown["leak_flags"]["pairs"][0] == {"camera": "B", "pce": pce_ab, "recorded_by": "B"}
    listed = _ok(runner.invoke(app, ["db", "list", "--db", str(db), "-f", "csv"])).stdout
    assert f"B (PCE {pce_ab:.1f})" in listed and f"A (PCE {pce_ab:.1f})" in listed


def test_matches_against_either_flagged_camera_carry_the_warning(planted_db, planted, runner):
    db, _outputs, _files = planted_db
    res = _ok(runner.invoke(app, ["match", str(planted / "probe_A.jpg"), "--db", str(db), "-f", "json"]))
    rows = {r["camera"]: r for r in map(json.loads, res.stdout.splitlines())}
    assert rows["A"]["decision"] == "consistent"
    assert len(rows["A"]["warnings"]) == 1 and "with the fingerprint of B (PCE" in rows["A"]["warnings"][0]
    assert len(rows["B"]["warnings"]) == 1 and "of B correlates with the fingerprint of A" in rows["B"]["warnings"][0]
    assert rows["C"]["warnings"] == []
    assert "warning: matches against A: leak" in res.stderr
    csv_out = _ok(runner.invoke(app, ["match", str(planted / "probe_C.jpg"), "--db", str(db), "-f", "csv"])).stdout
    header, *lines = csv_out.splitlines()
    col = header.split(",").index("warnings")
    assert sum("leak: the fingerprint" in line for line in lines) == 2 and col > 0


def test_the_report_shows_the_warning_for_a_match(planted_db, planted, tmp_path):
    db, _outputs, _files = planted_db
    store = FingerprintStore(db)
    matcher = Matcher((store.load(n) for n in store.cameras()), MatchSettings())
    matcher.warnings = match_warnings(store, store.cameras())
    evidence = tmp_path / "ev"
    evidence.mkdir()
    (evidence / "probe_B.jpg").write_bytes((planted / "probe_B.jpg").read_bytes())
    case = tmp_path / "case"
    run_case([evidence], case, matcher, db=db, db_sha=store.file_sha256(), cluster=False, handle_signals=False)
    html = build_report(case)
    assert "consistent with B" in html
    assert "Warning — leak: the fingerprint of B correlates with the fingerprint of A" in html
    with open(case / "results.csv", newline="") as fh:  # the case's CSV carries the warning and the tail fields
        rows = list(csv.DictReader(fh))
    assert {"warnings", "p_fa_empirical", "null_count"} <= set(rows[0])
    assert any("correlates with the fingerprint of A" in r["warnings"] for r in rows if r["camera"] == "B")


def test_a_pooled_probe_against_a_flagged_camera_carries_the_warning(planted_db, planted, runner, tmp_path):
    db, _outputs, _files = planted_db
    evidence = tmp_path / "ev"
    evidence.mkdir()
    for cam in ("A", "C"):
        (evidence / f"probe_{cam}.jpg").write_bytes((planted / f"probe_{cam}.jpg").read_bytes())
    case = tmp_path / "case"
    args = ["match", "--pool", str(evidence), "--db", str(db)]
    res = _ok(runner.invoke(app, [*args, "-f", "json", "--case", str(case)]))
    rows = {r["camera"]: r for r in map(json.loads, res.stdout.splitlines())}
    assert "of A correlates with the fingerprint of B" in rows["A"]["warnings"][0] and rows["C"]["warnings"] == []
    assert "warning: matches against B: leak" in res.stderr
    record = json.loads((case / "pool" / "pool-001.json").read_text())
    assert {r["camera"]: len(r["warnings"]) for r in record["pooled"]} == {"A": 1, "B": 1, "C": 0}
    table = _ok(runner.invoke(app, [*args, "-c", "B"])).stdout
    assert "(leak warning)" in table
    assert "Warning — leak: the fingerprint of B correlates with the fingerprint of A" in build_report(case)


def test_a_second_fingerprint_of_the_same_images_is_named_as_such_not_as_an_artifact(planted, runner, tmp_path):
    """Flagged pairs whose fingerprints share source images (one sensor under two ids) say so; B against A, whose
    images differ, keeps the non-unique-component wording."""
    db = tmp_path / "db.h5"
    for cam, folder in (("A", "A"), ("A-again", "A"), ("B", "B")):
        _ok(runner.invoke(app, ["fingerprint", str(planted / folder), "--camera", cam, "--db", str(db)]))
    flags, _ = store_flags(FingerprintStore(db))
    again = {p["camera"]: p for p in flags["A-again"]["pairs"]}
    assert again["A"]["shared_sources"] == 6 and "shared_sources" not in again["B"]
    res = _ok(runner.invoke(app, ["match", str(planted / "probe_A.jpg"), "--db", str(db), "-f", "json"]))
    rows = {r["camera"]: r for r in map(json.loads, res.stdout.splitlines())}
    same = [w for w in rows["A"]["warnings"] if "A-again" in w]
    assert len(same) == 1 and "estimated from 6 of the same image(s)" in same[0]
    other = [w for w in rows["A"]["warnings"] if "fingerprint of B" in w]
    assert len(other) == 1 and "non-unique component" in other[0]


def test_a_replaced_camera_drops_the_old_flag():
    """A screen entry counts only while the other camera still has the fingerprint it was compared with."""
    meta_b = {"leak_screen": {"compared": [{"camera": "A", "fingerprint_sha256": "old", "pce": 99.0, "flagged": True}]}}
    flags = database_flags({"A": ("new", {}), "B": ("b", meta_b)})
    assert flags["A"]["pairs"] == [] and flags["B"]["pairs"] == []
    assert flags["A"]["unscreened"] == ["B"] and not flags["A"]["screened"]
    flags = database_flags({"A": ("old", {}), "B": ("b", meta_b)})
    assert flags["A"]["pairs"] == [{"camera": "B", "pce": 99.0, "recorded_by": "B"}]


@pytest.fixture(scope="module")
def dresden_512(dresden, tmp_path_factory):
    """The six Dresden units, 4 flat-fields each, centre 512x512, added by the CLI (each screened on add)."""
    from typer.testing import CliRunner

    db = tmp_path_factory.mktemp("dresden512") / "nikon.h5"
    flats = sorted((dresden / "ff-jpg").glob("*.JPG"))
    outputs = {}
    for cam in sorted({camera_of(p) for p in flats}):
        files = [str(p) for p in flats if camera_of(p) == cam][:4]
        res = CliRunner().invoke(app, ["fingerprint", *files, "--camera", cam, "--db", str(db), "--crop", "512"])
        outputs[cam] = _ok(res).stderr
    return db, outputs


def test_a_clean_dresden_database_has_no_flags(dresden_512):
    db, outputs = dresden_512
    assert not any("warning: leak" in o or "periodic artifact" in o for o in outputs.values()), outputs
    flags, problems = store_flags(FingerprintStore(db))
    assert not problems and len(flags) == 6
    for cam, f in flags.items():
        assert f["pairs"] == [] and f["unscreened"] == [] and not f["periodic"]["flagged"], cam
    pces = [e["pce"] for c in flags for e in FingerprintStore(db).meta(c)["leak_screen"]["compared"]]
    assert len(pces) == 15 and max(abs(p) for p in pces) < 30


def _tile8(shape, rng):
    tile = rng.normal(0.0, 1.0, (8, 8)).astype(np.float32)
    return np.tile(tile, (shape[0] // 8 + 1, shape[1] // 8 + 1))[: shape[0], : shape[1]]


def test_periodic_peaks_find_a_planted_8_pixel_period(dresden_512):
    db, _outputs = dresden_512
    store = FingerprintStore(db)
    rng = np.random.default_rng(8)
    for cam in store.cameras():
        k = store.load(cam).k
        clean = periodic_peaks(k)
        planted = periodic_peaks(k + np.float32(0.3 * k.std()) * _tile8(k.shape, rng))  # about 8% of the energy
        assert not clean["flagged"] and clean["energy"] < 0.01 and planted["flagged"], cam
        assert planted["energy"] > 5 * clean["energy"]
        for p in planted["peaks"]:  # every listed peak is a harmonic of the 8-pixel grid
            assert round(p["row_freq"] * 8, 3) % 1 == 0 and round(p["col_freq"] * 8, 3) % 1 == 0, p


PRAKTICA = SHARED / "praktica-fingerprints"


def test_real_praktica_fingerprints_are_not_flagged_periodic():
    if not PRAKTICA.is_dir():
        pytest.skip(f"Praktica fingerprints not found at {PRAKTICA}")
    rng = np.random.default_rng(5)
    for png in sorted(PRAKTICA.glob("*.png")):
        k = (cv2.imread(str(png), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION).astype(np.float32) - 127.5)
        k = np.ascontiguousarray(centre_crop(k / np.float32(32.5), (1024, 1024)))
        found = periodic_peaks(k)
        assert not found["flagged"] and found["energy"] < 2e-3, (png.name, found)
        assert periodic_peaks(k + np.float32(0.3 * k.std()) * _tile8(k.shape, rng))["flagged"], png.name


def test_fingerprint_help_names_the_leak_option(runner):
    assert "--leak-threshold" in _ok(runner.invoke(app, ["fingerprint", "--help"])).output
    assert "periodic" in _ok(runner.invoke(app, ["db", "leaks", "--help"])).output


def test_pairs_added_without_a_screen_are_listed_and_checked_on_request(tmp_path, runner):
    """Cameras stored by an older version carry no screen: their pairs are named as unscreened, computed on request."""
    rng = np.random.default_rng(11)
    shared = np.tile(rng.normal(0.0, 1.0, (32, 32)).astype(np.float32), (8, 8))
    store = FingerprintStore(tmp_path / "old.h5")
    for cam, extra in (("X", shared), ("Y", shared), ("Z", 0)):
        store.add(cam, rng.normal(0.0, 1.0, (256, 256)).astype(np.float32) + extra, {"camera": cam})
    res = _ok(runner.invoke(app, ["db", "leaks", "--db", str(store.path), "-f", "json"]))
    rows = {r["camera"]: r for r in map(json.loads, res.stdout.splitlines())}
    assert rows["X"]["unscreened_pairs"] == ["Y", "Z"] and not rows["X"]["screened"] and rows["X"]["flagged_with"] == []
    res = _ok(runner.invoke(app, ["db", "leaks", "--db", str(store.path), "-f", "json", "--check-unscreened"]))
    pairs = {(r["camera"], r["other"]): r for r in map(json.loads, res.stdout.splitlines()) if "other" in r}
    assert set(pairs) == {("X", "Y"), ("X", "Z"), ("Y", "Z")}
    assert pairs[("X", "Y")]["flagged"] and not pairs[("X", "Z")]["flagged"] and not pairs[("Y", "Z")]["flagged"]
    assert FingerprintStore(tmp_path / "old.h5").cameras() == ["X", "Y", "Z"]  # nothing recorded, nothing lost


def test_a_periodic_artifact_warns_with_its_periods(dresden_512):
    """A flagged periodic artifact reaches the warnings of matches against that camera, periods named."""
    from spncli.leaks import warnings_for

    db, _outputs = dresden_512
    k = FingerprintStore(db).load("Nikon_D70_1").k
    found = periodic_peaks(k + np.float32(0.3 * k.std()) * _tile8(k.shape, np.random.default_rng(3)))
    lines = warnings_for("Nikon_D70_1", {"pairs": [], "periodic": found})
    assert len(lines) == 1 and lines[0].startswith("periodic artifact: the fingerprint of Nikon_D70_1 has")
    assert f"carrying {found['energy']:.2%}" in lines[0] and "px" in lines[0]
    assert warnings_for("Nikon_D70_1", {"pairs": [], "periodic": periodic_peaks(k)}) == []


def test_the_sign_screen_flags_the_real_praktica_pairs_as_the_exact_screen_does(tmp_path):
    """Real leaks (Praktica C0-C2 PCE 63.9, C1-C2 61.0): the default screen loads only the cameras whose sign
    agreement does not rule a leak out, and flags exactly the pairs the exhaustive screen flags."""
    if not PRAKTICA.is_dir():
        pytest.skip(f"Praktica fingerprints not found at {PRAKTICA}")
    ks = {}
    for png in sorted(PRAKTICA.glob("*.png")):
        k = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION).astype(np.float32) - 127.5
        ks[png.stem.split("_")[1]] = np.ascontiguousarray(k / np.float32(32.5))
    rng = np.random.default_rng(3)
    for i in range(10):  # unrelated cameras of the same size: the sign screen must rule them out without loading
        ks[f"noise{i}"] = rng.standard_normal(ks["PrakticaC0"].shape).astype(np.float32)
    flagged = {}
    for exact in (False, True):
        store = FingerprintStore(tmp_path / f"db-{exact}.h5")
        screens = {}
        if not exact:  # a camera the signs rule out is named from its pre-screen record: no camera file opened
            store.header = lambda cam: pytest.fail(f"header of {cam} opened by the sign screen")
        for cam, k in ks.items():
            screener = Screener(store, cam, k, exact=exact)
            store.add(cam, k, {"camera": cam}, screen=screener)
            screens[cam] = screener.result
        vars(store).pop("header", None)
        for rec in screens.values():  # every entry names the fingerprint it was compared with, loaded or not
            assert all(e["fingerprint_sha256"] == store.header(e["camera"])[0] for e in rec["compared"])
        flags, problems = store_flags(store)
        assert not problems
        flagged[exact] = {(c, p["camera"]) for c, f in flags.items() for p in f["pairs"]}
        methods = [e["method"] for rec in screens.values() for e in rec["compared"]]
        if exact:
            assert set(methods) == {"exact"}
        else:  # beyond the SIGN_TOP best, only cameras of high sign agreement were loaded; the rest carry their z
            assert methods.count("signs") >= sum(max(0, i - SIGN_TOP - 2) for i in range(len(ks)))
            for rec in screens.values():
                loaded = [e for e in rec["compared"] if e["method"] == "exact"]
                assert len(loaded) <= SIGN_TOP + sum(e["sign_z"] >= SIGN_Z for e in loaded)
                assert all(e["sign_z"] < SIGN_Z and e["pce"] is None for e in rec["compared"] if e["method"] == "signs")
        assert all(not f["unscreened"] for f in flags.values())  # every pair compared one way or the other
    want = {("PrakticaC0", "PrakticaC2"), ("PrakticaC2", "PrakticaC0"), ("PrakticaC1", "PrakticaC2"),
            ("PrakticaC2", "PrakticaC1")}  # fmt: skip
    assert flagged[False] == flagged[True] == want


def test_db_leaks_names_a_camera_whose_file_was_damaged(planted_db, runner, tmp_path):
    """A camera file whose bytes were damaged (seal and metadata intact) was listed by db leaks as a camera
    with no flags, exit 0: its file is now hashed, and it is one error line, exit 1."""
    import shutil

    db = planted_db[0]
    copy = tmp_path / db.name
    shutil.copy2(db, copy)
    shutil.copytree(db.with_name(db.name + ".d"), copy.with_name(copy.name + ".d"))
    victim = sorted(p for p in copy.with_name(copy.name + ".d").glob("*.h5"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    res = runner.invoke(app, ["db", "leaks", "--db", str(copy), "-f", "json"])
    assert res.exit_code == 1 and "error:" in res.stderr and "corrupted" in res.stderr, res.output
    res = runner.invoke(app, ["db", "leaks", "--db", str(tmp_path)])
    assert res.exit_code == 2 and "a folder, not an spn database" in res.stderr
