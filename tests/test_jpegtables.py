"""Quantization tables and IJG quality: exact for libjpeg's tables, approximate for cameras'."""

from __future__ import annotations

import cv2
import numpy as np
import piexif
import pytest

from spncli.jpegtables import ZIGZAG, JpegFormatError, estimate_quality, ijg_tables, parse_jpeg


def _jpeg(quality, colour=True, **flags):
    rng = np.random.default_rng(quality)
    img = rng.integers(0, 256, size=(64, 80, 3) if colour else (64, 80), dtype=np.uint8)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    for k, v in flags.items():
        params += [getattr(cv2, k), v]
    ok, buf = cv2.imencode(".jpg", img, params)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("colour", [True, False])
def test_every_opencv_quality_comes_back_exact(colour):
    for q in range(1, 101):
        est = estimate_quality(parse_jpeg(_jpeg(q, colour)))
        assert (est.quality, est.exact, est.fit_error) == (q, True, 0.0), q


def test_progressive_and_444_files_are_parsed():
    data = _jpeg(63, IMWRITE_JPEG_PROGRESSIVE=1, IMWRITE_JPEG_SAMPLING_FACTOR=cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444)
    s = parse_jpeg(data)
    assert s.progressive and s.sof_marker == 0xC2
    assert {(c.h_sampling, c.v_sampling) for c in s.components} == {(1, 1)}
    assert estimate_quality(s).quality == 63 and estimate_quality(s).exact


def test_thumbnail_tables_are_not_the_main_image():
    main = _jpeg(95)
    thumb = _jpeg(20)
    exif = piexif.dump({"0th": {piexif.ImageIFD.Make: b"TestMake"}, "thumbnail": thumb, "1st": {}})
    data = _insert_exif(main, exif)
    app1_end = 4 + int.from_bytes(data[4:6], "big")
    assert data.find(b"\xff\xdb") < app1_end  # the first DQT in the file is the thumbnail's
    est = estimate_quality(parse_jpeg(data))
    assert est.quality == 95 and est.exact


def _insert_exif(jpeg: bytes, exif: bytes) -> bytes:
    segment = b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif
    return jpeg[:2] + segment + jpeg[2:]


def test_sixteen_bit_tables():
    luma, chroma = ijg_tables(5, force_baseline=False)
    assert luma.max() > 255
    dqt = b""
    for tid, t in enumerate((luma, chroma)):
        dqt += bytes([0x10 | tid]) + t.ravel()[ZIGZAG].astype(">u2").tobytes()
    data = _jpeg(50)
    s0 = parse_jpeg(data)
    # replace the file's DQT segments by one 16-bit DQT segment
    out, pos = bytearray(data[:2]), 2
    out += b"\xff\xdb" + (len(dqt) + 2).to_bytes(2, "big") + dqt
    while True:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker != 0xDB:
            out += data[pos : pos + 2 + length]
        if marker == 0xDA:
            out += data[pos + 2 + length :]
            break
        pos += 2 + length
    s = parse_jpeg(bytes(out))
    assert s.precision == {0: 16, 1: 16} and len(s0.components) == 3
    est = estimate_quality(s)
    assert (est.quality, est.exact) == (5, True)


def test_nikon_tables_are_approximate(dresden):
    for path in sorted((dresden / "nat-jpg").glob("Nikon_D70_*.JPG"))[:3]:
        est = estimate_quality(parse_jpeg(path.read_bytes()))
        assert not est.exact and est.fit_error > 0
        assert 20 <= est.quality <= 100
    q27 = estimate_quality(parse_jpeg((dresden / "nat-jpg" / "Nikon_D70_1_20891.JPG").read_bytes()))
    assert 22 <= q27.quality <= 32  # the data README: IJG-equivalent about 27


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "start-of-image"),
        (b"hello world", "start-of-image"),
        (b"\xff\xd8\xff\xdb\x00\x43\x00", "past the end"),
    ],
)
def test_malformed_streams_raise(data, words):
    with pytest.raises(JpegFormatError, match=words):
        parse_jpeg(data)


def test_quality_is_validated():
    with pytest.raises(ValueError, match="1..100"):
        ijg_tables(0)
