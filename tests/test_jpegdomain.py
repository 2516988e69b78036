"""The compression-aware residual: coefficients as libjpeg wrote them, the file's grid, real Dresden matches."""

from __future__ import annotations

import csv
import io
import json

import cv2
import numpy as np
import pytest

from spncli import jpegdomain as jd
from spncli.cli import app
from spncli.degrade import DegradeSettings, encode
from spncli.evidence import EvidenceError, decode, load_image
from spncli.fingerprint import FingerprintAccumulator
from spncli.geometry import centre_crop, crop_offsets
from spncli.identify import Matcher, MatchSettings, residual_with_info
from spncli.pce import FingerprintSpectrum, score
from spncli.residual import ResidualParams, extract_residual, grey_residual
from spncli.store import Fingerprint


def _scene(rng, shape, channels):
    """Smooth random content with edges and noise: every kind of DCT coefficient occurs."""
    img = cv2.GaussianBlur(rng.uniform(0, 255, (*shape, channels)).astype(np.float32), (0, 0), 2.0)
    img = img.reshape(*shape, channels) * 2 - 100 + np.linspace(0, 60, shape[1], dtype=np.float32)[None, :, None]
    img += rng.normal(0, 4, img.shape).astype(np.float32)
    return np.clip(img, 0, 255)


def _jpeg(pixels, quality, subsampling="420"):
    return encode(pixels, DegradeSettings(quality, "jpeg", subsampling))


@pytest.mark.parametrize("shape", [(96, 136), (101, 141)])
def test_coefficients_match_a_known_reencode(shape):
    """Grey image encoded at Q50: jpeglib's coefficients are our DCT of the pixels divided by the table, rounded."""
    rng = np.random.default_rng(7)
    pixels = np.rint(_scene(rng, shape, 1))
    lc = jd.read_luma_coefficients(_jpeg(pixels, 50))
    bh, bw = -(-shape[0] // 8), -(-shape[1] // 8)
    assert lc.coef.shape == (bh, bw, 8, 8) and (lc.rows, lc.cols) == shape
    assert lc.qt[0, 0] == 16 and lc.qt[7, 7] == 99  # IJG luma table at Q50, natural (not zig-zag) order
    padded = np.pad(pixels[:, :, 0] - 128, ((0, 8 * bh - shape[0]), (0, 8 * bw - shape[1])), mode="edge")
    ours = np.rint(jd.block_dct(padded) / lc.qt)
    diff = np.abs(ours - lc.coef)
    assert diff.max() <= 1  # libjpeg's integer DCT rounds differently in rare cases
    assert np.mean(diff == 0) > 0.99
    np.testing.assert_array_equal(jd.survival_weights(lc, "binary"), (lc.coef != 0).astype(np.float32))


def test_colour_420_luma_coefficients_and_weights():
    """A 4:2:0 colour file: the luma plane is on the full-resolution 8x8 grid, padding blocks dropped."""
    rng = np.random.default_rng(8)
    pixels = np.rint(_scene(rng, (100, 140), 3))
    lc = jd.read_luma_coefficients(_jpeg(pixels, 30))
    assert lc.coef.shape == (13, 18, 8, 8)  # the encoder pads to 16x16 MCUs: 7x9 MCUs = 14x18 blocks
    y = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
    padded = np.pad(y - 128, ((0, 4), (0, 4)), mode="edge")
    ours = np.rint(jd.block_dct(padded) / lc.qt)
    assert np.mean(ours == lc.coef) > 0.97
    w1, wq, wq2 = (jd.survival_weights(lc, m) for m in ("binary", "inverse-q", "inverse-q2"))
    kept = lc.coef != 0
    assert not w1[~kept].any() and not wq[~kept].any() and not wq2[~kept].any()
    assert wq.max() == 1.0 and np.all(wq2 <= wq + 1e-7)
    with pytest.raises(ValueError, match="binary, inverse-q"):
        jd.survival_weights(lc, "soft")
    soft = jd.survival_weights(lc, "inverse-q", zeroed=0.25)  # the zeroed coefficients keep a quarter
    np.testing.assert_array_equal(soft[kept], wq[kept])
    assert np.all(soft[~kept] == np.float32(0.25))
    with pytest.raises(ValueError, match="0..1"):
        jd.survival_weights(lc, "binary", zeroed=1.5)
    with pytest.raises(ValueError, match="zeroed_weight"):
        jd.AwareSettings(zeroed_weight=-0.1)


def test_block_dct_is_orthonormal_and_invertible():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 40)).astype(np.float32)
    c = jd.block_dct(x)
    assert c.shape == (8, 5, 8, 8) and c.dtype == np.float32
    np.testing.assert_allclose(jd.block_idct(c), x, atol=1e-5)
    np.testing.assert_allclose(np.square(c).sum(), np.square(x).sum(), rtol=1e-5)  # Parseval
    with pytest.raises(ValueError, match="multiple of 8"):
        jd.block_dct(x[:, :39])


def test_grid_is_the_files_after_a_crop():
    """Crop offsets not multiple of 8: the crop of the full-frame result, filtered on the file's grid."""
    rng = np.random.default_rng(2)
    shape = (250, 330)
    lc = jd.read_luma_coefficients(_jpeg(np.rint(_scene(rng, shape, 3)), 40))
    grey = rng.normal(0, 2, shape).astype(np.float32)
    crop = (100, 150)
    r0, c0 = crop_offsets(shape, crop)
    assert r0 % 8 and c0 % 8 == 2  # 74, 90: not on the grid
    plain = ResidualParams(zero_mean=False)
    never = jd.AwareSettings(weighting="binary", wiener="never")
    full, _ = jd.compression_aware_residual(grey, lc, params=plain, settings=never)
    cropped, info = jd.compression_aware_residual(grey, lc, crop=crop, params=plain, settings=never)
    np.testing.assert_array_equal(cropped, centre_crop(full, crop))
    # the same by hand: the blocks that hold the crop, filtered with their own coefficients
    b0, b1 = r0 // 8, c0 // 8
    sub = grey[8 * b0 : 8 * (b0 + 14), 8 * b1 : 8 * (b1 + 20)]
    c = jd.block_dct(sub) * (lc.coef[b0 : b0 + 14, b1 : b1 + 20] != 0)
    by_hand = jd.block_idct(c)[r0 - 8 * b0 : r0 - 8 * b0 + crop[0], c0 - 8 * b1 : c0 - 8 * b1 + crop[1]]
    np.testing.assert_allclose(cropped, by_hand, atol=1e-5)
    # a grid taken from the crop's own origin would be wrong
    own = jd.block_idct(jd.block_dct(grey[r0 : r0 + 96, c0 : c0 + 144]) * (lc.coef[:12, :18] != 0))
    assert not np.allclose(own, cropped[:96, :144], atol=1e-3)
    assert info["residual_kind"] == "compression-aware" and info["wiener_applied"] is False
    assert 0 < info["surviving_ac_fraction"] < 1


def test_wiener_policy_and_settings_are_checked():
    rng = np.random.default_rng(3)
    shape = (128, 128)
    lc = jd.read_luma_coefficients(_jpeg(np.rint(_scene(rng, shape, 3)), 70))
    grey = rng.normal(0, 2, shape).astype(np.float32)
    _, always = jd.compression_aware_residual(grey, lc, settings=jd.AwareSettings(wiener="always"))
    kept, surviving = always["wiener_kept_energy"], always["surviving_ac_fraction"]
    assert always["wiener_applied"] and 0 < kept <= 1 and 0 < surviving < 1
    for criterion, value in (("kept", kept), ("surviving", surviving)):
        for above, applied in ((value - 1e-3, True), (value + 1e-3, False)):
            settings = jd.AwareSettings(criterion=criterion, wiener_above=above)
            w, info = jd.compression_aware_residual(grey, lc, settings=settings)
            assert info["wiener_applied"] is applied
            never, _ = jd.compression_aware_residual(grey, lc, settings=jd.AwareSettings(wiener="never"))
            assert np.array_equal(w, never) is not applied
    with pytest.raises(ValueError, match="auto, always, never"):
        jd.AwareSettings(wiener="sometimes")
    with pytest.raises(ValueError, match="surviving, kept"):
        jd.AwareSettings(criterion="peaks")
    with pytest.raises(ValueError, match="not a JPEG"):
        jd.read_luma_coefficients(b"\x89PNG\r\n\x1a\n")


def test_non_jpeg_falls_back_to_classic(tmp_path):
    rng = np.random.default_rng(4)
    pixels = np.rint(_scene(rng, (96, 128), 3)).astype(np.uint8)
    png = tmp_path / "probe.png"
    cv2.imwrite(str(png), pixels)
    ev = load_image(png)
    w, info = residual_with_info(ev, ResidualParams(), None, kind="compression-aware")
    assert info["residual_kind"] == "classic" and "PNG" in info["fallback"]
    np.testing.assert_array_equal(w, extract_residual(ev.pixels))
    from PIL import Image

    cmyk = tmp_path / "probe-cmyk.jpg"  # a JPEG without a luma plane
    Image.fromarray(pixels[:, :, ::-1].copy()).convert("CMYK").save(cmyk, quality=80)
    ev = load_image(cmyk)
    w, info = residual_with_info(ev, ResidualParams(), (64, 64), kind="compression-aware")
    assert info["residual_kind"] == "classic" and "CMYK" in info["fallback"] and w.shape == (64, 64)
    with pytest.raises(ValueError, match="classic, compression-aware"):
        residual_with_info(ev, ResidualParams(), None, kind="aware")


def test_changed_file_is_refused(tmp_path):
    rng = np.random.default_rng(5)
    f = tmp_path / "probe.jpg"
    f.write_bytes(_jpeg(np.rint(_scene(rng, (96, 128), 3)), 80))
    ev = load_image(f)
    f.write_bytes(_jpeg(np.rint(_scene(rng, (96, 128), 3)), 80))
    with pytest.raises(EvidenceError, match="changed since it was read"):
        residual_with_info(ev, ResidualParams(), None, kind="compression-aware")


# ---------------------------------------------------------------- real Dresden data

PROBE = "Nikon_D70s_0_21853.JPG"  # a Dresden natural of unit Nikon_D70s_0 (selection split)


@pytest.fixture(scope="module")
def dresden_fps(dresden):
    """Full-frame fingerprints of the two D70s units (same model: the hardest non-match), 4 flat-fields each."""
    out = {}
    for unit in ("Nikon_D70s_0", "Nikon_D70s_1"):
        acc = FingerprintAccumulator()
        for p in sorted((dresden / "ff-jpg").glob(f"{unit}_*.JPG"))[:4]:
            acc.add(load_image(p).pixels)
        out[unit] = Fingerprint(unit, acc.finalize(), "0" * 64, {})
    return out


@pytest.fixture(scope="module")
def q30_probe(dresden):
    """The natural re-compressed at Q30, 4:2:0, in memory, as `spn degrade` does."""
    return _jpeg(load_image(dresden / "nat-jpg" / PROBE).pixels, 30)


def test_compression_aware_beats_classic_on_a_q30_natural(dresden_fps, q30_probe):
    """Full frame, Q30: the matching PCE rises past the threshold; the other unit of the model stays far under 60."""
    ev = decode(q30_probe, f"{PROBE}.q30.420.jpg")
    classic, info_c = residual_with_info(ev, ResidualParams(), None)
    aware, info_a = residual_with_info(ev, ResidualParams(), None, kind="compression-aware", data=q30_probe)
    assert info_c["residual_kind"] == "classic" and info_a["residual_kind"] == "compression-aware"
    own = FingerprintSpectrum(dresden_fps["Nikon_D70s_0"].k)
    pce_classic, pce_aware = score(classic, own).pce, score(aware, own).pce
    assert pce_aware > 1.3 * pce_classic and pce_aware > 60, (pce_aware, pce_classic)
    assert abs(score(aware, FingerprintSpectrum(dresden_fps["Nikon_D70s_1"].k)).pce) < 20


def test_matcher_records_the_residual_kind(dresden_fps, q30_probe, tmp_path):
    """The library matcher on a real file: every record says which residual it scored."""
    path = tmp_path / f"{PROBE}.q30.jpg"  # a re-compressed copy (the evidence stays untouched)
    path.write_bytes(q30_probe)
    matcher = Matcher(dresden_fps.values(), MatchSettings(residual="compression-aware"))
    records = {r["camera"]: r for r in matcher.match(load_image(path))}
    assert {r["residual_kind"] for r in records.values()} == {"compression-aware"}
    assert all(isinstance(r["wiener_applied"], bool) for r in records.values())
    assert records["Nikon_D70s_0"]["decision"] == "consistent" and records["Nikon_D70s_1"]["pce"] < 20
    assert matcher.settings.as_dict()["aware_settings"] == jd.AwareSettings().as_dict()


def test_cli_extract_and_match_say_which_residual(runner, synth_case, tmp_path):
    evidence = synth_case["root"]
    db = tmp_path / "cams.h5"
    for cam, folder in synth_case["flats"].items():
        assert runner.invoke(app, ["fingerprint", str(folder), "-c", cam, "--db", str(db)]).exit_code == 0
    png = tmp_path / "in" / "CAM-A_probe.png"
    png.parent.mkdir()
    cv2.imwrite(str(png), cv2.imread(str(synth_case["probes"]["CAM-A"][0])))
    out = tmp_path / "res"
    args = ["extract", str(evidence / "probes"), str(png), "-o", str(out), "--residual", "compression-aware"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    kinds = {json.loads(p.read_text())["residual_kind"] for p in out.glob("*.json")}
    assert kinds == {"compression-aware", "classic"} and len(list(out.glob("*.ca-residual.npy"))) == 4
    res = runner.invoke(
        app, ["match", str(evidence / "probes"), "--db", str(db), "-f", "json", "--residual", "compression-aware"]
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 8 and {r["residual_kind"] for r in rows} == {"compression-aware"}
    for r in rows:  # synthetic Q92 probes: the aware residual still identifies
        own = r["image"].split("/")[-1].startswith(r["camera"])
        assert (r["pce"] > 60) == own
    res = runner.invoke(app, ["match", str(png), "--db", str(db), "--residual", "wavelet"])
    assert res.exit_code != 0 and "classic, compression-aware" in res.output


# ---------------------------------------------------------------- saved residuals matched later


def test_saved_residuals_match_like_their_images_and_bad_ones_are_one_line(runner, synth_case, tmp_path):
    """spn extract's .npy with its provenance scores as the image does; without valid provenance: one error line."""
    db = tmp_path / "cams.h5"
    for cam, folder in synth_case["flats"].items():
        assert runner.invoke(app, ["fingerprint", str(folder), "-c", cam, "--db", str(db)]).exit_code == 0
    probe = synth_case["probes"]["CAM-A"][0]
    out = tmp_path / "res"
    for kind in ("classic", "compression-aware"):
        res = runner.invoke(app, ["extract", str(probe), "-o", str(out), "--residual", kind, "--crop", "192x256"])
        assert res.exit_code == 0, res.output
    saved = sorted(out.glob("*.npy"))
    assert len(saved) == 2
    direct = {}
    for kind in ("classic", "compression-aware"):
        args = ["match", str(probe), "--db", str(db), "-f", "json", "--crop", "192x256", "--residual", kind]
        res = runner.invoke(app, args)
        direct[kind] = {r["camera"]: r["pce"] for r in map(json.loads, res.stdout.splitlines())}
    res = runner.invoke(app, ["match", *map(str, saved), "--db", str(db), "-f", "json", "--crop", "192x256"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 4
    source = json.loads(saved[0].with_suffix(".json").read_text())["input"]["sha256"]
    for r in rows:
        assert r["sha256"] == source and r["residual_file"].endswith(".npy") and len(r["residual_file_sha256"]) == 64
        assert r["pce"] == pytest.approx(direct[r["residual_kind"]][r["camera"]], rel=1e-6, abs=1e-3)
        assert (r["pce"] > 60) == (r["camera"] == "CAM-A")
    csv_rows = list(csv.DictReader(io.StringIO(runner.invoke(app, ["match", *map(str, saved), "--db", str(db), "-f",
                                                                   "csv", "--crop", "192x256"]).stdout)))
    assert {r["residual_file"] for r in csv_rows} == set(map(str, saved))  # a CSV row names the file it scored
    assert all(len(r["residual_file_sha256"]) == 64 and len(r["residual_provenance_sha256"]) == 64 for r in csv_rows)
    # a crop that disagrees, a changed array, no provenance, a provenance without the source's hash
    bad = tmp_path / "bad"
    bad.mkdir()
    changed, orphan, nohash = (bad / f"{n}.npy" for n in ("changed", "orphan", "nohash"))
    for f in (changed, orphan, nohash):
        f.write_bytes(saved[0].read_bytes())
    prov = json.loads(saved[0].with_suffix(".json").read_text())
    changed.with_suffix(".json").write_text(json.dumps(prov | {"files": {"array": "changed.npy"}}))
    changed.write_bytes(saved[0].read_bytes()[:-4] + b"\0\0\0\0")
    nohash.with_suffix(".json").write_text(json.dumps(prov | {"input": {}, "files": {"array": "nohash.npy"}}))
    args = ["match", str(saved[0]), str(changed), str(orphan), str(nohash), "--db", str(db), "-f", "csv"]
    res = runner.invoke(app, args)
    assert res.exit_code == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 4, res.stderr
    assert "centre crop of 192x256" in errors[0] and "--crop 192x256" in errors[0]
    assert "changed.npy" in errors[1] and "array_sha256 differs" in errors[1]
    assert "orphan.npy" in errors[2] and "no valid provenance orphan.json" in errors[2]
    assert "nohash.npy" in errors[3] and "SHA-256 of the source" in errors[3]


def test_out_is_refused_inside_any_evidence_folder_on_the_command_line(runner, synth_case, tmp_path):
    """extract, restore and degrade: an --out inside the second evidence folder (or a file's folder) is refused."""
    first = synth_case["probes"]["CAM-A"][0]
    other = synth_case["flats"]["CAM-B"]
    for cmd in ("extract", "restore", "degrade"):
        for inside in (other / "sub", first.parent / "x"):
            res = runner.invoke(app, [cmd, str(first), str(other), "--out", str(inside)])
            assert res.exit_code == 2 and "inside the evidence" in res.output, (cmd, res.output)
            assert not inside.exists()
