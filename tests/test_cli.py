"""The real `spn` CLI: help texts, outputs with provenance, bad input, read-only evidence."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import piexif
import pytest

from spncli.cli import app
from spncli.evidence import EvidenceError, load_image
from spncli.synthetic import encode_jpeg


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def _snapshot(folder: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.rglob("*"))}


def test_every_command_has_help(runner):
    commands = ["quality", "extract", "fingerprint", "match", "demo", "db", "db list", "db show", "db remove"]
    top = _ok(runner.invoke(app, ["--help"])).output
    for cmd in commands:
        out = _ok(runner.invoke(app, [*cmd.split(), "--help"])).output
        assert "Usage" in out and len(out) > 200, cmd
        if " " not in cmd:
            assert cmd in top
    assert _ok(runner.invoke(app, ["--version"])).output.startswith("spn ")


def test_quality_json(runner, tmp_path):
    p = tmp_path / "q.jpg"
    p.write_bytes(encode_jpeg(np.zeros((64, 64, 3), np.uint8) + 100, 77))
    rows = [json.loads(line) for line in _ok(runner.invoke(app, ["quality", str(p), "-f", "json"])).stdout.splitlines()]
    assert rows[0]["quality"] == 77 and rows[0]["exact"] is True and len(rows[0]["sha256"]) == 64


def test_fingerprint_match_extract_end_to_end(runner, synth_case, tmp_path):
    evidence = synth_case["root"]
    before = _snapshot(evidence)
    db = tmp_path / "cams.h5"
    for cam, folder in synth_case["flats"].items():
        _ok(runner.invoke(app, ["fingerprint", str(folder), "--camera", cam, "--db", str(db)]))
    listed = [
        json.loads(x)
        for x in _ok(runner.invoke(app, ["db", "list", "--db", str(db), "-f", "json"])).stdout.splitlines()
    ]
    assert [r["camera"] for r in listed] == ["CAM-A", "CAM-B"] and listed[0]["image_count"] == 6
    shown = json.loads(_ok(runner.invoke(app, ["db", "show", "--db", str(db), "CAM-A"])).stdout)
    assert shown["checksum_verified"] and len(shown["sources"]) == 6
    assert all(len(s["sha256"]) == 64 for s in shown["sources"]) and shown["tool_version"]
    assert shown["residual_params"]["sigma"] == 5.0 and shown["quality"]["quality_median"] == 92

    res = _ok(runner.invoke(app, ["match", str(evidence / "probes"), "--db", str(db), "-f", "json"]))
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 8
    for r in rows:
        assert {"image", "sha256", "camera", "pce", "ncc", "decision"} <= set(r)
        own = Path(r["image"]).name.startswith(r["camera"])
        assert (r["decision"] == "consistent") == own and (r["pce"] > 60) == own
    res = _ok(runner.invoke(app, ["match", str(evidence / "probes"), "--db", str(db), "-f", "csv", "--crop", "128"]))
    table = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(table) == 8 and {t["crop"] for t in table} == {"128x128"}
    res = _ok(runner.invoke(app, ["match", str(evidence / "probes"), "--db", str(db)]))
    assert "consistent with CAM-A" in res.stdout and "not consistent with CAM-B" in res.stdout

    out = tmp_path / "residuals"
    _ok(runner.invoke(app, ["extract", str(evidence / "probes"), "--out", str(out), "--preview", "--crop", "128x192"]))
    metas = sorted(out.glob("*.json"))
    assert len(metas) == 4
    meta = json.loads(metas[0].read_text())
    w = np.load(out / meta["files"]["array"], allow_pickle=False)
    assert w.shape == (128, 192) and w.dtype == np.float32 and meta["shape"] == [128, 192]
    assert meta["input"]["sha256"] == load_image(meta["input"]["path"]).sha256
    assert cv2.imread(str(out / meta["files"]["preview"]), cv2.IMREAD_UNCHANGED).shape == (128, 192)
    par = tmp_path / "parallel"
    _ok(
        runner.invoke(
            app, ["extract", str(evidence / "probes"), "--out", str(par), "--crop", "128x192", "--workers", "2"]
        )
    )
    for npy in out.glob("*.npy"):  # worker processes write the same residuals
        np.testing.assert_array_equal(np.load(npy), np.load(par / npy.name))
    assert _snapshot(evidence) == before  # evidence untouched: same files, sizes, mtimes


def _png_header_only(cols, rows):
    ihdr = struct.pack(">IIBBBBB", cols, rows, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")
    )


@pytest.fixture
def bad_folder(tmp_path, synth_case):
    d = tmp_path / "seized"
    d.mkdir()
    good = synth_case["probes"]["CAM-A"][0].read_bytes()
    (d / "a_good.jpg").write_bytes(good)
    (d / "empty.jpg").write_bytes(b"")
    (d / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (d / "text.jpg").write_text("this is not a picture\n")
    ok, one = cv2.imencode(".png", np.zeros((1, 1), np.uint8))
    (d / "tiny.png").write_bytes(one.tobytes())
    (d / "bomb.png").write_bytes(_png_header_only(50_000, 50_000))
    (d / "z_good.jpg").write_bytes(good)
    return d


EXPECTED_REASONS = {
    "empty.jpg": "empty file",
    "truncated.jpg": "truncated",
    "text.jpg": "not an image",
    "tiny.png": "too small",
    "bomb.png": "exceeds the bound",
}


@pytest.mark.parametrize("command", ["extract", "match"])
def test_bad_inputs_one_line_each_batch_continues(runner, bad_folder, tmp_path, synth_case, command):
    db = tmp_path / "db.h5"
    _ok(runner.invoke(app, ["fingerprint", str(synth_case["flats"]["CAM-A"]), "-c", "CAM-A", "--db", str(db)]))
    args = {
        "extract": ["extract", str(bad_folder), "--out", str(tmp_path / "o")],
        "match": ["match", str(bad_folder), "--db", str(db), "-f", "json"],
    }[command]
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == len(EXPECTED_REASONS), res.stderr
    for name, words in EXPECTED_REASONS.items():
        assert any(name in line and words in line for line in lines), (name, lines)
    if command == "match":
        assert {Path(json.loads(x)["image"]).name for x in res.stdout.splitlines()} == {"a_good.jpg", "z_good.jpg"}
    else:
        assert len(list((tmp_path / "o").glob("*.npy"))) == 2


def unprivileged(cmd: list[str]) -> list[str]:
    """Run ``cmd`` so that file permissions apply: as root, drop the capabilities that bypass them."""
    if os.geteuid() != 0:
        return cmd
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    return [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", *cmd]


def test_unreadable_files(tmp_path, synth_case):
    d = tmp_path / "ev"
    d.mkdir()
    locked = d / "locked.jpg"
    locked.write_bytes(synth_case["probes"]["CAM-A"][0].read_bytes())
    locked.chmod(0)
    (d / "dangling.jpg").symlink_to(d / "gone.jpg")
    good = d / "good.jpg"
    good.write_bytes(synth_case["probes"]["CAM-A"][0].read_bytes())
    cmd = [
        sys.executable,
        "-m",
        "spncli",
        "extract",
        str(locked),
        str(d / "dangling.jpg"),
        str(good),
        "--out",
        str(tmp_path / "out"),
    ]
    res = subprocess.run(unprivileged(cmd), capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    assert "locked.jpg: cannot read: permission denied" in res.stderr
    assert "dangling.jpg: no such file" in res.stderr
    assert "Traceback" not in res.stderr and len(list((tmp_path / "out").glob("*.npy"))) == 1


def test_output_inside_evidence_is_refused(runner, synth_case):
    folder = synth_case["flats"]["CAM-A"]
    before = _snapshot(folder)
    res = runner.invoke(app, ["extract", str(folder), "--out", str(folder / "out")])
    assert res.exit_code == 2 and "inside the evidence" in res.stderr
    res = runner.invoke(app, ["fingerprint", str(folder), "-c", "X", "--db", str(folder / "db.h5")])
    assert res.exit_code == 2 and "inside the evidence" in res.stderr
    assert _snapshot(folder) == before
    above = folder.parent  # the folder holding the evidence folder: its outputs would lie in the evidence tree
    listed = sorted(p.name for p in above.iterdir())
    for command in ("extract", "restore", "degrade"):
        res = runner.invoke(app, [command, str(next(folder.iterdir())), "--out", str(above)])
        assert res.exit_code == 2 and "evidence inside the output folder" in res.stderr, (command, res.output)
    assert sorted(p.name for p in above.iterdir()) == listed and _snapshot(folder) == before


def test_exif_rotation_is_not_applied(tmp_path):
    img = np.zeros((80, 120, 3), np.uint8)
    img[:10, :10] = 255
    data = encode_jpeg(img, 95)
    exif = piexif.dump(
        {
            "0th": {piexif.ImageIFD.Orientation: 6, piexif.ImageIFD.Make: b"Maker", piexif.ImageIFD.Model: b"Model X"},
            "Exif": {piexif.ExifIFD.BodySerialNumber: b"SN123"},
        }
    )
    p = tmp_path / "rotated.jpg"
    p.write_bytes(_with_exif(data, exif))
    ev = load_image(p)
    assert ev.shape == (80, 120)  # sensor orientation, not rotated to 120x80
    assert ev.pixels[:10, :10].mean() > 200
    assert ev.exif == {"make": "Maker", "model": "Model X", "serial": "SN123", "orientation": 6}


def _with_exif(jpeg: bytes, exif: bytes) -> bytes:
    return jpeg[:2] + b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif + jpeg[2:]


def test_sixteen_bit_and_grey_and_alpha(tmp_path):
    rng = np.random.default_rng(0)
    tif = tmp_path / "x16.tif"
    cv2.imwrite(str(tif), rng.integers(0, 65536, (70, 90, 3), dtype=np.uint16))
    ev = load_image(tif)
    assert ev.bit_depth == 16 and ev.format == "tiff" and ev.pixels.max() <= 255.0 and ev.pixels.shape == (70, 90, 3)
    png = tmp_path / "rgba.png"
    cv2.imwrite(str(png), rng.integers(0, 256, (70, 90, 4), dtype=np.uint8))
    assert load_image(png).pixels.shape == (70, 90, 3)
    grey = tmp_path / "g.png"
    cv2.imwrite(str(grey), rng.integers(0, 256, (70, 90), dtype=np.uint8))
    assert load_image(grey).pixels.shape == (70, 90, 1)


@pytest.mark.parametrize("channels, dtype", [(3, np.uint8), (4, np.uint8), (3, np.uint16), (4, np.uint16)])
def test_decoded_pixels_are_the_files_samples_in_rgb_order(tmp_path, channels, dtype):
    """OpenCV decodes BGR(A): the evidence holds R, G, B exactly (alpha dropped), contiguous float32."""
    rng = np.random.default_rng(channels)
    top = 256 if dtype == np.uint8 else 65536
    bgr = rng.integers(0, top, (67, 93, channels), dtype=dtype)
    path = tmp_path / f"x{channels}{np.dtype(dtype).itemsize}.png"
    cv2.imwrite(str(path), bgr)
    pixels = load_image(path).pixels
    expected = np.ascontiguousarray(bgr[:, :, 2::-1], dtype=np.float32)  # the cast the decoder made before
    if dtype == np.uint16:
        expected *= 255.0 / 65535.0
    assert pixels.dtype == np.float32 and pixels.flags.c_contiguous and pixels.shape == (67, 93, 3)
    np.testing.assert_array_equal(pixels, expected)  # bit for bit


@pytest.mark.parametrize("dtype", [np.float64, np.int16, np.int32, np.float32])
def test_unsupported_sample_types_are_one_line(tmp_path, dtype):
    path = tmp_path / f"x-{np.dtype(dtype).name}.tif"
    assert cv2.imwrite(str(path), np.ones((70, 90, 3), dtype=dtype))
    with pytest.raises(EvidenceError) as info:
        load_image(path)
    assert str(info.value) == f"{path}: unsupported sample type {np.dtype(dtype).name} (allowed: 8- or 16-bit integer)"


def test_demo_runs(runner, tmp_path):
    res = _ok(
        runner.invoke(
            app,
            [
                "demo",
                "--out",
                str(tmp_path / "d"),
                "--cameras",
                "2",
                "--flats",
                "6",
                "--probes",
                "1",
                "--size",
                "320x480",
                "-f",
                "json",
            ],
        )
    )
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(rows) == 4
    for r in rows:
        assert (r["decision"] == "consistent") == Path(r["image"]).name.startswith(r["camera"])


def test_quality_of_an_empty_or_cut_jpeg_says_so(runner, dresden, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    data = (dresden / "nat-jpg" / "Nikon_D70_0_19445.JPG").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    res = runner.invoke(app, ["quality", str(tmp_path / "empty.jpg"), str(tmp_path / "cut.jpg"), "-f", "csv"])
    assert res.exit_code == 1
    assert f"error: {tmp_path / 'empty.jpg'}: empty file (0 bytes)" in res.stderr
    assert f"{tmp_path / 'cut.jpg'}: no end-of-image marker" in res.stderr and "cut.jpg" in res.stdout
