"""Residual, fingerprint and PCE: properties on synthetic cameras with a known PRNU."""

from __future__ import annotations

import numpy as np
import pytest

from spncli.evidence import load_image
from spncli.fingerprint import FingerprintAccumulator
from spncli.geometry import centre_crop, crop_offsets, parse_crop
from spncli.pce import FingerprintSpectrum, false_alarm_probability, pce_at, score
from spncli.residual import ResidualParams, extract_residual, rgb_to_grey, wiener_dft, zero_mean_cfa
from spncli.synthetic import dead_leaves, expose, synthetic_prnu


def _corr(a, b):
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


@pytest.fixture(scope="module")
def scene_and_k():
    rng = np.random.default_rng(7)
    shape = (192, 256)
    scene = dead_leaves(shape, rng)
    return scene, synthetic_prnu(shape, rng, std=0.02), rng


def test_residual_shape_dtype_and_odd_sizes():
    rng = np.random.default_rng(1)
    for shape in [(64, 64, 3), (97, 131, 3), (80, 100, 1)]:
        w = extract_residual(rng.uniform(0, 255, shape).astype(np.float32))
        assert w.shape == shape[:2] and w.dtype == np.float32 and np.isfinite(w).all()


def test_residual_carries_the_prnu(scene_and_k):
    scene, k, rng = scene_and_k
    img = expose(scene, k, rng).astype(np.float32)
    clean = expose(scene, np.zeros_like(k), rng).astype(np.float32)
    grey = rgb_to_grey(img)
    with_k = _corr(extract_residual(img), grey * k)
    without = _corr(extract_residual(clean), grey * k)
    assert with_k > 0.05 and abs(without) < 0.02 and with_k > 5 * abs(without)


def test_zero_mean_cfa_removes_lattice_means():
    x = np.random.default_rng(2).normal(3.0, 1.0, (40, 60)).astype(np.float32)
    x[::2, ::2] += 5  # a CFA-periodic pattern
    z = zero_mean_cfa(x)
    for r in (0, 1):
        for c in (0, 1):
            sub = z[r::2, c::2]
            assert np.abs(sub.mean(axis=0)).max() < 1e-4 and np.abs(sub.mean(axis=1)).max() < 1e-4


def test_wiener_dft_suppresses_a_periodic_peak_and_odd_sizes_agree():
    rng = np.random.default_rng(3)
    for shape in [(128, 192), (127, 191)]:
        noise = rng.standard_normal(shape).astype(np.float32)
        grid = np.zeros(shape, np.float32)
        grid[::8, :] = 3.0  # a JPEG-like block-row pattern
        out = wiener_dft(noise + grid, float((noise + grid).std()))
        assert out.shape == shape
        assert abs(_corr(out, grid)) < 0.5 * abs(_corr(noise + grid, grid))
        assert _corr(out, noise) > 0.8


def test_params_are_validated():
    with pytest.raises(ValueError, match="sigma"):
        ResidualParams(sigma=0)
    with pytest.raises(ValueError, match="wavelet"):
        ResidualParams(wavelet="nope")
    with pytest.raises(ValueError, match="odd"):
        ResidualParams(windows=(4,))


def test_fingerprint_estimates_k_and_excludes_saturation():
    rng = np.random.default_rng(4)
    shape = (128, 160)
    k = synthetic_prnu(shape, rng, std=0.02)
    acc = FingerprintAccumulator()
    for _ in range(6):
        flat = np.full(shape + (3,), rng.uniform(120, 190), np.float32)
        flat[:20, :20] = 400  # clipped to 255 by expose: carries no PRNU
        acc.add(expose(flat, k, rng).astype(np.float32))
    est = acc.finalize()
    assert est.shape == shape and acc.count == 6
    assert _corr(est[20:, 20:], k[20:, 20:]) > 0.5
    assert np.abs(est[2:18, 2:18]).mean() < 0.2 * np.abs(est[40:, 40:]).mean()
    with pytest.raises(ValueError, match="differs"):
        acc.add(np.zeros((10, 10, 3), np.float32))


def test_pce_separates_cameras_and_searches_shifts(synth_case):
    fps = {}
    for cam, folder in synth_case["flats"].items():
        acc = FingerprintAccumulator()
        for p in sorted(folder.glob("*.jpg")):
            acc.add(load_image(p).pixels)
        fps[cam] = FingerprintSpectrum(acc.finalize())
    for cam, probes in synth_case["probes"].items():
        for p in probes:
            w = extract_residual(load_image(p).pixels)
            for other, spec in fps.items():
                s = score(w, spec)
                assert s.peak == (0, 0) and s.n_shifts == 1 and s.rotation == 0
                assert s.ncc == pytest.approx(_corr(w, spec.k), abs=1e-4)
                assert (s.pce > 60) == (other == cam), (p.name, other, s.pce)
    # a crop at an unknown offset: found by the shift search
    cam = "CAM-A"
    w = extract_residual(load_image(synth_case["probes"][cam][0]).pixels)
    crop = np.ascontiguousarray(w[40:168, 50:300])
    expected = crop_offsets(w.shape, crop.shape)
    s0 = score(crop, fps[cam])
    found = score(crop, fps[cam], max_shift=40)
    assert found.peak == (40, 50) and found.shift == (40 - expected[0], 50 - expected[1])
    assert found.pce > 60 > s0.pce
    assert found.n_shifts > 1 and found.p_fa < 1e-6
    # a portrait residual against a landscape fingerprint: rotated back
    rotated = np.ascontiguousarray(np.rot90(w, -1))
    r = score(rotated, fps[cam])
    assert r.rotation == 90 and r.pce > 60 and r.n_shifts == 2
    assert score(rotated, fps[cam], rotations=False).pce < 60


def test_pce_definition_on_a_known_surface():
    cc = np.random.default_rng(5).standard_normal((64, 64)).astype(np.float32)
    cc[0, 0] = -20.0
    value = pce_at(cc, (0, 0))
    mask = np.ones_like(cc, bool)
    mask[np.ix_(np.r_[59:64, 0:6], np.r_[59:64, 0:6])] = False
    assert value == pytest.approx(-400.0 / float(np.mean(cc[mask].astype(np.float64) ** 2)), rel=1e-6)


def test_false_alarm_probability_is_monotone():
    assert false_alarm_probability(0.0) == 1.0
    p60, p100 = false_alarm_probability(60), false_alarm_probability(100)
    assert 0 < p100 < p60 < 1e-14
    assert false_alarm_probability(60, 10_000) == pytest.approx(10_000 * p60, rel=1e-3)


def test_crop_parsing_and_even_offsets():
    assert parse_crop("512") == (512, 512) and parse_crop("2000x3008") == (2000, 3008) and parse_crop(None) is None
    with pytest.raises(ValueError, match="HxW"):
        parse_crop("big")
    assert crop_offsets((2592, 3872), (2000, 3008)) == (296, 432)
    assert all(o % 2 == 0 for o in crop_offsets((101, 99), (50, 50)))
    with pytest.raises(ValueError, match="larger"):
        centre_crop(np.zeros((10, 10)), (20, 20))


def test_concurrent_channels_give_the_same_residual_bit_for_bit(dresden):
    """Channels denoised on threads are summed in channel order: the residual is identical, and the setting
    (process-wide, like OpenCV's thread count) and OpenCV's own thread count are restored."""
    import cv2

    from spncli import residual

    image = load_image(dresden / "nat-jpg" / "Nikon_D70_0_19445.JPG")
    pixels = np.ascontiguousarray(centre_crop(image.pixels, (512, 768)))
    one = residual.grey_residual(pixels)
    opencv_threads = cv2.getNumThreads()
    previous = residual.set_channel_threads(3)
    try:
        three = residual.grey_residual(pixels)
        assert residual.set_channel_threads(2) == 3
        two = residual.grey_residual(pixels)
    finally:
        residual.set_channel_threads(previous)
    assert cv2.getNumThreads() == opencv_threads
    assert np.array_equal(one, three) and np.array_equal(one, two)
    assert np.abs(one).max() > 0  # a real residual, not an empty plane
    with pytest.raises(ValueError, match=">= 1"):
        residual.set_channel_threads(0)


def test_large_images_in_bands_give_the_whole_image_residual_bit_for_bit(dresden, monkeypatch):
    """Above CONCURRENT_MAX_PIXELS the residual is computed in bands of rows with a margin of the
    denoiser's whole reach: bit-identical to the whole image, whatever the thread count, grey images too;
    a margin shorter than that reach changes the rows near each cut (so the comparison can fail)."""
    from spncli import residual, wavelet

    image = load_image(dresden / "nat-jpg" / "Nikon_D70_0_19445.JPG")
    pixels = np.ascontiguousarray(centre_crop(image.pixels, (1008, 640)))
    monkeypatch.setattr(wavelet, "_BLOCK", 1 << 16)  # strips active in both directions, as at 48 MP
    monkeypatch.setattr(wavelet, "_COLUMNS", 96)
    whole = residual.grey_residual(pixels)
    grey_whole = residual.grey_residual(pixels[:, :, 1:2])
    assert residual.band_margin(residual.ResidualParams()) == 176
    monkeypatch.setattr(residual, "CONCURRENT_MAX_PIXELS", 0)
    monkeypatch.setattr(residual, "BAND_SAMPLES", 160 * 640)  # bands of 352 rows (twice the margin): two cuts
    previous = residual.set_channel_threads(2)
    try:
        two = residual.grey_residual(pixels)
        grey_bands = residual.grey_residual(pixels[:, :, 1:2])
        residual.set_channel_threads(3)
        three = residual.grey_residual(pixels)
        monkeypatch.setattr(residual, "band_margin", lambda params: 32)
        short = residual.grey_residual(pixels)
        residual.set_channel_threads(1)  # one thread: the whole image, a channel at a time
        one = residual.grey_residual(pixels)
    finally:
        residual.set_channel_threads(previous)
    assert np.array_equal(whole, two) and np.array_equal(whole, three) and np.array_equal(whole, one)
    assert np.array_equal(grey_whole, grey_bands)
    assert not np.array_equal(whole, short)
    assert np.abs(whole).max() > 0


def test_tall_image_in_bands_is_bit_identical_too(monkeypatch):
    """A tall, narrow image in bands: with OpenCV's box filter (running sums whose rounding depends on the
    region's first row) 6 of its 6 M pixels differed from the whole image; the direct separable mean gives none."""
    from spncli import residual

    rng = np.random.default_rng(0)
    pixels = (rng.random((20000, 300, 3)) * 200 + 20).astype(np.uint8).astype(np.float32)
    monkeypatch.setattr(residual, "CONCURRENT_MAX_PIXELS", 0)
    monkeypatch.setattr(residual, "BAND_SAMPLES", 9328 * 300)
    previous = residual.set_channel_threads(1)
    try:
        whole = residual.grey_residual(pixels)
        residual.set_channel_threads(2)
        bands = residual.grey_residual(pixels)
    finally:
        residual.set_channel_threads(previous)
    assert np.array_equal(whole, bands)


def test_eight_bit_samples_give_the_float_pixels_residual_bit_for_bit(dresden, monkeypatch):
    """Evidence keeps the decoded 8-bit samples and makes its float pixels only when asked: the residual
    read from the samples (converted a channel or a band at a time) is the float pixels' residual, in
    bands and whole; 16-bit images still go through their scaled float pixels."""
    from spncli import residual
    from spncli.identify import residual_with_info

    image = load_image(dresden / "nat-jpg" / "Nikon_D70_0_19445.JPG")
    assert image.samples.dtype == np.uint8 and image._pixels is None
    assert image.denoiser_samples() is image.samples and image._pixels is None  # no float copy made
    crop = (1008, 640)
    from_samples = residual_with_info(image, ResidualParams(), crop)[0]
    assert image._pixels is None
    decoded = image.samples
    floats = np.ascontiguousarray(centre_crop(image.pixels, crop))
    assert floats.dtype == np.float32 and np.array_equal(floats, centre_crop(decoded, crop))
    assert np.array_equal(from_samples, extract_residual(floats))
    monkeypatch.setattr(residual, "CONCURRENT_MAX_PIXELS", 0)
    monkeypatch.setattr(residual, "BAND_SAMPLES", 160 * 640)
    previous = residual.set_channel_threads(2)
    try:
        samples = np.ascontiguousarray(centre_crop(decoded, crop))
        assert np.array_equal(residual.grey_residual(samples), residual.grey_residual(floats))
    finally:
        residual.set_channel_threads(previous)
    aware = load_image(dresden / "nat-jpg" / "Nikon_D70_0_19445.JPG")
    residual_with_info(aware, ResidualParams(), crop, kind="compression-aware")
    assert aware._pixels is None  # the compression-aware residual reads the samples too
    thumb = image.eight_bit()
    assert image.samples.strides == (0, 0, 0) and image.samples.dtype == np.uint8  # the floats replaced them
    assert thumb.dtype == np.uint8 and np.array_equal(thumb, aware.samples)  # saturated floats = the samples
    image.release_pixels()
    assert image.shape == (2000, 3008) and image.samples.strides == (0, 0, 0) and image.pixels.strides == (0, 0, 0)


def test_wiener_gain_in_bands_of_rows_is_the_whole_planes(monkeypatch):
    """The spectral Wiener gain is computed a band of rows at a time (each band with the window's reach
    around it, read before any gain is applied): the result is the one-band result bit for bit, with and
    without the spectrum, in place or not, and the same at every call (cv2.magnitude, used before, rounded
    by the arrays' alignment: two calls on one band differed in the last bit). A first version that re-read
    the rows above each band after their gain was applied differed by 0.005 here."""
    from spncli import residual

    rng = np.random.default_rng(11)
    x = rng.standard_normal((600, 802)).astype(np.float32)
    x[::8] += 0.7  # a JPEG-like grid: strong peaks for the gain to remove
    sigma = float(x.std())
    before = x.copy()
    monkeypatch.setattr(residual, "GAIN_BAND_ROWS", 10_000)
    whole, whole_half = wiener_dft(x, sigma, spectrum=True)
    for rows in (1, 3, 5, 64, 299):  # bands shorter than the window's reach (4) too
        monkeypatch.setattr(residual, "GAIN_BAND_ROWS", rows)
        y, half = wiener_dft(x, sigma, spectrum=True)
        assert np.array_equal(y, whole) and np.array_equal(half, whole_half)
        assert np.array_equal(wiener_dft(x, sigma), y)
        own = x.copy()
        assert np.array_equal(wiener_dft(own, sigma, inplace=True), y)
    assert np.array_equal(x, before)  # the calls without inplace leave their input alone
    assert np.abs(whole - x).max() > 0.1  # the filter did something


def test_sample_std_is_the_float64_standard_deviation():
    from spncli.residual import sample_std

    rng = np.random.default_rng(2)
    x = (rng.standard_normal((1001, 37)) * 3 + 5).astype(np.float32)
    want = np.std(x.astype(np.float64), ddof=1)
    assert abs(sample_std(x) - want) <= 1e-12 * want
    assert abs(sample_std(x, ddof=0) - np.std(x.astype(np.float64))) <= 1e-12 * want
    assert abs(sample_std(x, rows=7) - want) <= 1e-12 * want


def test_pixel_digest_is_the_samples_whether_held_or_replaced(dresden, tmp_path):
    """Evidence.pixel_sha256 hashes the decoded samples, recovered exactly once the float pixels replaced them
    (8 and 16 bits); a copy in other bytes (extra bytes after the end marker, a lossless PNG) has the same
    digest, another photograph another."""
    import cv2

    from spncli.evidence import decode, load_image

    src = sorted((dresden / "nat-jpg").glob("*.JPG"))[:2]
    ev = load_image(src[0])
    held = ev.pixel_sha256()
    ev.pixels  # noqa: B018  (the float pixels replace the samples)
    assert ev.pixel_sha256() == held
    wrapped = decode(src[0].read_bytes() + b"\x00tail", "wrapped.jpg")
    png = decode(cv2.imencode(".png", cv2.cvtColor(load_image(src[0]).samples, cv2.COLOR_RGB2BGR))[1].tobytes(),
                 "copy.png")  # fmt: skip
    assert wrapped.sha256 != ev.sha256 and wrapped.pixel_sha256() == held == png.pixel_sha256()
    assert load_image(src[1]).pixel_sha256() != held
    deep = (load_image(src[0]).samples.astype(np.uint16) * 257)[:64, :64]
    sixteen = decode(cv2.imencode(".png", deep)[1].tobytes(), "deep.png")
    first = sixteen.pixel_sha256()
    sixteen.pixels  # noqa: B018
    assert sixteen.samples.dtype == np.uint16 and sixteen.pixel_sha256() == first
    small = decode(cv2.imencode(".png", (deep // 257).astype(np.uint8))[1].tobytes(), "small.png")
    assert small.pixel_sha256() == first  # an 8-bit image saved at 16 bits is the same photograph
    odd = decode(cv2.imencode(".png", deep + 1)[1].tobytes(), "odd.png")
    assert odd.pixel_sha256() != first
    small.release_pixels()
    with pytest.raises(ValueError, match="released"):
        small.pixel_sha256()
