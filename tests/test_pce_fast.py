"""The PCE read from the spectra (Parseval + partial inverse DFT) equals the FFT surface's PCE.

The reference is computed independently here in float64 (numpy's FFT): the full circular
cross-correlation, then the PCE at the peak with an 11x11 neighbourhood left out.
"""

from __future__ import annotations

import numpy as np
import pytest

from spncli.evidence import load_image
from spncli.fingerprint import FingerprintAccumulator
from spncli.geometry import centre_crop, crop_offsets
from spncli.pce import (
    EXCLUDE,
    FingerprintSpectrum,
    ResidualSpectrum,
    correlation_surface,
    cross_correlation,
    pce_at,
    pce_direct,
    rfft2,
    score,
)
from spncli.residual import extract_residual

SHAPES = [(64, 64), (63, 97), (128, 75), (101, 101), (256, 384), (17, 16)]


def _reference(k: np.ndarray, res: np.ndarray, peak: tuple[int, int]) -> tuple[float, float]:
    """float64 PCE and C[peak] of ``res`` (at the origin, zero-padded) against ``k``."""
    padded = np.zeros(k.shape)
    padded[: res.shape[0], : res.shape[1]] = res
    cc = np.fft.irfft2(np.fft.rfft2(k.astype(np.float64)) * np.conj(np.fft.rfft2(padded)), s=k.shape)
    half = EXCLUDE // 2
    ri = np.unique(np.arange(peak[0] - half, peak[0] + half + 1) % k.shape[0])
    ci = np.unique(np.arange(peak[1] - half, peak[1] + half + 1) % k.shape[1])
    near = np.square(cc[np.ix_(ri, ci)]).sum()
    energy = (np.square(cc).sum() - near) / (cc.size - ri.size * ci.size)
    v = cc[peak]
    return float(np.sign(v) * v * v / energy), float(v)


def _close(a: float, b: float) -> bool:
    """Within 1e-4 relative (absolute below 1: a PCE near 0 has no relative precision)."""
    return abs(a - b) <= 1e-4 * max(abs(b), 1.0)


def _corr(a, b):
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


@pytest.mark.parametrize("shape", SHAPES)
def test_rfft2_is_numpys_half_spectrum(shape):
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    ref = np.fft.rfft2(x.astype(np.float64))
    assert np.abs(rfft2(x) - ref).max() <= 1e-5 * np.abs(ref).max()
    big = (shape[0] + 5, shape[1] + 2)  # zero-padded
    ref = np.fft.rfft2(x.astype(np.float64), s=big)
    assert rfft2(x, big).shape == (big[0], big[1] // 2 + 1)
    assert np.abs(rfft2(x, big) - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("shape", SHAPES)
def test_direct_pce_equals_fft_pce_on_random_data(shape):
    rng = np.random.default_rng(sum(shape))
    k = rng.standard_normal(shape).astype(np.float32)
    fp = FingerprintSpectrum(k)
    for strength in (0.0, 0.05, 0.5):
        w = (strength * k + rng.standard_normal(shape)).astype(np.float32)
        conj = np.conj(rfft2(w))
        cc = cross_correlation(w, fp)
        for peak in [(0, 0), (shape[0] - 2, 3), (int(rng.integers(shape[0])), int(rng.integers(shape[1])))]:
            pce, value = pce_direct(conj, fp, peak)
            ref, ref_value = _reference(k, w, peak)
            assert _close(pce, ref), (shape, strength, peak, pce, ref)
            assert _close(pce_at(cc, peak), ref)
            assert abs(value - ref_value) <= 1e-5 * np.sqrt(np.square(cc, dtype=np.float64).mean()) + 1e-4 * abs(
                ref_value
            )
    # a match is a match: the direct PCE is large exactly when the FFT PCE is
    assert pce_direct(np.conj(rfft2(k)), fp, (0, 0))[0] > 60


@pytest.fixture(scope="module")
def dresden_pair(dresden):
    """Residuals of two natural Dresden images and fingerprints (3 flats) of two cameras, centre 600x800."""
    size = (600, 800)
    fps = {}
    for cam in ("Nikon_D70_0", "Nikon_D70s_0"):
        acc = FingerprintAccumulator()
        for p in sorted((dresden / "ff-jpg").glob(f"{cam}_*.JPG"))[:3]:
            acc.add(np.ascontiguousarray(centre_crop(load_image(p).pixels, size)))
        fps[cam] = acc.finalize()
    probes = {
        cam: extract_residual(np.ascontiguousarray(centre_crop(load_image(dresden / "nat-jpg" / name).pixels, size)))
        for cam, name in (("Nikon_D70_0", "Nikon_D70_0_19445.JPG"), ("Nikon_D70s_0", "Nikon_D70s_0_21853.JPG"))
    }
    return fps, probes


@pytest.mark.parametrize(
    ("fp_size", "probe_size"),
    [
        ((512, 768), (512, 768)),  # equal, even
        ((511, 767), (511, 767)),  # equal, odd
        ((511, 767), (401, 603)),  # smaller probe: centre offset, NCC on a region
        ((400, 600), (511, 767)),  # larger probe: cropped to the fingerprint
        ((512, 768), (768, 512)),  # portrait probe: both rotations from one transform
        ((511, 767), (767, 511)),
    ],
)
def test_score_equals_fft_pce_on_dresden(dresden_pair, fp_size, probe_size):
    fps, probes = dresden_pair
    for cam, k_full in fps.items():
        k = np.ascontiguousarray(centre_crop(k_full, fp_size))
        fp = FingerprintSpectrum(k)
        for probe_cam, w_full in probes.items():
            rotated = probe_size[0] > probe_size[1]
            w = centre_crop(w_full, probe_size[::-1] if rotated else probe_size)
            w = np.ascontiguousarray(np.rot90(w, -1) if rotated else w)
            probe = ResidualSpectrum(w)
            s = score(probe, fp)
            assert s.n_shifts == (2 if rotated else 1) and s.rotation in ((90, 270) if rotated else (0,))
            if cam == probe_cam and s.pce > 60:  # the true match is found at the rotation that undoes the turn
                assert s.rotation == (90 if rotated else 0)
            # independent float64 reference for every rotation tried; the score keeps the larger
            refs = []
            for angle in (90, 270) if rotated else (0,):
                turned = np.rot90(w, angle // 90)
                h, wd = min(turned.shape[0], k.shape[0]), min(turned.shape[1], k.shape[1])
                r, c = crop_offsets(turned.shape, (h, wd))
                res = turned[r : r + h, c : c + wd]
                peak = crop_offsets(k.shape, (h, wd))
                refs.append((_reference(k, res, peak)[0], angle, peak, res))
            ref, angle, peak, res = max(refs, key=lambda t: t[0])
            assert _close(s.pce, ref), (cam, probe_cam, s.pce, ref)
            assert s.rotation == angle and s.peak == peak
            region = k[peak[0] : peak[0] + res.shape[0], peak[1] : peak[1] + res.shape[1]]
            assert s.ncc == pytest.approx(_corr(res, region), abs=1e-5)
            # the fast path and the FFT path give the same decision
            assert (s.pce > 60) == (ref > 60)
            # the surface for the report (only asked for matches) is the FFT surface, peak in the centre
            patch = correlation_surface(probe, fp, s)
            assert np.array_equal(patch, score(w, fp, surface=True).surface)
            centre = float(patch[patch.shape[0] // 2, patch.shape[1] // 2])
            assert centre == pytest.approx(np.copysign(np.sqrt(abs(s.pce)), s.pce), rel=1e-4)
    # the real data separates: each natural image matches its own camera at 512x768
    fp = FingerprintSpectrum(np.ascontiguousarray(centre_crop(fps["Nikon_D70s_0"], (512, 768))))
    assert score(centre_crop(probes["Nikon_D70s_0"], (512, 768)), fp).pce > 60


@pytest.mark.parametrize("shape", [(40, 30), (41, 29), (33, 33)])
def test_turned_spectrum_equals_its_own_transform(shape):
    w = np.random.default_rng(9).standard_normal((shape[1], shape[0])).astype(np.float32)  # portrait
    probe = ResidualSpectrum(w)
    for fp_shape in (shape, (shape[0] + 3, shape[1] + 6)):
        probe.aligned(90, fp_shape)
        derived = probe.aligned(270, fp_shape).conj_spectrum
        direct = np.conj(np.fft.rfft2(np.rot90(w, 3).astype(np.float64), s=fp_shape))
        assert np.abs(derived - direct).max() <= 1e-5 * np.abs(direct).max()


def test_spectrum_reused_across_cameras():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((64, 96)).astype(np.float32)
    probe = ResidualSpectrum(w)
    for _ in range(3):
        score(probe, FingerprintSpectrum(rng.standard_normal((64, 96)).astype(np.float32)))
    assert list(probe._aligned) == [(0, (64, 96))]  # one transform for three cameras


@pytest.mark.parametrize("shape", [(64, 48), (63, 47)])
def test_wiener_step_spectrum_is_the_residuals_own_transform(shape):
    """The spectral Wiener filter's output spectrum is rfft2 of its result (even sizes through OpenCV, odd
    through numpy), so the PCE can reuse it; a spectrum of another shape is refused."""
    from spncli.residual import wiener_dft

    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    y, half = wiener_dft(x, float(x.std()), spectrum=True)
    assert np.array_equal(y, wiener_dft(x, float(x.std())))
    ref = np.fft.rfft2(y.astype(np.float64))
    assert np.abs(half - ref).max() <= 1e-5 * np.abs(ref).max()
    with pytest.raises(ValueError, match="half spectrum"):
        ResidualSpectrum(y, half[:, :-1])


def test_match_with_the_wiener_steps_spectrum_equals_its_own_transform(dresden_pair, dresden):
    """On a real image: the residual scored with the spectrum its Wiener step made gives the PCE of the
    residual transformed afresh (1e-6 relative), for the matching camera and for a rotated probe."""
    fps, _ = dresden_pair
    pixels = np.ascontiguousarray(centre_crop(load_image(dresden / "nat-jpg" / "Nikon_D70_0_19445.JPG").pixels,
                                              (600, 800)))  # fmt: skip
    w, half = extract_residual(pixels, spectrum=True)
    assert half is not None and np.array_equal(w, extract_residual(pixels))
    fp = FingerprintSpectrum(fps["Nikon_D70_0"])
    reused, fresh = score(ResidualSpectrum(w, half), fp), score(ResidualSpectrum(w), fp)
    assert reused.pce > 20 and reused.pce == pytest.approx(fresh.pce, rel=1e-6)  # the matching camera (3 flats)
    assert reused.peak == fresh.peak
    turned = FingerprintSpectrum(np.ascontiguousarray(np.rot90(fps["Nikon_D70_0"])))  # the spectrum is not used
    assert score(ResidualSpectrum(w, half), turned).pce == score(ResidualSpectrum(w), turned).pce
