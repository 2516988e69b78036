"""HEIC/HEIF (issue 10, deliver 5): decoded like every other format, pixels in sensor orientation, EXIF read.

The HEIC files are written by the tests with pillow-heif from a Dresden natural image (Nikon D70s, unit 1),
so the camera is known: the HEIC must match that camera's flat-field fingerprint as the JPEG does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spncli.cli import app
from spncli.evidence import EvidenceError, decode, load_image
from spncli.geometry import crop_offsets

pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif is not installed: HEIC cannot be decoded")
Image = pytest.importorskip("PIL.Image", reason="Pillow (needed by pillow-heif) is not installed")

CAMERA = "Nikon_D70s_1"
CROP = 1024


def _heic(picture, out: Path, exif, orientation: int | None = None) -> Path:
    """Encode a Pillow picture as HEIC at quality 95 with the source's EXIF (and an orientation, if given)."""
    pillow_heif.register_heif_opener()
    exif = Image.Exif() if exif is None else exif
    if orientation is not None:
        exif[0x0112] = orientation  # pillow-heif turns it into an irot/imir display transform
    picture.save(out, format="HEIF", quality=95, exif=exif.tobytes())
    return out


def _centre(jpeg: Path, size: tuple[int, int]):
    """The source JPEG's centre crop placed as ``--crop`` places it (HEVC encoding of a full frame is slow)."""
    with Image.open(jpeg) as im:
        exif = im.getexif()
        r, c = crop_offsets((im.height, im.width), size)
        return im.convert("RGB").crop((c, r, c + size[1], r + size[0])), exif


@pytest.fixture(scope="module")
def unit(dresden, tmp_path_factory):
    """A fingerprint of the D70s unit 1 from its 10 flat-fields (centre 1024x1024), and one natural JPEG."""
    root = tmp_path_factory.mktemp("heic")
    db = root / "db.h5"
    flats = sorted(str(p) for p in (dresden / "ff-jpg").glob(f"{CAMERA}_*.JPG"))
    res = CliRunner().invoke(app, ["fingerprint", *flats, "-c", CAMERA, "--db", str(db), "--crop", str(CROP)])
    assert res.exit_code == 0, res.output
    jpeg = sorted((dresden / "nat-jpg").glob(f"{CAMERA}_*.JPG"))[0]
    small, exif = _centre(jpeg, (384, 512))
    plain = _heic(small, root / "plain.heic", exif)
    return {"db": db, "jpeg": jpeg, "root": root, "small": small, "exif": exif, "plain": plain}


def _pce(db: Path, image: Path) -> dict:
    res = CliRunner().invoke(app, ["match", str(image), "--db", str(db), "--crop", str(CROP), "-f", "json"])
    assert res.exit_code == 0, res.output
    (row,) = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    return row


def test_heic_matches_its_camera_like_the_jpeg(unit):
    centre, exif = _centre(unit["jpeg"], (CROP, CROP))
    heic = _heic(centre, unit["root"] / "natural.heic", exif)
    ev = load_image(heic)
    assert ev.format == "heic" and ev.provenance()["jpeg_quality"] is None and ev.shape == (CROP, CROP)
    assert ev.exif.get("make", "").upper().startswith("NIKON") and "D70s" in ev.exif.get("model", "")
    jpeg_row, heic_row = _pce(unit["db"], unit["jpeg"]), _pce(unit["db"], heic)
    assert heic_row["sha256"] == ev.sha256 and heic_row["jpeg_quality"] is None
    assert heic_row["pce"] > 60 and heic_row["decision"] == "consistent", heic_row
    # HEVC at quality 95 of the JPEG's pixels keeps most of the sensor noise the JPEG carries
    assert heic_row["pce"] > 0.3 * jpeg_row["pce"], (heic_row["pce"], jpeg_row["pce"])


@pytest.mark.parametrize("orientation", [6, 8, 3, 5])
def test_heic_orientation_recorded_not_applied(unit, orientation):
    """An EXIF orientation becomes irot/imir in the container; libheif applies it, spn undoes it."""
    plain = load_image(unit["plain"])
    turned = load_image(_heic(unit["small"], unit["root"] / f"turned-{orientation}.heic", unit["exif"], orientation))
    assert turned.shape == plain.shape == (384, 512)
    assert turned.exif["orientation"] == orientation and turned.exif["heif_transforms"]
    # the same sensor grid: the coded picture is the same, so the pixels agree within codec error
    source = np.asarray(unit["small"], np.float32)
    assert np.abs(turned.pixels - source).mean() < 1.0 and np.abs(turned.pixels - plain.pixels).mean() < 1.0
    if orientation == 3:  # the displayed picture is far from it, so the check has teeth
        assert np.abs(np.rot90(source, 2) - turned.pixels).mean() > 10


def test_heic_header_bounds_and_broken_files(unit):
    data = unit["plain"].read_bytes()
    with pytest.raises(EvidenceError, match="exceeds the bound of 100,000"):
        decode(data, "plain.heic", max_pixels=100_000)  # from the header, before decoding: 512x384
    with pytest.raises(EvidenceError, match="HEIC") as half:
        decode(data[: len(data) // 2], "half.heic")
    assert "\n" not in half.value.reason  # libheif ends some messages with a newline: the error stays one line
    avif = b"\x00\x00\x00\x18ftypavif\x00\x00\x00\x00mif1avif" + bytes(64)
    with pytest.raises(EvidenceError, match="format not supported: AVIF"):
        decode(avif, "x.avif")
    assert load_image(unit["plain"]).sha256 == hashlib.sha256(data).hexdigest()  # over the exact bytes decoded
