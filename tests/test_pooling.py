"""Several images as one probe: the pooled matched-filter statistic scores above the best single image; sizes are
checked."""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest

from spncli.cli import app
from spncli.evidence import decode
from spncli.identify import Matcher, MatchSettings, build_fingerprint
from spncli.pooling import PoolSizeError, pool_match, pooled_statistic
from spncli.store import Fingerprint, FingerprintStore, array_sha256
from spncli.synthetic import dead_leaves, encode_jpeg, expose, flat_field, synthetic_prnu

SHAPE = (128, 160)


@pytest.fixture(scope="module")
def weak_probes(tmp_path_factory):
    """One camera's true K (as its fingerprint), another camera's K, and five weak dead-leaves probes (Q60)."""
    rng = np.random.default_rng(99)
    k_true = synthetic_prnu(SHAPE, rng, std=0.006)
    k_other = synthetic_prnu(SHAPE, rng, std=0.006)
    root = tmp_path_factory.mktemp("pool")
    paths = []
    for i in range(5):
        p = root / f"probe_{i}.jpg"
        p.write_bytes(encode_jpeg(expose(dead_leaves(SHAPE, rng, n=200), k_true, rng), 60))
        paths.append(p)
    fps = [Fingerprint(c, k, array_sha256(k), {}) for c, k in (("cam-true", k_true), ("cam-other", k_other))]
    return paths, fps


def _evidence(paths):
    return [decode(p.read_bytes(), str(p)) for p in paths]


def test_pooled_pce_above_best_single(weak_probes):
    paths, fps = weak_probes
    records = {r["camera"]: r for r in pool_match(_evidence(paths), Matcher(fps, MatchSettings()), singles=True)}
    true, other = records["cam-true"], records["cam-other"]
    assert true["pce"] > true["best_single_pce"] * 1.5  # five probes: the pattern adds up
    assert true["p_fa"] < other["p_fa"] and abs(other["pce"]) < 30
    assert true["n_images"] == 5 and len({im["sha256"] for im in true["images"]}) == 5


def test_sizes_mismatch_refused(weak_probes, tmp_path):
    paths, fps = weak_probes
    odd = tmp_path / "odd.jpg"
    rng = np.random.default_rng(1)
    odd.write_bytes(encode_jpeg(expose(flat_field((96, 160), rng), fps[0].k[:96], rng), 90))
    with pytest.raises(PoolSizeError, match="odd.jpg 160x96") as info:
        pool_match(_evidence([*paths[:2], odd]), Matcher(fps, MatchSettings()))
    assert "probe_0.jpg 160x128" in str(info.value)
    rotated = tmp_path / "rotated.jpg"
    rotated.write_bytes(encode_jpeg(np.zeros((160, 128, 3), np.uint8) + 90, 90))
    with pytest.raises(PoolSizeError, match="portrait and landscape"):
        pool_match(_evidence([paths[0], rotated]), Matcher(fps, MatchSettings(crop=(96, 96))))


@pytest.fixture
def pool_db(weak_probes, tmp_path):
    _, fps = weak_probes
    db = tmp_path / "db.h5"
    store = FingerprintStore(db)
    for fp in fps:
        store.add(fp.camera, fp.k, {"camera": fp.camera})
    return db, store.file_sha256()


def test_match_pool_rows_and_refusal(weak_probes, pool_db, runner, tmp_path):
    """``spn match --pool``: one row per camera naming every pooled image (path and SHA-256); sizes checked."""
    paths, _ = weak_probes
    db, db_sha = pool_db
    res = runner.invoke(app, ["match", "--pool", *map(str, paths), "--db", str(db), "-f", "json", "--singles"])
    assert res.exit_code == 0, res.output
    rows = {r["camera"]: r for r in map(json.loads, res.stdout.splitlines())}
    true = rows["cam-true"]
    assert true["decision"] == "consistent" and true["db_sha256"] == db_sha and true["pce"] > true["best_single_pce"]
    assert [im["path"] for im in true["images"]] == list(map(str, paths))
    assert all(len(im["sha256"]) == 64 for im in true["images"]) and true["n_images"] == 5
    assert rows["cam-other"]["decision"] == "not consistent" and 0 < true["p_fa"] < rows["cam-other"]["p_fa"]
    csv_out = runner.invoke(app, ["match", "--pool", *map(str, paths), "--db", str(db), "-f", "csv"])
    assert csv_out.exit_code == 0 and all(str(p) in csv_out.stdout for p in paths)
    help_text = runner.invoke(app, ["match", "--help"]).output
    assert "--pool" in help_text and "one probe" in help_text.lower()
    other = tmp_path / "other.jpg"
    other.write_bytes(encode_jpeg(np.zeros((100, 100, 3), np.uint8) + 90, 90))
    res = runner.invoke(app, ["match", "--pool", str(paths[0]), str(other), "--db", str(db)])
    assert res.exit_code == 2 and "other.jpg 100x100" in res.output and "differ in size" in res.output
    res = runner.invoke(app, ["match", "--pool", str(paths[0]), "--db", str(db), "--restore"])
    assert res.exit_code == 2 and "--pool" in res.output
    res = runner.invoke(app, ["match", "--pool", str(paths[0]), "--db", str(db)])  # one image: the note says so
    assert res.exit_code == 0 and f"one image pooled ({paths[0]})" in res.output and "without --pool" in res.output
    assert "one image pooled" not in csv_out.output


def test_match_pool_into_case_verified_and_reported(weak_probes, pool_db, runner, tmp_path):
    """``--pool --case``: the pooled result is a case file in the audit chain; the report names the pooled images."""
    paths, _ = weak_probes
    db, _ = pool_db
    case = tmp_path / "case"
    res = runner.invoke(app, ["match", "--pool", *map(str, paths[:3]), "--db", str(db), "--case", str(case)])
    assert res.exit_code == 0, res.output
    record = json.loads((case / "pool" / "pool-001.json").read_text())
    assert [im["path"] for im in record["inputs"]] == list(map(str, paths[:3]))
    assert runner.invoke(app, ["case", "verify", str(case)]).exit_code == 0
    small = tmp_path / "elsewhere" / "small.jpg"
    small.parent.mkdir()
    small.write_bytes(encode_jpeg(np.zeros((64, 64, 3), np.uint8) + 90, 90))
    res = runner.invoke(app, ["match", "--pool", str(paths[0]), str(small), "--db", str(db), "--case", str(case)])
    assert res.exit_code == 2 and "small.jpg 64x64" in res.output  # a refused pooling is audited, nothing written
    assert sorted(p.name for p in (case / "pool").iterdir()) == ["pool-001.json"]
    assert runner.invoke(app, ["case", "verify", str(case)]).exit_code == 0
    res = runner.invoke(app, ["report", str(case)])
    assert res.exit_code == 0, res.output
    page = (case / "report.html").read_text()
    assert "Pooled probe pool-001: 3 image(s) scored as one probe" in page and "matched-filter statistic" in page
    from spncli.report import _pooled_as  # a case file of an earlier version is described as what it pooled

    assert "maximum-likelihood" in _pooled_as([{"estimator": "pooled ML estimate sum(W*I/s2)/sum(I^2/s2) ..."}])
    assert all(str(p) in page for p in paths[:3]) and str(paths[3]) not in page and "Share of the weight" in page
    best = max(record["pooled"], key=lambda r: r["pce"])
    assert best["camera"] == "cam-true" and best["pce"] > 20 and f"{best['pce']:.1f}" in page
    record["pooled"][0]["pce"] += 100.0  # tampered
    (case / "pool" / "pool-001.json").write_text(json.dumps(record, indent=2))
    res = runner.invoke(app, ["case", "verify", str(case)])
    assert res.exit_code == 1 and "pool/pool-001.json: changed" in res.output


def test_weightings(weak_probes):
    """Both weightings beat the best single probe; a probe of pure noise added to the pool costs the
    variance-weighted statistic less than the unweighted one (its weight is its residual's inverse variance)."""
    paths, fps = weak_probes
    evidences = _evidence(paths)
    matcher = Matcher(fps[:1], MatchSettings())
    weighted = pool_match(evidences, matcher, singles=True)[0]
    plain = pool_match(evidences, matcher, weighting="none")[0]
    assert weighted["weighting"] == "variance" and plain["weighting"] == "none"
    assert min(weighted["pce"], plain["pce"]) > weighted["best_single_pce"]
    rng = np.random.default_rng(5)
    noise = np.clip(128 + rng.normal(0, 10, (*SHAPE, 3)), 0, 255).astype(np.uint8)  # no PRNU, residual variance
    noisy = [*evidences, decode(encode_jpeg(noise, 95), "noise.jpg")]  # about 19 against the probes' 11
    with_noise = {w: pool_match(noisy, matcher, weighting=w)[0]["pce"] for w in ("variance", "none")}
    assert weighted["pce"] > with_noise["variance"] > 1.15 * with_noise["none"]  # measured 100.7 > 79.8 > 62.0
    statistic, shares = pooled_statistic(evidences, matcher)
    assert statistic.dtype == np.float32 and statistic.shape == SHAPE
    assert len(shares) == len(evidences) and abs(sum(shares) - 1) < 1e-9
    with pytest.raises(ValueError, match="variance, none"):
        pool_match(evidences, matcher, weighting="equal")


def test_pooled_natural_images_beat_the_best_single_on_dresden(dresden):
    """Two Nikon_D70_0 natural images, centre 1024x1024, against 10-flat-field fingerprints: the pooled statistic
    scores above the better image alone (the maximum-likelihood estimate pooled before scored below it: 87 against
    121), each image pooled alone scores within a quarter of its plain match, and the other camera stays far from
    the threshold."""
    flats, naturals = sorted((dresden / "ff-jpg").glob("*")), sorted((dresden / "nat-jpg").glob("Nikon_D70_0_*"))
    crop = (1024, 1024)
    fps = []
    for cam in ("Nikon_D70_0", "Nikon_D70s_0"):
        k, meta = build_fingerprint([p for p in flats if p.name.startswith(cam + "_")], cam, crop=crop)
        fps.append(Fingerprint(cam, k, array_sha256(k), meta))
    matcher = Matcher(fps, MatchSettings(crop=crop))
    evidences = _evidence(naturals)
    assert len(evidences) == 2
    pooled = {r["camera"]: r for r in pool_match(evidences, matcher, singles=True)}
    own, other = pooled["Nikon_D70_0"], pooled["Nikon_D70s_0"]
    assert own["pce"] > 1.3 * own["best_single_pce"] > 60 and own["decision"] == "consistent"
    assert other["pce"] < 20 and other["decision"] == "not consistent"
    for ev, plain in zip(evidences, own["single_pce"]):
        alone = next(r for r in pool_match([ev], matcher) if r["camera"] == "Nikon_D70_0")["pce"]
        assert 0.75 * plain < alone < 1.5 * plain


def test_a_pooled_result_left_by_a_killed_run_is_discarded_not_adopted(weak_probes, pool_db, runner, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    """A run killed after writing pool/pool-001.json but before its end entry: the next run removes that file
    (named with its SHA-256 in its start entry) instead of recording it as if a completed run had made it."""
    import hashlib

    paths, _ = weak_probes
    db, _ = pool_db
    case = tmp_path / "case"
    args = ["match", "--pool", *map(str, paths[:3]), "--db", str(db), "--case", str(case)]

    def killed(*a, **k):
        raise KeyboardInterrupt  # stands for SIGKILL after the file was written, before the end entry

    monkeypatch.setattr("spncli.casefile.Case.audit", _kill_on("pool-completed", killed))
    runner.invoke(app, args)
    monkeypatch.undo()
    left = (case / "pool" / "pool-001.json").read_bytes()
    assert runner.invoke(app, ["case", "verify", str(case)]).exit_code == 1  # the open run is named
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    entries = [json.loads(line) for line in (case / "audit.jsonl").read_text().splitlines()]
    assert [e["event"] for e in entries] == ["pool-start", "pool-start", "pool-completed"]
    assert entries[1]["discarded"] == {"pool/pool-001.json": hashlib.sha256(left).hexdigest()}
    assert entries[2]["written"] == ["pool/pool-001.json"] and sorted(entries[2]["files"]) == ["pool/pool-001.json"]
    assert runner.invoke(app, ["case", "verify", str(case)]).exit_code == 0


def _kill_on(event, action):
    from spncli.casefile import Case

    original = Case.audit

    def audit(self, name, **fields):
        if name == event:
            action()
        return original(self, name, **fields)

    return audit


def test_relative_paths_are_recorded_absolute(weak_probes, pool_db, runner, tmp_path, monkeypatch):
    """Images named relative to the working folder: the pool and cluster case files, the fingerprint's sources and
    the calibration record absolute paths, so spn case verify re-hashes them from any folder, and the report
    never joins a recorded relative path to the folder it is made in."""
    from spncli.report import normalized_path

    paths, _ = weak_probes
    db, _ = pool_db
    names = [p.name for p in paths]
    monkeypatch.chdir(paths[0].parent)
    pool, clustered = tmp_path / "pool-case", tmp_path / "cluster-case"
    assert runner.invoke(app, ["match", "--pool", *names, "--db", str(db), "--case", str(pool)]).exit_code == 0
    assert runner.invoke(app, ["cluster", *names, "--case", str(clustered)]).exit_code == 0
    fp_db = tmp_path / "fp.h5"
    assert runner.invoke(app, ["fingerprint", *names, "-c", "probes", "--db", str(fp_db)]).exit_code == 0
    res = runner.invoke(app, ["calibrate", "--db", str(db), *names, "--qualities", "none"])
    assert res.exit_code == 0, res.output
    monkeypatch.chdir(tmp_path)
    expected = [str(p) for p in paths]
    assert [im["path"] for im in json.loads((pool / "pool" / "pool-001.json").read_text())["inputs"]] == expected
    assert sorted(im["path"] for im in json.loads((clustered / "cluster" / "clusters.json").read_text())["inputs"]) \
        == expected  # fmt: skip
    assert [s["path"] for s in FingerprintStore(fp_db).meta("probes")["sources"]] == expected
    doc, _ = FingerprintStore(db).calibration()
    assert [im["path"] for im in doc["background"]["images"]] == expected
    for case in (pool, clustered):
        res = runner.invoke(app, ["case", "verify", str(case)])
        assert res.exit_code == 0, res.output
    assert normalized_path("seized/../a.jpg") == "a.jpg" and normalized_path("/e/w/../s/./a.jpg") == "/e/s/a.jpg"


def test_a_damaged_probe_is_pooled_with_its_decoder_warning_recorded(weak_probes):
    paths, fps = weak_probes
    data = paths[0].read_bytes()
    sos = data.index(b"\xff\xda")
    cut = data[: sos + (len(data) - sos) // 2] + b"\xff\xd9"  # half the scan data, then an end marker
    evidences = [decode(cut, "cut.jpg"), *_evidence(paths[1:])]
    images = pool_match(evidences, Matcher(fps, MatchSettings()))[0]["images"]
    assert images[0]["decoder_warnings"][0].startswith("Corrupt JPEG data")
    assert all(im["decoder_warnings"] == [] for im in images[1:])


def test_a_uniform_image_cannot_take_over_the_pool(weak_probes):
    """A uniform grey image's residual varies by float rounding only (about 1e-11): its inverse-variance weight
    outweighed the photographs a millionfold and cancelled the match. The weight is capped at 8-bit rounding's
    variance (NOISE_FLOOR); the image's share of the weight is recorded and named in a note."""
    from spncli.residual import NOISE_FLOOR

    paths, fps = weak_probes
    matcher = Matcher(fps, MatchSettings())
    evidences = _evidence(paths)
    alone = pool_match(evidences, matcher)[0]
    grey = decode(encode_jpeg(np.full((*SHAPE, 3), 128, np.uint8), 90), "grey.jpg")
    with_grey = pool_match([*evidences, grey], matcher)[0]
    assert with_grey["camera"] == "cam-true" and with_grey["pce"] > 0.9 * alone["pce"] > 60
    shares = [im["weight_share"] for im in with_grey["images"]]
    assert abs(sum(shares) - 1) < 1e-3 and shares[-1] == max(shares) > 0.5 and NOISE_FLOOR == 1 / 12
    assert any("grey.jpg carries" in n for n in with_grey["notes"]) and alone["notes"] == []
    assert all(abs(im["weight_share"] - 0.2) < 0.05 for im in alone["images"])  # five alike probes share alike
    pair = pool_match([evidences[0], grey], matcher)[0]  # two images: one above 75% of the weight is named too
    assert any("grey.jpg carries" in n for n in pair["notes"])


def test_portrait_probes_are_turned_as_a_plain_match_turns_them(weak_probes, tmp_path):
    """Probes turned 90 degrees (pixels, not EXIF) against a landscape fingerprint, square crop: the pooled
    statistic is turned like a plain match's residual (it was scored unturned and the match was lost)."""
    paths, fps = weak_probes
    settings = MatchSettings(crop=(96, 96))
    turned = []
    for p in paths:
        q = tmp_path / (p.stem + ".png")
        q.write_bytes(cv2.imencode(".png", np.rot90(cv2.imread(str(p)), -1))[1].tobytes())
        turned.append(q)
    matcher = Matcher(fps, settings)
    upright = next(r for r in pool_match(_evidence(paths), matcher) if r["camera"] == "cam-true")
    record = next(r for r in pool_match(_evidence(turned), matcher) if r["camera"] == "cam-true")
    assert record["rotation"] in (90, 270) and record["pce"] > 0.8 * upright["pce"] > 40


def test_copies_csv_and_names(weak_probes, pool_db, runner, tmp_path):
    """A copy with the same pixels and other bytes is one photograph: it fails naming the first, the rest are
    pooled (exit 1). CSV rows carry the estimator, settings, notes and single PCEs; the pooled images are a JSON
    list, so a file name with a newline or '; ' cannot forge an entry (nor break the table's caption)."""
    paths, _ = weak_probes
    db, _ = pool_db
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(paths[0].read_bytes() + b"trailing bytes")  # other bytes, the same decoded pixels
    odd = tmp_path / "b.jpg (SHA-256 0); evil\nname.jpg"
    odd.write_bytes(paths[1].read_bytes())
    args = ["match", "--pool", str(paths[0]), str(copy), str(odd), str(paths[2]), "--db", str(db), "--singles"]
    res = runner.invoke(app, [*args, "-f", "csv"])
    assert res.exit_code == 1 and "same decoded pixels as" in res.output and "copy.jpg" in res.output
    import csv as csv_module
    import io

    rows = list(csv_module.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 2 and {r["camera"] for r in rows} == {"cam-true", "cam-other"}
    row = next(r for r in rows if r["camera"] == "cam-true")
    pooled = json.loads(row["pooled_images"])
    assert [im["path"] for im in pooled] == [str(paths[0]), str(odd), str(paths[2])] and row["n_images"] == "3"
    assert row["estimator"].startswith("matched filter") and row["weighting"] == "variance"
    assert len(json.loads(row["single_pce"])) == 3 and json.loads(row["notes"]) == [] and row["db_sha256"]
    table = runner.invoke(app, [*args])
    assert table.exit_code == 1 and "evil\\nname.jpg" in table.output and "\nname.jpg" not in table.output


def test_pooled_rows_that_do_not_follow_from_their_pce_are_named(weak_probes):
    """verify's row check covers a pooled record: a decision or p_fa edited in pool/pool-NNN.json is named even
    when the audit chain was rebuilt around the edit (only --head would catch that otherwise)."""
    from spncli.casefile import row_problems

    paths, fps = weak_probes
    rows = pool_match(_evidence(paths), Matcher(fps, MatchSettings()))
    assert row_problems(rows, "pool/pool-001.json") == []
    low = next(r for r in rows if r["camera"] == "cam-other")
    problems = row_problems([{**low, "decision": "consistent"}], "pool/pool-001.json")
    assert problems and problems[0].startswith("pool/pool-001.json: the pooled row against cam-other says")
    assert row_problems([{**low, "p_fa": 1e-30}], "pool/pool-001.json")
    for broken in ({**low, "decision": []}, {k: v for k, v in low.items() if k != "decision"}, {**low, "camera": 3}):
        assert row_problems([broken], "pool/pool-001.json") == [
            "pool/pool-001.json: a row without a camera, a decision or an image name as text"]  # not a traceback


def test_failed_inputs_of_a_pooled_case_are_hashed_and_verified(weak_probes, pool_db, runner, tmp_path):
    """A file that failed in a pooled case is recorded with its absolute path and SHA-256 (or why it could not
    be hashed) among the record's inputs: replacing it afterwards is named by spn case verify."""
    paths, _ = weak_probes
    db, _ = pool_db
    broken = tmp_path / "ev" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(paths[0].read_bytes()[:200])
    case = tmp_path / "case"
    res = runner.invoke(app, ["match", "--pool", str(paths[0]), str(paths[1]), str(broken), "--db", str(db),
                              "--case", str(case)])  # fmt: skip
    assert res.exit_code == 1 and "broken.jpg" in res.output
    record = json.loads((case / "pool" / "pool-001.json").read_text())
    failed = next(i for i in record["inputs"] if i.get("status") == "error")
    assert failed["path"] == str(broken) and failed["sha256"] == hashlib.sha256(broken.read_bytes()).hexdigest()
    assert runner.invoke(app, ["case", "verify", str(case)]).exit_code == 0
    broken.write_bytes(paths[2].read_bytes())  # a good image put in its place later
    res = runner.invoke(app, ["case", "verify", str(case)])
    assert res.exit_code == 1 and "broken.jpg" in res.output


def test_a_pool_only_case_report_says_the_database_changed(weak_probes, pool_db, runner, tmp_path):
    """A case holding only a pooled probe: after the camera's fingerprint is replaced in the database, spn report
    warns and the pooled section says so, naming the camera (it reported the old verdict silently)."""
    paths, fps = weak_probes
    db, _ = pool_db
    case = tmp_path / "case"
    assert runner.invoke(app, ["match", "--pool", *map(str, paths[:3]), "--db", str(db), "--case", str(case)]
                         ).exit_code == 0  # fmt: skip
    res = runner.invoke(app, ["report", str(case)])
    assert res.exit_code == 0 and "changed since this probe" not in res.output
    store = FingerprintStore(db)
    store.remove("cam-true")
    store.add("cam-true", fps[1].k, {"camera": "cam-true"})  # another pattern under the same name
    res = runner.invoke(app, ["report", str(case)])
    assert res.exit_code == 0 and "pool/pool-001.json: the fingerprint database" in res.output
    page = (case / "report.html").read_text()
    assert "changed since this probe was scored" in page and "cam-true: the database&#x27;s fingerprint now" in page
    from spncli.report import pooled_database_changes  # earlier versions recorded the path as given

    (line,) = pooled_database_changes([{"db": "db.h5", "db_sha256": "0" * 64, "camera": "cam-true"}])
    assert "recorded as db.h5, relative" in line and "not checked" in line
