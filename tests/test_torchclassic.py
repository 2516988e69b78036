"""The torch path of the classic pipeline agrees with the numpy reference on real Dresden images.

Run here with torch on the CPU (float32 and float64); the same checks on CUDA run where a GPU
exists (skipped otherwise, with the reason) and in ``benchmarks/gpu_classic.py`` on the GPU machine.
Measured on Dresden crops (CPU torch): residual max |diff| about 1e-4 (float32 rounding of values
up to 26, std 1.6), fingerprint max |diff| about 3e-7 (values up to 0.03), PCE relative diff < 1e-5.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spncli import device as devices  # noqa: E402
from spncli import pce, torchclassic  # noqa: E402
from spncli.evidence import load_image  # noqa: E402
from spncli.fingerprint import FingerprintAccumulator  # noqa: E402
from spncli.identify import Matcher, MatchSettings, build_fingerprint, cropped_pixels  # noqa: E402
from spncli.jobs import ExtractJob  # noqa: E402
from spncli.residual import ResidualParams, extract_residual  # noqa: E402
from spncli.store import Fingerprint  # noqa: E402

CROP = (384, 512)
CAMERAS = ("Nikon_D70_0", "Nikon_D70s_0")
PROBES = ("Nikon_D70_0_19445", "Nikon_D70s_0_21853", "Nikon_D70_1_20891")
CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA GPU here: the CUDA checks run where one exists (benchmarks/gpu_classic.py on the GPU machine)",
)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Torch's intra-op threads spin against the other processes on a shared 2-core machine: one thread here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pixels(path):
    ev = load_image(path)
    return ev, cropped_pixels(ev, CROP)


@pytest.fixture(scope="module")
def flats(dresden):
    return {cam: sorted((dresden / "ff-jpg").glob(f"{cam}_*.JPG"))[:3] for cam in CAMERAS}


@pytest.fixture(scope="module")
def probes(dresden):
    return [dresden / "nat-jpg" / f"{name}.JPG" for name in PROBES]


@pytest.fixture(scope="module")
def spectra(flats):
    """Numpy-path fingerprints of two cameras (3 flat-fields each, centre crop)."""
    out = {}
    for cam, paths in flats.items():
        acc = FingerprintAccumulator()
        for p in paths:
            ev, px = _pixels(p)
            acc.add(px, ev.saturation)
        out[cam] = pce.FingerprintSpectrum(acc.finalize())
    return out


def _close_pce(got: float, ref: float) -> bool:
    return abs(got - ref) <= 0.01 * abs(ref) + 1e-3  # within 1% (PCEs near 0: 1e-3 absolute)


def test_wavelet_equals_pywavelets_symmetric_mode_on_an_odd_sized_patch(probes):
    import pywt

    _, px = _pixels(probes[0])
    x = px[:61, :93, 1].astype(np.float64)
    ref = pywt.wavedec2(x, "db4", level=3, mode="symmetric")
    got = torchclassic.wavedec2(torch.from_numpy(x)[None], "db4", 3)
    assert np.abs(got[0][0].numpy() - ref[0]).max() < 1e-9
    for lg, lr in zip(got[1:], ref[1:]):
        for g, r in zip(lg, lr):
            assert g.shape[1:] == r.shape and np.abs(g[0].numpy() - r).max() < 1e-9
    back = torchclassic.waverec2(got, "db4")[0, :61, :93].numpy()
    assert np.abs(back - x).max() < 1e-9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_residual_matches_the_numpy_path(probes, dtype):
    for path in probes:
        _, px = _pixels(path)
        ref = extract_residual(px)
        got = torchclassic.extract_residual(px, device="cpu", dtype=dtype).numpy()
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() < 1e-3, path.name  # float32 rounding; measured about 1e-4
        assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.999999


def test_fingerprint_matches_the_numpy_path(flats):
    paths = flats[CAMERAS[0]]
    ref, got = FingerprintAccumulator(), torchclassic.TorchFingerprintAccumulator(device="cpu")
    for p in paths:
        ev, px = _pixels(p)
        ref.add(px, ev.saturation)
        got.add(px, ev.saturation)
    k_ref, k_got = ref.finalize(), got.finalize()
    assert got.count == ref.count == len(paths)
    assert got.saturated_fraction == ref.saturated_fraction
    assert np.abs(k_got - k_ref).max() < 1e-4 * np.abs(k_ref).max()  # measured about 1e-5 of it


def test_batched_pce_matches_the_numpy_scores(probes, spectra):
    """Full size, a smaller probe, a turned probe and a shift search: PCE within 1%, same peak and rotation."""
    cameras = list(spectra)
    above = 0
    for path in probes:
        _, px = _pixels(path)
        w = extract_residual(px)
        cases = {
            "full": (w, 0),
            "smaller": (np.ascontiguousarray(w[:300, :400]), 0),
            "turned": (np.ascontiguousarray(w.T), 0),
            "shift search": (np.ascontiguousarray(w[:300, :400]), 3),
        }
        for label, (res, max_shift) in cases.items():
            got = torchclassic.score_many(res, cameras, spectra, device="cpu", max_shift=max_shift)
            for cam in cameras:
                ref = pce.score(res, spectra[cam], max_shift=max_shift)
                g = got[cam]
                assert _close_pce(g.pce, ref.pce), (path.name, label, cam, g.pce, ref.pce)
                assert (g.peak, g.shift, g.rotation, g.n_shifts) == (ref.peak, ref.shift, ref.rotation, ref.n_shifts)
                assert abs(g.ncc - ref.ncc) < 1e-5
                for threshold in (10.0, 60.0):
                    assert (g.pce > threshold) == (ref.pce > threshold)
                above += ref.pce > 10
        on_device = torchclassic.score_many(torch.from_numpy(w), cameras, spectra, device="cpu")  # no transfer
        assert on_device == torchclassic.score_many(w, cameras, spectra, device="cpu")
    assert above >= 1  # the decisions compared include a match, not only non-matches


def test_matcher_on_the_torch_path_scores_as_the_numpy_path(probes, flats, tmp_path):
    """The workflow end to end (build_fingerprint, Matcher, ExtractJob) with the torch code, against numpy."""
    fps = []
    for cam, paths in flats.items():
        k_ref, meta_ref = build_fingerprint(paths, cam, crop=CROP, device="cpu")
        fps.append(Fingerprint(cam, k_ref, "0" * 64, meta_ref))
    assert meta_ref["compute"] == {"device_requested": "cpu", "device": "cpu", "backend": devices.REFERENCE_BACKEND}
    k, meta = build_fingerprint(paths, cam, crop=CROP, device=devices.TORCH_CPU)
    assert np.abs(k - k_ref).max() < 1e-4 * np.abs(k_ref).max()
    assert meta["compute"]["device"] == devices.TORCH_CPU and meta["compute"]["backend"].startswith("torch ")
    settings = MatchSettings(crop=CROP, threshold=10.0)
    ref, got = Matcher(fps, settings), Matcher(fps, settings, device=devices.TORCH_CPU)
    for path in probes:
        ev = load_image(path)
        for a, b in zip(ref.match(ev, surfaces=True), got.match(ev, surfaces=True)):
            assert a["camera"] == b["camera"] and a["decision"] == b["decision"]
            assert _close_pce(b["pce"], a["pce"])
            assert (a["device"], b["device"]) == ("cpu", devices.TORCH_CPU)
            assert ("_surface" in a) == ("_surface" in b)
    job = ExtractJob(tmp_path, ResidualParams(), CROP, device=devices.TORCH_CPU)
    result = job(str(probes[0]))
    record = json.loads((tmp_path / result["written"].replace(".npy", ".json")).read_text())
    assert record["compute"]["device_requested"] == devices.TORCH_CPU
    assert np.abs(np.load(result["written"]) - extract_residual(_pixels(probes[0])[1])).max() < 1e-3


def test_device_requests_are_checked_and_auto_stays_on_numpy_without_a_gpu(monkeypatch):
    with pytest.raises(ValueError, match="not one of auto, cpu, cuda"):
        devices.check_device("gpu")
    assert devices.resolve_device("cpu") == "cpu"
    devices.resolve_device.cache_clear()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # every device hidden: no GPU can be there
    try:
        assert not devices.gpu_present()
        assert devices.resolve_device("auto") == "cpu"
        with pytest.raises(devices.DeviceUnavailable, match="allowed: auto, cpu, cuda"):
            devices.resolve_device("cuda")
    finally:
        devices.resolve_device.cache_clear()


def test_a_dask_worker_declaring_a_gpu_resolves_auto_to_cuda(monkeypatch):
    """In a worker, auto follows the declared GPU resource (CUDA asked only then)."""
    import distributed

    class Worker:
        def __init__(self, resources):
            self.state = type("State", (), {"total_resources": resources})()

    monkeypatch.setattr(devices, "gpu_present", lambda: True)
    monkeypatch.setattr(devices, "cuda_usable", lambda: True)
    for resources, expected in (({"GPU": 1}, "cuda"), ({}, "cpu")):
        monkeypatch.setattr(distributed, "get_worker", lambda r=resources: Worker(r))
        devices.resolve_device.cache_clear()
        try:
            assert devices.resolve_device("auto") == expected
        finally:
            devices.resolve_device.cache_clear()


@CUDA
def test_cuda_residual_and_pce_match_the_numpy_path(probes, spectra):
    cameras = list(spectra)
    for path in probes:
        _, px = _pixels(path)
        ref = extract_residual(px)
        got = torchclassic.to_numpy(torchclassic.extract_residual(px, device="cuda"))
        assert np.abs(got - ref).max() < 1e-3
        scores = torchclassic.score_many(ref, cameras, spectra, device="cuda")
        for cam in cameras:
            assert _close_pce(scores[cam].pce, pce.score(ref, spectra[cam]).pce)
