"""Issue 8, inputs: exact geometry at every size, no silent skips or hangs, bounded reads, validated values,
fingerprints built with sanity checks and sealed metadata.

Each test reproduces one bullet of the issue's first list (as written there) and asserts the fixed behaviour.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import piexif
import pytest

from spncli import identify
from spncli.batch import _run
from spncli.cli import app
from spncli.evidence import DEFAULT_MAX_BYTES, MAX_BYTES_ENV, Evidence, EvidenceError, load_image, read_bytes
from spncli.geometry import GEOMETRY_RULE, anchor, centre_crop, crop_offsets
from spncli.identify import (
    FingerprintRefused,
    Matcher,
    MatchSettings,
    build_fingerprint,
    gather_inputs,
    walk_inputs,
)
from spncli.jobs import ExtractJob
from spncli.jpegtables import JpegFormatError, parse_jpeg
from spncli.store import Fingerprint, FingerprintStore, StoreError
from spncli.synthetic import dead_leaves, encode_jpeg, expose, flat_field, synthetic_prnu


def _png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))[1].tobytes()


def _with_exif(jpeg: bytes, model: str, serial: str) -> bytes:
    ifd0 = {piexif.ImageIFD.Make: b"Maker", piexif.ImageIFD.Model: model.encode()}
    exif = piexif.dump({"0th": ifd0, "Exif": {piexif.ExifIFD.BodySerialNumber: serial.encode()}})
    return jpeg[:2] + b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif + jpeg[2:]


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# -- geometry ------------------------------------------------------------------------------------------------


def test_placement_rule_composes_and_keeps_the_cfa_phase():
    clamped = 0
    for frame in range(16, 104):
        for h in range(16, frame + 1):
            o = crop_offsets((frame, frame), (h, h))[0]
            assert o % 2 == 0 and 0 <= o <= frame - h
            if o != anchor(frame) - anchor(h):
                clamped += 1
                assert h == frame - 1 and h % 4 == 3  # the one documented exception
                continue
            for c in range(16, h + 1):
                if crop_offsets((h, h), (c, c))[0] == anchor(h) - anchor(c):
                    assert o + crop_offsets((h, h), (c, c))[0] == crop_offsets((frame, frame), (c, c))[0]
    assert clamped == len(range(19, 103, 4))


@pytest.fixture(scope="module")
def odd_frames(tmp_path_factory):
    """Two synthetic cameras with strong PRNU and odd frame sizes: 3 PNG flats each, one probe scene each."""
    rng = np.random.default_rng(808)
    out = {}
    for shape in ((537, 541), (533, 547)):
        k = synthetic_prnu(shape, rng, std=0.04)
        folder = tmp_path_factory.mktemp(f"flats{shape[0]}")
        for i in range(3):
            (folder / f"flat{i}.png").write_bytes(_png(expose(flat_field(shape, rng), k, rng)))
        probe = expose(dead_leaves(shape, rng, n=200), k, rng)
        out[shape] = (folder, probe)
    return out


def _evidence(pixels: np.ndarray, name: str = "probe") -> Evidence:
    return Evidence(name, "0" * 64, 0, "png", pixels.astype(np.float32), 8, 255.0)


def test_every_probe_crop_from_512_to_531_matches_a_512_fingerprint(odd_frames):
    """Issue: fingerprints built with --crop 512 lost every true match of probes cropped to 513, 514, 515, ..."""
    for shape, (folder, probe) in odd_frames.items():
        k, meta = build_fingerprint(sorted(folder.iterdir()), "CAM", crop=(512, 512))
        assert meta["geometry"] == {
            "rule": GEOMETRY_RULE,
            "frame": list(shape),
            "origin": list(crop_offsets(shape, (512, 512))),
            "size": [512, 512],
        }
        fp = Fingerprint("CAM", k, "x", meta)
        ev = _evidence(probe)
        for size in range(512, 532):
            record = Matcher([fp], MatchSettings(crop=(size, size))).match(ev)[0]
            assert record["pce"] > 60 and record["shift_row"] == record["shift_col"] == 0, (shape, size, record)
            assert record["alignment"] is None  # same frame: exact by construction, nothing to suggest
        # the uncropped probe (odd sizes) against the 512 fingerprint
        assert Matcher([fp], MatchSettings()).match(ev)[0]["pce"] > 60


def test_smaller_odd_image_is_placed_by_the_same_rule_and_the_record_says_so(odd_frames):
    shape, (folder, probe) = next(iter(odd_frames.items()))
    k, meta = build_fingerprint(sorted(folder.iterdir()), "CAM")
    fp = Fingerprint("CAM", k, "x", meta)
    for size in ((521, 525), (515, 531), (401, 403)):  # same orientation as the frame (see score())
        record = Matcher([fp], MatchSettings()).match(_evidence(centre_crop(probe, size)))[0]
        assert record["pce"] > 60, (size, record)
        assert "differs from the fingerprint's frame" in record["alignment"] and "--max-shift" in record["alignment"]
    # an off-centre crop is not found at the centre alignment; the note says how to search for it
    off = np.ascontiguousarray(probe[30:430, 10:410])
    plain = Matcher([fp], MatchSettings()).match(_evidence(off))[0]
    searched = Matcher([fp], MatchSettings(max_shift=80)).match(_evidence(off))[0]
    assert plain["pce"] < 60 < searched["pce"] and "--max-shift" in plain["alignment"]
    assert "searched within ±80" in searched["alignment"]


# -- walking and reading: nothing skipped silently, nothing hangs -----------------------------------------------


@pytest.fixture
def seized(tmp_path, synth_case):
    root = tmp_path / "seized"
    (root / "sub").mkdir(parents=True)
    good = synth_case["probes"]["CAM-A"][0].read_bytes()
    (root / "ok.jpg").write_bytes(good)
    (root / "photo.avif").write_bytes(b"\x00\x00\x00\x18ftypavif\x00\x00\x00\x00mif1avif" + bytes(64))
    (root / "IMG_0001").write_bytes(b"\x00\x00\x00\x18ftypavis\x00\x00\x00\x00mif1avis" + bytes(64))  # by content
    (root / "anim.gif").write_bytes(b"GIF89a" + bytes(64))
    (root / "sub" / "pic.bmp").write_bytes(b"BM" + bytes(12) + (40).to_bytes(4, "little") + bytes(64))
    os.mkfifo(root / "pipe.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(good)
    (root / "link-out.jpg").symlink_to(outside)
    (root / "dir-out").symlink_to(tmp_path)
    (root / "sub" / "link-in.jpg").symlink_to(root / "ok.jpg")  # a second name of a walked file
    (root / "notes.txt").write_text("not an image\n")
    yield root
    sock.close()


EXPECTED_REFUSALS = {
    "photo.avif": "format not supported: AVIF",
    "IMG_0001": "format not supported: AVIF",
    "anim.gif": "format not supported: GIF",
    "pic.bmp": "format not supported: BMP",
    "pipe.jpg": "not a regular file (a FIFO)",
    "sock": "not a regular file (a socket)",
    "link-out.jpg": "symbolic link, not followed",
    "dir-out": "symbolic link, not followed",
}


def test_a_non_square_crop_of_a_landscape_image_is_not_turned(runner, dresden, tmp_path):
    """Adversarial review: a 520x512 crop of a landscape image scored against a square (512) fingerprint was
    tried only at 90 and 270 degrees (the crop looks portrait) and lost its true match. The frames decide."""
    db = tmp_path / "fp.h5"
    flats = [str(p) for p in sorted((dresden / "ff-jpg").glob("Nikon_D70_1_*.JPG"))]
    assert runner.invoke(app, ["fingerprint", *flats, "-c", "D70_1", "--db", str(db), "--crop", "512"]).exit_code == 0
    probe = str(dresden / "nat-jpg" / "Nikon_D70_1_20749.JPG")
    for crop in ("512", "520x512", "600x531"):
        res = runner.invoke(app, ["match", probe, "--db", str(db), "--crop", crop, "-f", "json"])
        assert res.exit_code == 0, res.output
        row = json.loads(res.stdout.splitlines()[0])
        assert row["rotation"] == 0 and row["n_shifts"] == 1 and row["decision"] == "consistent", (crop, row)


def test_walk_names_every_entry_with_its_reason(seized):
    others = []
    entries = {p.name: reason for p, reason in walk_inputs([seized], on_other=others.append)}
    assert entries.pop("ok.jpg") is None
    assert set(entries) == set(EXPECTED_REFUSALS)
    for name, words in EXPECTED_REFUSALS.items():
        assert words in entries[name], (name, entries[name])
    assert [p.name for p in others] == ["notes.txt"]
    assert sorted(p.name for p in gather_inputs([seized])) == sorted([*EXPECTED_REFUSALS, "ok.jpg"])
    # the reader finds each reason again from the path alone (so jobs on any worker report it)
    for path in gather_inputs([seized]):
        if path.name in EXPECTED_REFUSALS:
            with pytest.raises(EvidenceError) as info:
                load_image(path)
            assert EXPECTED_REFUSALS[path.name] in info.value.reason


def test_match_of_a_seized_folder_reports_every_refused_entry(runner, seized, synth_case, tmp_path):
    """Issue: HEIC, GIF, BMP, FIFOs and links out of the folder were skipped without an error row (exit 0)."""
    db = tmp_path / "db.h5"
    flats = synth_case["flats"]["CAM-A"]
    assert runner.invoke(app, ["fingerprint", str(flats), "-c", "A", "--db", str(db)]).exit_code == 0
    commands = (["match", str(seized), "--db", str(db), "-f", "json"],
                ["extract", str(seized), "--out", str(tmp_path / "out")])  # fmt: skip
    for args in commands:
        res = runner.invoke(app, args)
        assert res.exit_code == 1, res.output
        lines = _errors(res.stderr)
        assert len(lines) == len(EXPECTED_REFUSALS), lines
        for name, words in EXPECTED_REFUSALS.items():
            assert sum(f"/{name}: {words}" in line for line in lines) == 1, (name, lines)
        assert "Traceback" not in res.output


def test_fifo_named_on_the_command_line_does_not_hang(tmp_path, synth_case):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(EvidenceError, match="FIFO"):
        read_bytes(fifo)  # refused from lstat: never opened
    db = tmp_path / "db.h5"
    cmd = [sys.executable, "-m", "spncli"]
    flats = str(synth_case["flats"]["CAM-A"])
    subprocess.run([*cmd, "fingerprint", flats, "-c", "A", "--db", str(db)], check=True, capture_output=True)
    for args in (["match", str(fifo), "--db", str(db)], ["quality", str(fifo)]):
        res = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)
        lines = _errors(res.stderr)
        assert res.returncode == 1 and len(lines) == 1
        assert lines[0].startswith(f"error: {fifo}: not a regular file (a FIFO)")
        assert "Traceback" not in res.stderr


def test_byte_bound_is_checked_before_reading(runner, tmp_path, synth_case, monkeypatch):
    """Issue: a JPEG padded past 2 GiB ended match/fingerprint with an OpenCV traceback."""
    monkeypatch.setenv(MAX_BYTES_ENV, str(DEFAULT_MAX_BYTES))  # the CLI sets it per run; restored after the test
    (tmp_path / "ev").mkdir()
    huge = tmp_path / "ev" / "huge.jpg"
    with open(huge, "wb") as f:
        f.write(synth_case["probes"]["CAM-A"][0].read_bytes())
        f.truncate(2**31 + 1000)  # sparse: nothing is written, and nothing may be read
    with pytest.raises(EvidenceError, match="exceeds the bound of 2,147,483,647 bytes"):
        load_image(huge)
    db = tmp_path / "db.h5"
    flats = synth_case["flats"]["CAM-A"]
    res = runner.invoke(app, ["fingerprint", str(flats), str(huge), "-c", "A", "--db", str(db)])
    assert res.exit_code == 1 and len(_errors(res.stderr)) == 1 and "--max-bytes" in res.stderr
    probe = synth_case["probes"]["CAM-A"][0]
    res = runner.invoke(app, ["--max-bytes", "1000", "match", str(probe), "--db", str(db)])
    assert res.exit_code == 1 and f"{probe}: {probe.stat().st_size:,} bytes exceeds the bound of 1,000" in res.stderr
    res = runner.invoke(app, ["--max-bytes", str(DEFAULT_MAX_BYTES + 1), "match", str(probe), "--db", str(db)])
    assert res.exit_code == 2 and "2147483647" in res.stderr
    assert runner.invoke(app, ["match", str(probe), "--db", str(db)]).exit_code == 0  # the bound is reset per run


def test_control_characters_in_names_stay_on_one_line(runner, tmp_path):
    """Issue: a file name with a newline split the error: line in two."""
    names = ["bad\nname.jpg", "esc\x1b[31mred.jpg", "[bold]markup[-bold].jpg"]
    for name in names:
        (tmp_path / name).write_bytes(b"\xff\xd8\xff\xe0 truncated")
    res = runner.invoke(app, ["quality", *[str(tmp_path / n) for n in names]])
    assert res.exit_code == 1
    lines = res.stderr.splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines), lines
    assert "bad\\nname.jpg: " in lines[0] and "esc\\x1b[31mred.jpg: " in lines[1]
    assert "[bold]markup[-bold].jpg: " in lines[2]


def test_control_characters_in_names_stay_on_one_row_of_the_table(runner, synth_case, tmp_path):
    """Adversarial review: the progress line and the table printed a raw newline from a scored file's name."""
    db = tmp_path / "db.h5"
    flats = str(synth_case["flats"]["CAM-A"])
    assert runner.invoke(app, ["fingerprint", flats, "-c", "CAM-A", "--db", str(db)]).exit_code == 0
    ev = tmp_path / "ev"
    ev.mkdir()
    shutil.copy(synth_case["probes"]["CAM-A"][0], ev / "a\nb.jpg")
    res = runner.invoke(app, ["match", str(ev), "--db", str(db)])
    assert res.exit_code == 0, res.output
    assert "a\\nb.jpg" in res.stderr and not any(line.startswith("b.jpg") for line in res.stderr.splitlines())
    rows = [line for line in res.stdout.splitlines() if "b.jpg" in line]
    assert len(rows) == 1 and "a\\nb.jpg" in rows[0], res.stdout


def test_code_errors_are_reported_as_such(tmp_path):
    """A defect in a job is an "internal error (please report)", not an evidence error; bad evidence stays as is."""

    def defect(path):
        raise KeyError("oops")

    assert _run(defect, "x.jpg")["error"] == "internal error (please report): KeyError: 'oops'"
    (tmp_path / "t.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    reason = _run(ExtractJob(tmp_path / "out"), str(tmp_path / "t.jpg"))["error"]
    assert "truncated" in reason and "internal error" not in reason


def test_invalid_quantization_tables_are_rejected(tmp_path):
    """Issue: a DQT of zeros was decoded as quality 100."""
    good = encode_jpeg(np.full((64, 64, 3), 120, np.uint8), 80)
    i = good.index(b"\xff\xdb")
    n = int.from_bytes(good[i + 2 : i + 4], "big")
    seg = bytearray(good[i : i + 2 + n])
    seg[5 : 5 + 64] = bytes(64)
    bad = good[:i] + bytes(seg) + good[i + 2 + n :]
    with pytest.raises(JpegFormatError, match="zero entries"):
        parse_jpeg(bad)
    (tmp_path / "z.jpg").write_bytes(bad)
    with pytest.raises(EvidenceError, match="quantization table 0 has 64 zero entries"):
        load_image(tmp_path / "z.jpg")


# -- option values ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, words",
    [
        (["fingerprint", "F", "-c", "A", "--db", "D", "--sigma", "inf"], "--sigma must be a finite number > 0"),
        (["fingerprint", "F", "-c", "A", "--db", "D", "--sigma", "nan"], "--sigma must be a finite number > 0"),
        (["fingerprint", "F", "-c", "A", "--db", "D", "--sigma", "0"], "--sigma must be a finite number > 0"),
        (["extract", "F", "--out", "O", "--sigma", "inf"], "sigma must be a finite number > 0"),
        (["match", "F", "--db", "D", "--threshold", "nan"], "--threshold must be a finite number"),
        (["match", "F", "--db", "D", "--threshold", "inf"], "--threshold must be a finite number"),
        (["restore", "F", "--tile", "100"], "use a multiple of 16 of at least 64"),
        (["restore", "F", "--tile", "48"], "use a multiple of 16 of at least 64"),
    ],
)
def test_option_values_are_validated(runner, tmp_path, args, words):
    """Issue: --sigma inf stored an all-NaN fingerprint; --threshold nan; --tile 100 failed every file."""
    subs = {"F": str(tmp_path), "D": str(tmp_path / "db.h5"), "O": str(tmp_path.parent / "out")}
    res = runner.invoke(app, [subs.get(a, a) for a in args])
    assert res.exit_code == 2 and words in res.stderr, res.output
    assert not (tmp_path / "db.h5").exists()


def test_tile_check_in_the_library():
    from spncli.restoration import check_tile

    assert check_tile(1024) == 1024 and check_tile(64) == 64
    with pytest.raises(ValueError, match="multiple of 16"):
        check_tile(100)


def test_malicious_pickle_weights_are_refused_without_running(tmp_path):
    from spncli.restoration import DEFAULT_MODEL, ModelError, load_restorer

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    data = pickle.dumps({"stem.weight": Evil()})
    (tmp_path / "evil.pt").write_bytes(data)
    card = json.loads(Path(DEFAULT_MODEL).read_text())
    card |= {"weights": "evil.pt", "weights_sha256": hashlib.sha256(data).hexdigest()}
    (tmp_path / "evil.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="not a plain tensor state dict.*nothing in it was run"):
        load_restorer(tmp_path / "evil.json", "cpu")
    assert not marker.exists()


@pytest.mark.parametrize(
    "change",
    [
        {"architecture": {"bogus": 1}},
        {"architecture": [1, 2]},
        {"architecture": {"width": -1}},
        {"architecture": {"width": "x"}},
        {"weights": ["x"]},
        {"weights": "../spn-restore-v1.pt"},
        {"receptive_radius": None},
        "a list, not a card",
    ],
)
def test_malformed_model_cards_are_one_line_errors(tmp_path, runner, synth_case, change):
    """Adversarial review: a card with the right SHA-256 but a malformed body gave tracebacks."""
    from spncli.restoration import DEFAULT_MODEL, ModelError, load_restorer

    weights = Path(DEFAULT_MODEL).with_suffix(".pt")
    shutil.copy(weights, tmp_path / weights.name)
    card = json.loads(Path(DEFAULT_MODEL).read_text())
    card = ["a list"] if isinstance(change, str) else card | change
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError):
        load_restorer(tmp_path / "card.json", "cpu")
    probe = synth_case["probes"]["CAM-A"][0]
    res = runner.invoke(app, ["restore", str(probe), "--model", str(tmp_path / "card.json"), "-o", str(tmp_path / "o")])
    assert res.exit_code != 0 and "Traceback" not in res.output and res.exception.__class__ is SystemExit, res.output


def test_a_fifo_as_model_card_or_database_does_not_hang(tmp_path, runner, synth_case):
    from spncli.restoration import ModelError, load_restorer

    os.mkfifo(tmp_path / "card.json")
    with pytest.raises(ModelError, match="not a regular file"):
        load_restorer(tmp_path / "card.json", "cpu")
    os.mkfifo(tmp_path / "db.h5")
    probe = synth_case["probes"]["CAM-A"][0]
    res = runner.invoke(app, ["match", str(probe), "--db", str(tmp_path / "db.h5")])
    assert res.exit_code == 2 and "not a regular file" in res.output and res.exception.__class__ is SystemExit


# -- fingerprints: sanity checks when building, metadata under the checksum ---------------------------------------


@pytest.fixture(scope="module")
def flats(tmp_path_factory):
    """Flat-fields of one sensor: 3 of model A (serial 1), 2 of model B, and one of another size."""
    rng = np.random.default_rng(99)
    k = synthetic_prnu((128, 192), rng, std=0.02)
    root = tmp_path_factory.mktemp("flats")

    def shot():
        return encode_jpeg(expose(flat_field((128, 192), rng), k, rng), 95)

    for sub, model, n in (("a", "Model A", 3), ("b", "Model B", 2)):
        (root / sub).mkdir()
        for i in range(n):
            (root / sub / f"{sub}{i}.jpg").write_bytes(_with_exif(shot(), model, "SN-" + model[-1]))
    (root / "small.jpg").write_bytes(encode_jpeg(expose(flat_field((128, 192), rng), k, rng)[:100, :150], 95))
    return root


def test_fingerprint_sanity_checks(runner, flats, tmp_path):
    """Issue: models mixed silently; one image accepted; mixed sizes stored partially; 'exists' only at the end."""
    db = tmp_path / "db.h5"

    def fp(*args):
        return runner.invoke(app, ["fingerprint", *map(str, args), "--db", str(db)])

    res = fp(flats / "a", flats / "b", "-c", "MIX")
    assert res.exit_code == 1 and "EXIF model 'Model B'" in res.stderr and "--allow-mixed" in res.stderr
    assert not db.exists()
    res = fp(flats / "a", flats / "b", "-c", "MIX", "--allow-mixed")
    assert res.exit_code == 0 and "warning:" in res.stderr and "10 or more" in res.stderr
    assert FingerprintStore(db).meta("MIX")["exif_mixed_allowed"] is True
    res = fp(flats / "a" / "a0.jpg", "-c", "ONE")
    assert res.exit_code == 1 and "needs at least 2" in res.stderr and "nothing stored" in res.stderr
    res = fp(flats / "a", flats / "small.jpg", "-c", "SIZES")
    assert res.exit_code == 1 and "small.jpg is 150x100 (cols x rows) but" in res.stderr
    assert "a0.jpg is 192x128" in res.stderr
    assert FingerprintStore(db).cameras() == ["MIX"]


def test_existing_id_is_refused_before_any_image_is_read(runner, flats, tmp_path, monkeypatch):
    db = tmp_path / "db.h5"
    assert runner.invoke(app, ["fingerprint", str(flats / "a"), "-c", "A", "--db", str(db)]).exit_code == 0

    def no_reading(*args, **kwargs):
        raise AssertionError("an image was read")

    monkeypatch.setattr(identify, "load_image", no_reading)
    res = runner.invoke(app, ["fingerprint", str(flats / "a"), "-c", "A", "--db", str(db)])
    assert res.exit_code == 2 and "exists already (use --replace" in res.stderr, res.output


def test_non_finite_fingerprint_is_never_stored(flats, tmp_path, monkeypatch):
    nan = np.full((128, 192), np.nan, np.float32)
    monkeypatch.setattr(identify.FingerprintAccumulator, "finalize", lambda self: nan)
    with pytest.raises(FingerprintRefused, match="non-finite"):
        build_fingerprint(sorted((flats / "a").iterdir()), "A")
    with pytest.raises(StoreError, match="non-finite"):
        FingerprintStore(tmp_path / "db.h5").add("A", np.full((8, 8), np.inf, np.float32), {})
    assert not (tmp_path / "db.h5").exists()


@pytest.fixture
def sealed_db(tmp_path):
    db = tmp_path / "db.h5"
    meta = {
        "camera": "cam",
        "make": "Maker",
        "model": "M1",
        "serial": "S1",
        "image_count": 12,
        "sources": [{"name": "a.jpg", "sha256": "ab" * 32}],
        "crop": [64, 64],
        "geometry": {"rule": GEOMETRY_RULE, "frame": [80, 96], "origin": [8, 16], "size": [64, 64]},
    }
    FingerprintStore(db).add("cam", np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32), meta)
    FingerprintStore(db).add("other", np.ones((64, 64), np.float32), {"camera": "other"})
    return db


def _edit_meta(key, value):
    def edit(f):
        ds = f["cameras/cam/K"]
        meta = json.loads(ds.attrs["meta"])
        meta[key] = value
        ds.attrs["meta"] = json.dumps(meta)

    return edit


EDITS = {
    "make": _edit_meta("make", "Other"),
    "model": _edit_meta("model", "M2"),
    "serial": _edit_meta("serial", "S2"),
    "count": _edit_meta("image_count", 99),
    "sources": _edit_meta("sources", []),
    "geometry": _edit_meta("geometry", {"frame": [80, 96], "origin": [6, 16], "size": [64, 64]}),
    "meta whitespace": lambda f: f["cameras/cam/K"].attrs.modify("meta", f["cameras/cam/K"].attrs["meta"] + " "),
    "pixel sha": lambda f: f["cameras/cam/K"].attrs.modify("sha256", "0" * 64),
    "seal removed": lambda f: f["cameras/cam/K"].attrs.__delitem__("seal"),
    "renamed": lambda f: [f["cameras"].move(a, b) for a, b in (("other", "t"), ("cam", "other"), ("t", "cam"))],
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_every_stored_fact_is_under_the_seal(sealed_db, edit, runner):
    """Issue: make, model, serial, sources and count could be edited without detection (only pixels were hashed)."""
    FingerprintStore(sealed_db).load("cam")
    with h5py.File(sealed_db, "r+") as f:
        EDITS[edit](f)
    with pytest.raises(StoreError, match="it was not used"):
        FingerprintStore(sealed_db).load("cam")
    with pytest.raises(StoreError, match="it was not used"):
        FingerprintStore(sealed_db).meta("cam")
    res = runner.invoke(app, ["db", "list", "--db", str(sealed_db), "-f", "json"])
    assert res.exit_code == 1 and len(_errors(res.stderr)) >= 1 and "Traceback" not in res.output


def test_hollow_database_and_disk_full_give_one_line(tmp_path, monkeypatch, runner):
    """Issue: format tag but missing datasets -> KeyError traceback; disk full while rewriting -> OSError traceback."""
    hollow = tmp_path / "hollow.h5"
    with h5py.File(hollow, "w") as f:
        f.attrs["format"] = "spn-db/2"
        f.create_group("cameras/X")
    res = runner.invoke(app, ["db", "show", "--db", str(hollow), "X"])
    assert res.exit_code == 2 and "fingerprint 'X' is corrupted: damaged entry" in res.stderr
    with h5py.File(hollow, "w") as f:
        f.attrs["format"] = "spn-db/2"
        f.create_dataset("cameras", data=np.zeros(3))
    with pytest.raises(StoreError, match="damaged database"):
        FingerprintStore(hollow).cameras()

    db = tmp_path / "db.h5"
    store = FingerprintStore(db)
    store.add("a", np.ones((16, 16), np.float32), {})
    before = db.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # adding: the camera's file is written, then flushed
    with pytest.raises(StoreError, match="No space left on device.*previous version is unchanged"):
        store.add("b", np.ones((16, 16), np.float32), {})
    monkeypatch.setattr(h5py.Group, "create_dataset", full)  # removing/replacing: a fresh file is written
    with pytest.raises(StoreError, match="No space left on device"):
        store.add("a", np.ones((16, 16), np.float32), {}, replace=True)
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.h5", "db.h5.d", "db.h5.lock", "hollow.h5"]
    left = sorted(p.name for p in (tmp_path / "db.h5.d").iterdir())
    assert [n for n in left if n.endswith(".h5")] == [n for n in left if n.startswith("a.")]  # no temporary left
    assert len(left) <= 3 and "prescreen.sig" in left  # a's file, its pre-screen record; the writers' marker
    monkeypatch.undo()
    assert store.cameras() == ["a"]


def test_unsealed_fingerprints_of_older_databases_are_not_used(tmp_path):
    db = tmp_path / "old.h5"
    k = np.ones((8, 8), np.float32)
    with h5py.File(db, "w") as f:
        f.attrs["format"] = "spn-db/1"
        ds = f.create_group("cameras/old").create_dataset("K", data=k)
        ds.attrs["sha256"] = hashlib.sha256(k.tobytes()).hexdigest()
        ds.attrs["meta"] = "{}"
    store = FingerprintStore(db)
    assert store.cameras() == ["old"]
    with pytest.raises(StoreError, match="no seal over its metadata.*rebuild it"):
        store.load("old")
    store.add("new", k, {"camera": "new"})  # the file is upgraded; the old entry stays refused
    assert store.load("new").meta == {"camera": "new"}
    with pytest.raises(StoreError, match="no seal"):
        store.load("old")


@pytest.mark.parametrize("orientation", range(0, 10))
def test_tiff_pixels_stay_in_sensor_orientation_whatever_the_tag(orientation, tmp_path):
    """OpenCV's TIFF decoder applies the orientation tag despite IMREAD_IGNORE_ORIENTATION: undone, so the
    pixels are the file's samples in stored order (8-bit RGB and 16-bit grey, non-square; 0 and 9, which
    no decoder applies, are kept as they are)."""
    import io

    from PIL import Image

    from spncli.evidence import decode

    rng = np.random.default_rng(orientation)
    rgb = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    grey = rng.integers(0, 65536, (64, 80), dtype=np.uint16)
    for samples, want in ((rgb, rgb.astype(np.float32)), (grey, grey[:, :, None].astype(np.float32) * (255 / 65535))):
        exif = Image.Exif()
        exif[274] = orientation
        buf = io.BytesIO()
        Image.fromarray(samples).save(buf, format="TIFF", exif=exif.tobytes())
        ev = decode(buf.getvalue(), f"o{orientation}.tif", max_pixels=10**6)
        assert ev.shape == (64, 80) and ev.exif.get("orientation") == orientation
        np.testing.assert_allclose(ev.pixels, want, rtol=1e-6)


def test_link_loops_dangling_links_and_unreadable_folders_are_each_one_line(tmp_path, monkeypatch):
    """A link loop used to crash the walk (RuntimeError from Path.resolve); a dangling link and a folder that
    cannot be listed were skipped in silence. Each is now yielded with its reason, and the reader says why."""
    ev = tmp_path / "ev"
    (ev / "loop").mkdir(parents=True)
    os.symlink("loopA", ev / "loop" / "loopB")
    os.symlink("loopB", ev / "loop" / "loopA")
    os.symlink("self.jpg", ev / "self.jpg")
    os.symlink("missing.jpg", ev / "dangle.jpg")
    locked = ev / "locked"
    locked.mkdir()
    real_scandir, real_walk = os.scandir, os.walk

    def scandir(path="."):
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    def walk(top, topdown=True, onerror=None, followlinks=False):  # root reads every folder: simulate one it cannot
        for dirpath, dirnames, filenames in real_walk(top, topdown, onerror, followlinks):
            if "locked" in dirnames:
                dirnames.remove("locked")
                if onerror:
                    onerror(PermissionError(errno.EACCES, "Permission denied", str(locked)))
            yield dirpath, dirnames, filenames

    monkeypatch.setattr(os, "walk", walk)
    found = {p.relative_to(ev).as_posix(): reason for p, reason in walk_inputs([ev])}
    assert "does not exist" in found["dangle.jpg"] and "does not exist" in found["self.jpg"]
    assert "loop" in found["loop/loopA"] and "loop" in found["loop/loopB"]
    assert found["locked"].startswith("folder that cannot be read (Permission denied)")
    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(EvidenceError, match="folder that cannot be read"):
        read_bytes(locked)
    with pytest.raises(EvidenceError, match="no such file"):
        read_bytes(ev / "self.jpg")


def _dup_names(root: Path) -> list[Path]:
    """a/x.jpg, b/x.jpg and b/x.JPG with the same bytes: one output name each before the fix."""
    data = encode_jpeg(dead_leaves((96, 128), np.random.default_rng(4)), 90)
    files = [root / "a" / "x.jpg", root / "b" / "x.jpg", root / "b" / "x.JPG"]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
    return files


def test_inputs_with_one_name_get_one_output_each(runner, tmp_path):
    files = _dup_names(tmp_path / "ev")
    if len({p.name for p in (tmp_path / "ev" / "b").iterdir()}) < 2:
        pytest.skip("a case-insensitive file system")
    res = runner.invoke(app, ["extract", str(tmp_path / "ev"), "--out", str(tmp_path / "res")])
    assert res.exit_code == 0, res.output
    sources = sorted(json.loads(p.read_text())["input"]["path"] for p in (tmp_path / "res").glob("*.residual.json"))
    assert sources == sorted(str(f) for f in files)  # three records, none overwritten
    res = runner.invoke(app, ["degrade", str(tmp_path / "ev"), "--out", str(tmp_path / "deg"), "-q", "70"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "deg" / "manifest.json").read_text())
    assert len({e["output"] for e in manifest["files"]}) == 3 and len(list((tmp_path / "deg").glob("*.jpg"))) == 3


def test_degrade_into_a_used_folder_keeps_the_earlier_manifest_entries(runner, tmp_path):
    files = _dup_names(tmp_path / "ev")
    out = tmp_path / "deg"
    assert runner.invoke(app, ["degrade", str(files[0]), "--out", str(out), "-q", "80"]).exit_code == 0
    assert runner.invoke(app, ["degrade", str(files[1]), "--out", str(out), "-q", "70"]).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(e["quality"] for e in manifest["files"]) == [70, 80] and len(manifest["runs"]) == 2
    # a killed run's journal (entries written after each image) is merged by the next run, then removed
    killed = dict(manifest["files"][0], output="killed-run.q55.420.jpg", quality=55)
    (out / ".manifest-journal.jsonl").write_text(json.dumps(killed) + "\n" + '{"torn')
    assert runner.invoke(app, ["degrade", str(files[1]), "--out", str(out), "-q", "75"]).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(e["quality"] for e in manifest["files"]) == [55, 70, 75, 80]
    assert not (out / ".manifest-journal.jsonl").exists()
    (out / "manifest.json").write_text("[]")
    res = runner.invoke(app, ["degrade", str(files[1]), "--out", str(out), "-q", "60"])
    assert res.exit_code == 2 and "is not a manifest of spn degrade" in res.output
    assert (out / "manifest.json").read_text() == "[]"
    # a journal that is a link out of the folder is never followed: it was ignored when read and then appended to
    fresh, outside = tmp_path / "deg2", tmp_path / "outside.txt"
    fresh.mkdir()
    outside.write_text("precious\n")
    (fresh / ".manifest-journal.jsonl").symlink_to(outside)
    res = runner.invoke(app, ["degrade", str(files[1]), "--out", str(fresh), "-q", "60"])
    assert res.exit_code == 2 and ".manifest-journal.jsonl: is a symbolic link" in res.output, res.output
    assert outside.read_text() == "precious\n" and not list(fresh.glob("*.jpg"))


def test_degrade_rerun_after_a_kill_lists_each_file_once_and_one_run_at_a_time(runner, tmp_path):
    """A killed run's journal names files the rerun writes again: the manifest lists each file once (it listed
    both entries) and the run records the merge; a second run into a folder another run holds is refused."""
    import fcntl

    files = _dup_names(tmp_path / "ev")
    out = tmp_path / "deg"
    assert runner.invoke(app, ["degrade", str(files[0]), "--out", str(out), "-q", "80"]).exit_code == 0
    first = json.loads((out / "manifest.json").read_text())["files"][0]
    (out / ".manifest-journal.jsonl").write_text(json.dumps(first) + "\n")  # as a run killed after that file
    res = runner.invoke(app, ["degrade", str(files[0]), "--out", str(out), "-q", "80"])
    assert res.exit_code == 0 and "1 file(s) written" in res.output, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["output"] for e in manifest["files"]] == [first["output"]]
    assert manifest["runs"][-1]["killed_run_entries_merged"] == 1 and len(manifest["runs"]) == 2
    with open(out / ".degrade.lock", "a") as held:  # another run is writing the folder
        fcntl.flock(held, fcntl.LOCK_EX)
        res = runner.invoke(app, ["degrade", str(files[1]), "--out", str(out), "-q", "70"])
    assert res.exit_code == 2 and "another spn degrade is writing" in res.output
    assert len(json.loads((out / "manifest.json").read_text())["files"]) == 1


@pytest.mark.parametrize("command", ["extract", "degrade", "restore"])
def test_an_out_that_cannot_be_a_folder_is_one_line_before_any_work(runner, tmp_path, command):
    files = _dup_names(tmp_path / "ev")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    res = runner.invoke(app, [command, str(files[0]), "--out", str(blocker)])
    assert res.exit_code == 2 and "exists and is not a folder" in res.output and "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1, lines


def test_damaged_jpeg_scan_data_is_decoded_with_a_warning_that_names_the_file(runner, tmp_path, capfd):
    """libjpeg reports a cut or damaged scan only on stderr, without the file's name: the warning is now caught,
    recorded in every output (decoder_warnings) and printed as one line naming the file."""
    good = encode_jpeg(dead_leaves((256, 256), np.random.default_rng(6)), 90)
    sos = good.index(b"\xff\xda")
    cut = good[: sos + (len(good) - sos) // 2] + b"\xff\xd9"  # half the scan, then an end marker
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "cut.jpg").write_bytes(cut)
    (tmp_path / "ev" / "good.jpg").write_bytes(good)
    from spncli.evidence import decode

    assert decode(good, "good.jpg").warnings == []
    ev = decode(cut, "cut.jpg")
    assert ev.warnings and ev.warnings[0].startswith("Corrupt JPEG data") and ev.provenance()["decoder_warnings"]
    res = runner.invoke(app, ["extract", str(tmp_path / "ev"), "--out", str(tmp_path / "res")])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if "decoder:" in line]
    assert len(lines) == 1 and "cut.jpg: decoder: Corrupt JPEG data" in lines[0], res.output
    records = {json.loads(p.read_text())["input"]["path"].rsplit("/", 1)[1]: json.loads(p.read_text())
               for p in (tmp_path / "res").glob("*.json")}  # fmt: skip
    assert records["cut.jpg"]["input"]["decoder_warnings"] and not records["good.jpg"]["input"]["decoder_warnings"]
    assert "Corrupt JPEG data" not in capfd.readouterr().err  # caught, not left unattributed on stderr


def test_damaged_jpeg_coefficients_warnings_are_caught_too(runner, tmp_path, capfd):
    """The compression-aware residual reads the file's DCT coefficients with jpeglib, whose libjpeg printed the
    same damage on stderr unattributed: those messages are now caught as the pixels' are and recorded once."""
    good = encode_jpeg(dead_leaves((256, 256), np.random.default_rng(6)), 90)
    sos = good.index(b"\xff\xda")
    cut = good[: sos + (len(good) - sos) // 2] + b"\xff\xd9"
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "cut.jpg").write_bytes(cut)
    from spncli.evidence import decode
    from spncli.jpegdomain import coefficients_of

    ev = decode(cut, "cut.jpg")
    before = list(ev.warnings)
    capfd.readouterr()
    coefficients_of(ev, cut)
    assert ev.warnings == before  # the same message, not recorded twice
    ev.warnings.clear()
    coefficients_of(ev, cut)
    assert ev.warnings and ev.warnings[0].startswith("DCT coefficient read: Corrupt JPEG data")  # labelled
    assert "Corrupt JPEG data" not in capfd.readouterr().err
    from spncli.evidence import decoder_messages

    with pytest.raises(RuntimeError), decoder_messages() as lines:  # a block that fails still sorts its stderr
        os.write(2, b"Corrupt JPEG data: 3 extraneous bytes\nsomething else\n")
        raise RuntimeError("the read failed")
    assert lines == ["Corrupt JPEG data: 3 extraneous bytes"] and "something else" in capfd.readouterr().err
    res = runner.invoke(app, ["extract", str(tmp_path / "ev"), "--out", str(tmp_path / "res"), "--residual",
                              "compression-aware"])  # fmt: skip
    assert res.exit_code == 0, res.output
    record = json.loads(next((tmp_path / "res").glob("*.json")).read_text())
    assert record["residual_kind"] == "compression-aware" and record["input"]["decoder_warnings"]
    assert "Corrupt JPEG data" not in capfd.readouterr().err


def test_the_same_picture_twice_counts_once_in_a_fingerprint(tmp_path):
    rng = np.random.default_rng(8)
    k = synthetic_prnu((128, 160), rng)
    files = []
    for i in range(3):
        files.append(tmp_path / f"f{i}.jpg")
        files[-1].write_bytes(encode_jpeg(expose(flat_field((128, 160), rng), k, rng), 95))
    copy = tmp_path / "copy.jpg"
    shutil.copy(files[0], copy)
    wrapped = tmp_path / "wrapped.jpg"  # other bytes, the same decoded pixels: one photograph still
    wrapped.write_bytes(files[1].read_bytes() + b"\x00tail")
    warnings = []
    fp, meta = build_fingerprint([*files, copy, wrapped], "cam", on_warning=warnings.append)
    assert meta["image_count"] == 3 and [s["path"] for s in meta["sources"]] == [str(f) for f in files]
    assert any(w.startswith(f"{copy}: same bytes as {files[0]}") for w in warnings), warnings
    assert any(w.startswith(f"{wrapped}: same decoded pixels as {files[1]}") for w in warnings), warnings
    assert all(len(s["pixel_sha256"]) == 64 for s in meta["sources"])  # calibration refuses copies of a source


def test_output_of_others_during_a_decode_passes_through_byte_for_byte(capfd):
    """Only libjpeg's own messages are taken from standard error during a decode; a progress bar's frames
    (carriage returns, no newline) and other lines are written on unchanged, in order."""
    from spncli.evidence import decoder_messages

    with decoder_messages() as lines:
        os.write(2, b"\rframe 1\rframe 2")
        os.write(2, b"\nCorrupt JPEG data: premature end of data segment\nWarning: not a decoder's\n")
    assert lines == ["Corrupt JPEG data: premature end of data segment"]
    assert capfd.readouterr().err == "\rframe 1\rframe 2\nWarning: not a decoder's\n"


def test_one_opener_refuses_links_special_files_and_other_names(tmp_path):
    """Evidence, case files, the database's lock and sign file, model files and the walker's sniffing all
    open through provenance.open_regular: a link (unless followed), a FIFO (read or write, without hanging),
    a folder, and with one_name a file with another hard link are refused with their reason."""
    from spncli.provenance import RefusedFile, open_regular

    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    fd, st = open_regular(plain)
    assert os.read(fd, 4) == b"x" and st.st_size == 1 and os.get_blocking(fd)
    os.close(fd)
    (tmp_path / "link").symlink_to(plain)
    with pytest.raises(RefusedFile) as exc:
        open_regular(tmp_path / "link")
    assert exc.value.reason == "link"
    fd, _ = open_regular(tmp_path / "link", follow_links=True)
    os.close(fd)
    os.mkfifo(tmp_path / "fifo")
    for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR):
        with pytest.raises(RefusedFile) as exc:
            open_regular(tmp_path / "fifo", flags)
        assert exc.value.reason == "special"
    with pytest.raises(RefusedFile) as exc:
        open_regular(tmp_path)
    assert exc.value.reason == "special" and isinstance(exc.value, OSError)
    os.link(plain, tmp_path / "other-name")
    fd, _ = open_regular(plain)  # another name is allowed unless one_name
    os.close(fd)
    with pytest.raises(RefusedFile) as exc:
        open_regular(plain, os.O_RDWR, one_name=True)
    assert exc.value.reason == "names" and exc.value.st.st_nlink == 2
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "absent")
    fd, _ = open_regular(tmp_path / "new", os.O_RDWR | os.O_CREAT, one_name=True)
    os.close(fd)
    assert (tmp_path / "new").is_file()
    import pickle

    again = pickle.loads(pickle.dumps(exc.value))  # crosses a worker boundary intact
    assert type(again) is RefusedFile and again.reason == "names" and again.filename == str(plain)


def test_inputs_without_any_image_are_one_error_line(runner, tmp_path):
    """An evidence folder with no image in it (or a folder named like an image) gave an empty report, exit 0."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "holder.png").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no pictures here")
    db = tmp_path / "db.h5"
    FingerprintStore(db).add("CAM", synthetic_prnu((64, 64), np.random.default_rng(1)), {"synthetic": True})
    for args, folder in (
        (["extract", str(tmp_path / "empty"), "--out", str(tmp_path / "o1")], "empty"),
        (["match", str(tmp_path / "holder.png"), "--db", str(db)], "holder.png"),
        (["degrade", str(tmp_path / "notes"), "-o", str(tmp_path / "o2"), "-q", "50"], "notes"),
        (["match", str(tmp_path / "empty"), "--db", str(db), "--case", str(tmp_path / "case")], "empty"),
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert any(f"no image files found in {tmp_path / folder}" in line for line in lines), res.output
        assert "Traceback" not in res.output and "score(s)" not in res.output
    res = runner.invoke(app, ["extract", str(tmp_path / "notes"), "--out", str(tmp_path / "o3")])
    assert res.exit_code == 2 and "(1 other file(s) there, not images)" in res.output, res.output
    assert not (tmp_path / "case").exists()  # no case folder (nor its lock) for a run that found nothing
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()  # no output folder made either
