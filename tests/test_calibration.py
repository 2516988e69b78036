"""spn calibrate on real cameras: four Dresden D70/D70s units, leave-one-camera-out, empirical tails in match rows."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from spncli.calibration import (
    BANDS,
    NOT_JPEG,
    band_of,
    band_summary,
    calibrate,
    labelled_backgrounds,
    parse_qualities,
    read_labels,
    recompressed,
)
from spncli.cli import app
from spncli.evidence import load_image
from spncli.geometry import crop_offsets
from spncli.identify import MatchSettings
from spncli.report import _calibration_section
from spncli.store import FingerprintStore, StoreError, calibration_seal

from .conftest import camera_of

CAMERAS = ("Nikon_D70_0", "Nikon_D70_1", "Nikon_D70s_0", "Nikon_D70s_1")
CROP = (256, 256)
QUALITIES = (70, 30)


def _json(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def lab(dresden, tmp_path_factory):
    """A database of 4 cameras (3 flat-fields each, crop 256), a labels CSV, and one calibration stored."""
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("calibration")
    db = root / "db.h5"
    flats = {c: sorted((dresden / "ff-jpg").glob(f"{c}_*.JPG")) for c in CAMERAS}
    for cam, files in flats.items():
        res = CliRunner().invoke(app, ["fingerprint", *map(str, files[:3]), "-c", cam, "--db", str(db), "--crop", "256"])
        assert res.exit_code == 0, res.output
    background = [p for p in sorted((dresden / "nat-jpg").glob("*.JPG")) if camera_of(p) in CAMERAS]
    background += [files[-1] for files in flats.values()]  # a flat-field not in its camera's fingerprint
    labels = root / "labels.csv"
    labels.write_text("path,camera\n" + "".join(f"{p},{camera_of(p)}\n" for p in background))
    store = FingerprintStore(db)
    label_map = read_labels(labels)
    items = labelled_backgrounds(background, leave_one_camera_out=True, cameras=CAMERAS, labels=label_map)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in [db, *db.with_name("db.h5.d").iterdir()]}
    doc = calibrate(store, items, settings=MatchSettings(crop=CROP), qualities=QUALITIES, leave_one_camera_out=True,
                    labels=label_map)  # fmt: skip
    sha = store.store_calibration(doc)
    return {"root": root, "db": db, "labels": labels, "background": background, "doc": doc, "sha": sha,
            "before": before, "flats": flats}  # fmt: skip


def _copy_db(lab, dest: Path) -> Path:
    dest.mkdir()
    shutil.copy2(lab["db"], dest / "db.h5")
    shutil.copytree(lab["db"].with_name("db.h5.d"), dest / "db.h5.d")
    return dest / "db.h5"


def test_bands_and_qualities():
    assert [band_of(q) for q in (100, 90, 89, 70, 69, 50, 49, 1, None)] == [
        "q90-100", "q90-100", "q70-89", "q70-89", "q50-69", "q50-69", "q1-49", "q1-49", NOT_JPEG,
    ]  # fmt: skip
    assert parse_qualities("90, 70,50,30,70") == (90, 70, 50, 30)
    assert parse_qualities("none") == ()
    for bad in ("0", "101", "high", "90,,70", "", " "):
        with pytest.raises(ValueError, match="1-100"):
            parse_qualities(bad)


def test_recompressed_region_sits_in_the_frames_grid(dresden):
    ev = load_image(dresden / "nat-jpg" / "Nikon_D70_0_19445.JPG")
    r0, c0 = crop_offsets(ev.shape, CROP)
    again = recompressed(ev, 50, CROP)
    assert again.shape == ev.shape and again.quality.quality == 50 and again.quality.exact
    inside = (slice(r0, r0 + CROP[0]), slice(c0, c0 + CROP[1]))
    assert not np.array_equal(again.pixels[inside], ev.pixels[inside])  # the analysed region was re-compressed
    top, left = r0 // 16 * 16, c0 // 16 * 16
    outside = np.ones(ev.shape, bool)
    outside[top : -(-(r0 + CROP[0]) // 16) * 16, left : -(-(c0 + CROP[1]) // 16) * 16] = False
    assert np.array_equal(again.pixels[outside], ev.pixels[outside])  # only the grid-aligned region changed
    assert again.sha256 != ev.sha256 and "re-compressed q50" in again.path


def test_leave_one_camera_out_null_per_band(lab):
    doc, store = lab["doc"], FingerprintStore(lab["db"])
    assert doc["background"]["count"] == len(lab["background"])
    digest = hashlib.sha256("\n".join(sorted(i["sha256"] for i in doc["background"]["images"])).encode()).hexdigest()
    assert doc["background"]["sha256_list_digest"] == digest
    assert doc["parameters"]["qualities"] == list(QUALITIES) and doc["parameters"]["leave_one_camera_out"]
    assert doc["parameters"]["recompression"]["in_memory"] and doc["parameters"]["seed"] is None
    assert doc["parameters"]["labels"] == {"path": str(lab["labels"]),  # the bytes the labels were read from
                                           "sha256": hashlib.sha256(lab["labels"].read_bytes()).hexdigest()}
    labels = {i["sha256"]: i["label"] for i in doc["background"]["images"]}
    for cam in CAMERAS:
        entry = doc["cameras"][cam]
        assert entry["fingerprint_sha256"] == store.header(cam)[0]
        others = sum(1 for label in labels.values() if label != cam)
        # every image of another camera, as it is and at each re-compression quality, in exactly one band
        assert sum(b["count"] for b in entry["bands"].values()) == others * (1 + len(QUALITIES))
        assert entry["bands"]["q1-49"]["count"] >= others  # the q30 re-compressions at least
        for band in entry["bands"].values():
            assert band["pce"] == sorted(band["pce"]) and len(band["pce"]) == band["count"]
            assert all(labels[t["sha256"]] != cam for t in band["largest"])  # never its own images
            assert max(band["pce"]) < 60  # no false alarm among these unrelated images


def test_stored_sealed_and_nothing_else_rewritten(lab):
    store = FingerprintStore(lab["db"])
    doc, sha = store.calibration()
    assert sha == lab["sha"] == hashlib.sha256(store.calibration_path.read_bytes()).hexdigest()
    assert doc["cameras"] == lab["doc"]["cameras"] and doc["seal"]
    assert store.calibration_path.parent == lab["db"].with_name("db.h5.d")
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in [lab["db"], *store.folder.iterdir()]}
    assert {k: v for k, v in after.items() if k != "calibration.json"} == lab["before"]  # index, cameras untouched
    # adding a camera rewrites the index, not the calibration; the new camera is simply not calibrated
    copy = FingerprintStore(_copy_db(lab, lab["root"] / "added"))
    copy.add("extra", np.zeros(CROP, np.float32) + 1e-3, {"camera": "extra"})
    assert copy.calibration()[1] == sha


def test_tampered_calibration_is_refused(lab, runner, dresden, tmp_path):
    db = _copy_db(lab, tmp_path / "t")
    path = FingerprintStore(db).calibration_path
    doc = json.loads(path.read_text())
    band = doc["cameras"]["Nikon_D70_0"]["bands"]["q1-49"]
    band["pce"][-1] = 1e6  # a null sample moved, the seal left as it was
    path.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="calibration is corrupted"):
        FingerprintStore(db).calibration()
    res = runner.invoke(app, ["calibrate", "--db", str(db), "--show"])
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "corrupted" in lines[0], res.output
    nat = dresden / "nat-jpg" / "Nikon_D70_0_19445.JPG"
    res = runner.invoke(app, ["match", str(nat), "--db", str(db), "--crop", "256", "-f", "json"])
    assert res.exit_code == 0, res.output
    rows = _json(res.stdout)
    assert len(rows) == 4 and all(r["p_fa_empirical"] is None and r["null_count"] is None for r in rows)
    assert all(r["calibration_note"].startswith("calibration refused") for r in rows)
    assert "calibration is corrupted" in res.stderr


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda d: d.pop("parameters"), "parameters.scoring"),
        (lambda d: d["cameras"]["Nikon_D70_0"].update(bands=5), "'bands' is not a mapping"),
        (lambda d: d["cameras"]["Nikon_D70_0"]["bands"]["q1-49"].update(pce=None), "not a list of finite numbers"),
        (lambda d: d["cameras"]["Nikon_D70_0"]["bands"]["q1-49"]["pce"].reverse(), "not sorted"),
        (lambda d: d.update(cameras=[]), "'cameras' is not a mapping"),
    ],
)
def test_resealed_damaged_calibration_is_refused_in_one_line(lab, runner, dresden, tmp_path, damage, reason):
    """The seal is a checksum anyone can recompute: a resealed document missing a field, or with unsorted samples
    (a wrong empirical tail), is refused with one line; the match goes on without it, no traceback."""
    db = _copy_db(lab, tmp_path / "t")
    path = FingerprintStore(db).calibration_path
    doc = json.loads(path.read_text())
    damage(doc)
    doc["seal"] = calibration_seal(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="not a usable spn calibration"):
        FingerprintStore(db).calibration()
    res = runner.invoke(app, ["calibrate", "--db", str(db), "--show", "-f", "json"])
    assert res.exit_code == 1 and reason in res.output and "Traceback" not in res.output, res.output
    nat = dresden / "nat-jpg" / "Nikon_D70_0_19445.JPG"
    res = runner.invoke(app, ["match", str(nat), "--db", str(db), "--crop", "256", "-f", "json"])
    assert res.exit_code == 0, res.output
    rows = _json(res.stdout)
    assert len(rows) == 4 and all(r["p_fa_empirical"] is None for r in rows)
    assert all(r["calibration_note"].startswith("calibration refused") for r in rows)


def test_match_rows_carry_the_empirical_tail(lab, runner, dresden):
    images = [dresden / "nat-jpg" / n for n in ("Nikon_D70_1_20891.JPG", "Nikon_D70s_0_21853.JPG")]
    res = runner.invoke(app, ["match", *map(str, images), "--db", str(lab["db"]), "--crop", "256", "-f", "json"])
    assert res.exit_code == 0, res.output
    rows = _json(res.stdout)
    assert len(rows) == 8
    for r in rows:
        band = lab["doc"]["cameras"][r["camera"]]["bands"][r["null_band"]]
        k = sum(1 for v in band["pce"] if v >= r["pce"])
        assert r["null_band"] == band_of(r["jpeg_quality"]) and r["null_count"] == band["count"]
        assert r["null_exceeding"] == k and r["p_fa_empirical"] == pytest.approx((1 + k) / (1 + band["count"]))
        assert r["p_fa_empirical"] >= 1 / (1 + band["count"]) and r["calibration_sha256"] == lab["sha"]
        assert r["calibration_note"] is None and r["p_fa"] is not None  # beside the theoretical one
    res = runner.invoke(app, ["match", str(images[0]), "--db", str(lab["db"]), "--crop", "384", "-f", "csv"])
    assert res.exit_code == 0, res.output
    header, first = res.stdout.splitlines()[:2]
    assert "p_fa_empirical" in header.split(",") and "null_band" in header.split(",")
    assert "calibrated with other scoring settings" in first  # another crop: no tail, and the row says why


def test_source_images_and_labels_refused(lab, dresden, tmp_path):
    store, errors = FingerprintStore(lab["db"]), []
    source = lab["flats"]["Nikon_D70_0"][0]  # in the fingerprint of Nikon_D70_0
    calibrate(store, [(source, "Nikon_D70_1"), (lab["background"][0], None)], settings=MatchSettings(crop=CROP),
              qualities=(), on_error=lambda p, r: errors.append((p, r)))  # fmt: skip
    assert errors == [(str(source), "is a source image of the fingerprint of Nikon_D70_0 but labelled "
                       "'Nikon_D70_1'; not used")]  # fmt: skip
    wrapped = tmp_path / "wrapped.jpg"  # the same photograph in other bytes: still a source (its pixels say so)
    wrapped.write_bytes(source.read_bytes() + b"\x00appended")
    errors.clear()
    calibrate(store, [(wrapped, None), (lab["background"][0], None)], settings=MatchSettings(crop=CROP),
              qualities=(), on_error=lambda p, r: errors.append((p, r)))  # fmt: skip
    assert errors == [(str(wrapped), "is a source image of the fingerprint of Nikon_D70_0 but declared from none "
                       "of the cameras; not used")]  # fmt: skip
    errors.clear()
    with pytest.raises(ValueError, match="no background image"):
        calibrate(store, [(source, None)], settings=MatchSettings(crop=CROP), qualities=())
    bg = tmp_path / "bg"
    (bg / "Nikon_D70_0").mkdir(parents=True)
    (bg / "nobody").mkdir()
    shutil.copy(dresden / "nat-jpg" / "Nikon_D70_0_19445.JPG", bg / "Nikon_D70_0")
    shutil.copy(dresden / "nat-jpg" / "Nikon_D70_1_20543.JPG", bg / "nobody")
    shutil.copy(dresden / "nat-jpg" / "Nikon_D70_1_20585.JPG", bg)
    errors.clear()
    items = labelled_backgrounds([bg], leave_one_camera_out=True, cameras=CAMERAS,
                                 on_error=lambda p, r: errors.append((Path(p).name, r)))  # fmt: skip
    assert [(p.name, label) for p, label in items] == [("Nikon_D70_0_19445.JPG", "Nikon_D70_0")]
    assert sorted(n for n, _ in errors) == ["Nikon_D70_1_20543.JPG", "Nikon_D70_1_20585.JPG"]
    assert any("'nobody'" in r and "not allowed" in r for _, r in errors)


def test_band_summary_flags_heavier_tails():
    rng = np.random.default_rng(7)
    z = rng.standard_normal(2000)
    gaussian = sorted((np.sign(z) * z * z).tolist())  # the null the theory assumes
    s = band_summary(gaussian, 1, 60.0)
    assert s["count"] == 2000 and not s["heavier_than_theory"] and 0.3 < s["tail_ratio"] < 3
    heavy = sorted((np.sign(z) * (3 * z) ** 2).tolist())  # correlation 3x wider than the theory's
    s = band_summary(heavy, 1, 60.0)
    assert s["heavier_than_theory"] and s["tail_ratio"] > 10
    planted = sorted(gaussian[:-1] + [75.0])  # one unrelated image above the threshold
    s = band_summary(planted, 1, 60.0)
    assert s["above_threshold"] == 1 and s["heavier_than_theory"] and s["max"] == 75.0
    assert band_summary(gaussian[:10], 1, 60.0)["tail_ratio"] is None  # too few to compare


def test_report_section(lab):
    row = {"image": "a/../b.jpg", "camera": "Nikon_D70_0", "pce": 80.0, "p_fa": 1e-19, "p_fa_empirical": 1 / 30,
           "null_count": 29, "null_band": "q70-89", "calibration_note": None}  # fmt: skip
    html = _calibration_section(str(lab["db"]), 60.0, [row])
    assert "Calibration (empirical false alarms)" in html and lab["sha"] in html
    assert all(f"<td>{cam}</td><td>q1-49</td>" in html for cam in CAMERAS)
    assert "3.33e-02 (29, q70-89)" in html
    assert "No calibration is stored" in _calibration_section(None, 60.0, [])


def test_cli_calibrate_json_and_help(lab, runner, tmp_path):
    db = _copy_db(lab, tmp_path / "c")
    res = runner.invoke(app, ["calibrate", "--help"])
    assert res.exit_code == 0 and "ASSUMPTION" in res.output and "--leave-one-camera-out" in res.output
    some = lab["background"][::3]  # 6 images: a JSON record, fast
    args = ["calibrate", "--db", str(db), *map(str, some), "--leave-one-camera-out", "--labels",
            str(lab["labels"]), "--qualities", "none", "--crop", "256", "-f", "json"]  # fmt: skip
    res = runner.invoke(app, [*args, "--replace"])  # the copied database holds the lab's calibration
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert record["calibration_sha256"] == FingerprintStore(db).calibration()[1]
    assert record["background"]["count"] == len(some) and record["parameters"]["qualities"] == []
    bands = {(r["camera"], r["band"]): r for r in record["bands"]}
    assert {c for c, _ in bands} == set(CAMERAS) and {b for _, b in bands} <= {b for b, _, _ in BANDS} | {NOT_JPEG}
    assert all(r["count"] > 0 and r["p_fa_at_threshold"] < 1e-14 for r in record["bands"])
    res = runner.invoke(app, ["calibrate", "--db", str(db), "--show", "-f", "csv"])
    assert res.exit_code == 0 and res.stdout.startswith("camera,band,count,"), res.output
    res = runner.invoke(app, ["calibrate", "--db", str(db), str(lab["background"][0]), "--labels", str(lab["labels"])])
    assert res.exit_code == 2 and "--leave-one-camera-out" in res.output
    stored = FingerprintStore(db).calibration_path.read_bytes()
    res = runner.invoke(app, args)  # a stored calibration is never replaced by accident
    assert res.exit_code == 2 and "--replace" in res.output and "scored" not in res.output, res.output
    assert FingerprintStore(db).calibration_path.read_bytes() == stored
    res = runner.invoke(app, [*args[:-2], "--qualities", "", "--replace"])
    assert res.exit_code == 2 and "--qualities: empty" in res.output, res.output
    res = runner.invoke(app, [*args, "--replace"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["calibration_sha256"] == FingerprintStore(db).calibration()[1]
    missing = tmp_path / "none.h5"  # no database: a usage error (exit 2), as for spn match, nothing measured
    res = runner.invoke(app, ["calibrate", "--db", str(missing), str(lab["background"][0])])
    assert res.exit_code == 2 and "no such database" in res.output and "scored" not in res.output, res.output
    assert not missing.exists()


def test_calibration_write_is_atomic_and_cleans_a_killed_writers_temporary(tmp_path, monkeypatch):
    store = FingerprintStore(tmp_path / "db.h5")
    store.add("cam", np.full((32, 32), 1e-3, np.float32), {"camera": "cam"})
    doc = {"parameters": {"threshold": 60.0, "scoring": {}}, "cameras": {}, "background": {"count": 0}}
    first = store.store_calibration(doc)
    stale = store.folder / ".calibration.json.killed.tmp"  # what a writer killed before its rename leaves
    stale.write_text("{")

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("spncli.provenance.os.replace", disk_full)
    with pytest.raises(StoreError, match="cannot write the calibration .*previous one is unchanged"):
        store.store_calibration(doc | {"cameras": {"cam": {}}})
    monkeypatch.undo()
    assert store.calibration()[1] == first  # the previous calibration, whole
    assert sorted(p.name for p in store.folder.iterdir() if p.name.startswith(".")) == []  # temporaries gone


@pytest.mark.parametrize("blocker", ["link", "folder"])
def test_calibration_path_that_cannot_be_written_is_refused_before_measuring(lab, runner, tmp_path, blocker):
    """--replace over a link or a folder would fail only after the whole measurement: refused first, one line."""
    db = _copy_db(lab, tmp_path / "c")
    cal = FingerprintStore(db).calibration_path
    target = tmp_path / "elsewhere.json"
    target.write_bytes(cal.read_bytes())
    cal.unlink()
    cal.symlink_to(target) if blocker == "link" else cal.mkdir()
    args = ["calibrate", "--db", str(db), str(lab["background"][0]), "--qualities", "none", "--replace"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "scored" not in res.output, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {cal}: ") and "nothing was measured" in lines[0], lines
    assert target.read_bytes() == lab["root"].joinpath("db.h5.d", "calibration.json").read_bytes()


def test_calibration_is_never_written_inside_the_background_evidence(lab, runner, tmp_path):
    """The calibration goes to <db>.d beside the database: a database inside a background folder is refused
    before anything is measured (it wrote into the evidence folder)."""
    folder = tmp_path / "evidence"
    db = _copy_db(lab, folder)
    shutil.copy(lab["background"][0], folder / "probe.jpg")
    before = (folder / "db.h5.d" / "calibration.json").read_bytes()
    res = runner.invoke(app, ["calibrate", "--db", str(db), str(folder), "--qualities", "none", "--replace"])
    assert res.exit_code == 2 and "inside the evidence folder" in res.output and "scored" not in res.output
    assert (folder / "db.h5.d" / "calibration.json").read_bytes() == before


def test_a_labels_file_that_is_a_fifo_or_a_link_is_refused_without_hanging(tmp_path):
    import os

    fifo = tmp_path / "labels.csv"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="labels unreadable .*FIFO"):
        read_labels(fifo)
    real = tmp_path / "real.csv"
    real.write_text("path,camera\nx.jpg,cam\n")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    with pytest.raises(ValueError, match="labels unreadable"):
        read_labels(link)
    assert list(read_labels(real).values()) == ["cam"]  # the file itself is read
