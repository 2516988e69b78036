"""Bounded workers and databases that grow: the job pickles small, a worker's transforms stay within their
budget and score as the eager Matcher does, and adding a camera writes that camera, not the database."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest

from spncli.evidence import load_image
from spncli.identify import Matcher, MatchSettings
from spncli.jobs import MatchJob
from spncli.pce import FingerprintSpectrum
from spncli.spectra import SpectrumCache, cache_for, spectrum_bytes
from spncli.store import FingerprintStore


def _k(seed, shape=(256, 384)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture
def store(tmp_path):
    s = FingerprintStore(tmp_path / "db.h5")
    for i in range(5):
        s.add(f"cam-{i}", _k(i), {"camera": f"cam-{i}"})
    return s


def test_worker_cache_never_holds_more_than_its_budget(store):
    one = spectrum_bytes(FingerprintSpectrum(_k(0)))
    cache = SpectrumCache(str(store.path), store.file_sha256(), None, budget=2 * one + one // 2)
    for _ in range(3):  # every image visits the cameras in the same order
        for i in range(5):
            spectrum = cache.get(f"cam-{i}", store.load(f"cam-{i}").sha256)
            np.testing.assert_array_equal(spectrum.spectrum, FingerprintSpectrum(_k(i)).spectrum)
            assert cache.held_bytes <= cache.budget and len(cache.held) <= 2
    assert set(cache.held) == {"cam-0", "cam-1"}  # the first that fit are kept, the rest computed per pass
    assert cache.computed == 5 + 3 + 3


def test_cache_refuses_a_database_that_changed(store):
    cache = SpectrumCache(str(store.path), store.file_sha256(), None, budget=1 << 30)
    sha = store.load("cam-0").sha256
    store.add("cam-9", _k(9), {})
    with pytest.raises(Exception, match="database changed since this run began"):
        cache.get("cam-0", sha)


def test_the_job_pickles_small_and_scores_as_the_eager_matcher(store, dresden):
    settings = MatchSettings(crop=(256, 256))
    names = store.cameras()
    lazy = Matcher.from_database(store, names, settings, db_sha256=store.file_sha256(), memory=1 << 30)
    eager = Matcher((store.load(n) for n in names), settings)
    shipped = pickle.dumps(MatchJob(lazy, artifacts=False))
    assert len(shipped) < 4096, len(shipped)  # path, SHA-256s and settings: no transform
    assert len(pickle.dumps(MatchJob(eager, artifacts=False))) > 5 * 256 * 129 * 8
    image = sorted((dresden / "nat-jpg").glob("*.JPG"))[0]
    worker = pickle.loads(shipped)  # as a worker process receives it
    got = worker(str(image))
    ev = load_image(image)
    want = eager.match(ev)
    assert [r["camera"] for r in got["records"]] == names
    for g, w in zip(got["records"], want, strict=True):
        assert g["pce"] == w["pce"] and g["fingerprint_sha256"] == w["fingerprint_sha256"]


def test_a_changed_database_fails_each_file_in_one_line(store, dresden):
    lazy = Matcher.from_database(store, store.cameras(), MatchSettings(crop=(256, 256)),
                                 db_sha256=store.file_sha256(), memory=1 << 30)  # fmt: skip
    store.remove("cam-4")
    image = sorted((dresden / "nat-jpg").glob("*.JPG"))[0]
    result = pickle.loads(pickle.dumps(MatchJob(lazy)))(str(image))
    assert "database changed since this run began" in result["error"]


def test_adding_a_camera_writes_that_camera_not_the_database(tmp_path):
    store = FingerprintStore(tmp_path / "db.h5")
    written = []
    for i in range(40):
        before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in store.folder.glob("*.h5")}
        store.add(f"cam-{i:03d}", _k(i, (128, 128)), {"camera": f"cam-{i:03d}"})
        files = list(store.folder.glob("*.h5"))
        new = [p for p in files if p.name not in before]
        assert len(new) == 1 and len(files) == i + 1
        for p in files:  # no earlier camera file was rewritten
            if p.name in before:
                assert (p.stat().st_ino, p.stat().st_mtime_ns) == before[p.name]
        written.append(new[0].stat().st_size + store.path.stat().st_size)  # the camera's file and the new index
    camera_bytes = 128 * 128 * 4
    assert written[0] >= camera_bytes
    assert written[-1] <= 2 * written[0], written  # the 40th costs about what the 1st did
    digests = set()
    for i in range(3):  # the database SHA-256 changes with any camera
        store.add("cam-000", _k(100 + i, (128, 128)), {}, replace=True)
        digests.add(store.file_sha256())
    assert len(digests) == 3 and len(list(store.folder.glob("*.h5"))) == 40  # the replaced files were deleted


def _shared_job(store, settings, folder):
    folder.mkdir()  # the run's own folder (spncli.batch makes it with tempfile.mkdtemp)
    lazy = Matcher.from_database(store, store.cameras(), settings, db_sha256=store.file_sha256(), memory=0)
    job, failed = MatchJob(lazy, artifacts=False).share(str(folder), lambda fn, items: list(map(fn, items)))
    assert failed == []
    return pickle.loads(pickle.dumps(job))  # as a worker process receives it


@pytest.mark.parametrize("crop", [(256, 256), None])
def test_shared_transforms_are_mapped_read_only_and_score_as_in_process(store, dresden, tmp_path, crop):
    settings = MatchSettings(crop=crop)
    names = store.cameras()
    worker = _shared_job(store, settings, tmp_path / "shared-spectra")
    eager = Matcher((store.load(n) for n in names), settings)
    for image in sorted((dresden / "nat-jpg").glob("*.JPG"))[: 2 if crop else 1]:  # a full frame costs seconds
        got = worker(str(image))["records"]
        want = eager.match(load_image(image))
        assert [r["camera"] for r in got] == names
        for g, w in zip(got, want, strict=True):
            assert g == w | {"size_bytes": g["size_bytes"]}  # every field, the PCE included, is the same
    spectra = worker.matcher.spectra

    held = cache_for(spectra.path, spectra.sha256, spectra.crop, spectra.budget, spectra.shared)
    assert held.mapped == len(names) and held.computed == 0  # nothing read from the database, nothing transformed
    for spectrum in held.held.values():
        assert isinstance(spectrum.spectrum, np.memmap) and not spectrum.spectrum.flags.writeable


def test_a_damaged_shared_transform_is_read_from_the_database(store, dresden, tmp_path):
    settings = MatchSettings(crop=(256, 256))
    folder = tmp_path / "shared-damaged"
    worker = _shared_job(store, settings, folder)
    victim = sorted(folder.glob("*.npy"))[0]
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF
    victim.write_bytes(bytes(data))
    image = sorted((dresden / "nat-jpg").glob("*.JPG"))[0]
    got = worker(str(image))["records"]
    want = Matcher((store.load(n) for n in store.cameras()), settings).match(load_image(image))
    assert [g["pce"] for g in got] == [w["pce"] for w in want]
    s = worker.matcher.spectra
    held = cache_for(s.path, s.sha256, s.crop, s.budget, s.shared)
    assert held.mapped == 4 and held.computed == 1 and len(held.unshared) == 1


def test_the_shared_folder_is_temporary_and_removed(store, tmp_path):
    from spncli import batch

    class FakeClient:  # the three calls _shared_folder makes of a local cluster's client
        cluster = object()

        def map(self, fn, items, pure=False):
            return [fn(i) for i in items]

        def gather(self, futures):
            return futures

    lazy = Matcher.from_database(store, store.cameras(), MatchSettings(), db_sha256=store.file_sha256(), memory=0)
    with batch._shared_folder(FakeClient(), MatchJob(lazy)) as job:
        folder = Path(job.matcher.spectra.shared)
        assert len(list(folder.glob("*.npy"))) == len(list(folder.glob("*.json"))) == 5
        assert folder.parent == Path(tempfile.gettempdir()) and store.path.parent not in folder.parents
    assert not folder.exists()


def test_a_killed_runs_shared_folder_is_removed_by_the_next_run(tmp_path, monkeypatch):
    from spncli import batch

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / "spn-spectra-999999999-abc"  # no such process
    alive = tmp_path / f"spn-spectra-{os.getpid()}-abc"
    for folder in (dead, alive):
        folder.mkdir()
        (folder / "x.npy").write_bytes(b"x")
    other = tmp_path / "elsewhere"
    other.mkdir()
    link = tmp_path / "spn-spectra-999999998-link"
    link.symlink_to(other, target_is_directory=True)
    batch._remove_abandoned()
    assert not dead.exists() and alive.exists() and link.is_symlink() and other.exists()


@pytest.mark.parametrize("enabled, defrag, off", [
    ("always [madvise] never", "always defer defer+madvise [madvise] never", True),
    ("[always] madvise never", "always defer [defer+madvise] madvise never", True),
    ("[always] madvise never", "always defer defer+madvise [madvise] never", True),
    ("always [madvise] never", "[always] defer defer+madvise madvise never", True),
    ("[always] madvise never", "[always] defer defer+madvise madvise never", False),  # the advice changes nothing
    ("always [madvise] never", "always [defer] defer+madvise madvise never", False),
    ("always [madvise] never", "always defer defer+madvise madvise [never]", False),
    ("always madvise [never]", "always defer defer+madvise [madvise] never", False),
])  # fmt: skip
def test_huge_page_advice_is_dropped_only_where_the_kernel_would_stall(tmp_path, enabled, defrag, off):
    try:
        from numpy._core.multiarray import _get_madvise_hugepage, _set_madvise_hugepage
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _get_madvise_hugepage, _set_madvise_hugepage

    from spncli.batch import no_huge_page_stalls

    (tmp_path / "enabled").write_text(enabled + "\n")
    (tmp_path / "defrag").write_text(defrag + "\n")
    before = _set_madvise_hugepage(True)
    try:
        assert no_huge_page_stalls(tmp_path) is off
        assert _get_madvise_hugepage() is not off
        assert no_huge_page_stalls(tmp_path / "absent") is False
    finally:
        _set_madvise_hugepage(before)


@pytest.mark.parametrize("shape", [(1500, 2001), (3, 0), (7,)])
def test_streamed_npy_is_numpy_save_byte_for_byte(tmp_path, shape):
    import hashlib
    import io

    from spncli.provenance import atomic_write_npy

    array = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for i, a in enumerate((array, array.T, array[..., ::-1])):  # C order, Fortran order, reversed strides
        expected = io.BytesIO()
        np.save(expected, a, allow_pickle=False)
        digest = atomic_write_npy(tmp_path / f"{i}.npy", a)
        assert (tmp_path / f"{i}.npy").read_bytes() == expected.getvalue()
        assert digest == hashlib.sha256(expected.getvalue()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.npy", "1.npy", "2.npy"]  # no temporary left
