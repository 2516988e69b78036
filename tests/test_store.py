"""The HDF5 database: round trip, checksums, concurrent writers, kill -9 mid-write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from spncli.store import FingerprintStore, StoreError


def _k(seed, shape=(64, 96)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_round_trip_list_remove(tmp_path):
    store = FingerprintStore(tmp_path / "db.h5")
    store.add("cam-1", _k(1), {"camera": "cam-1", "image_count": 3})
    store.add("cam-2", _k(2), {"camera": "cam-2"})
    assert store.cameras() == ["cam-1", "cam-2"]
    fp = store.load("cam-1")
    np.testing.assert_array_equal(fp.k, _k(1))
    assert fp.meta["image_count"] == 3 and len(fp.sha256) == 64
    with pytest.raises(StoreError, match="exists already"):
        store.add("cam-1", _k(3), {})
    store.add("cam-1", _k(3), {}, replace=True)
    np.testing.assert_array_equal(store.load("cam-1").k, _k(3))
    store.remove("cam-2")
    assert store.cameras() == ["cam-1"]
    with pytest.raises(StoreError, match="no camera 'cam-2'"):
        store.load("cam-2")
    with pytest.raises(StoreError, match="not allowed"):
        store.add("../evil", _k(1), {})
    assert not list(tmp_path.glob("*.tmp*"))
    assert store.select(None) == store.select(["cam-1"]) == ["cam-1"]
    with pytest.raises(StoreError, match=r"no camera nope \(cameras: cam-1\)"):
        store.select(["nope", "cam-1"])
    store.remove("cam-1")
    with pytest.raises(StoreError, match="holds no camera"):
        store.select(None)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_load_many_reads_ahead_in_order_and_fails_where_load_fails(tmp_path, threads):
    store = FingerprintStore(tmp_path / "db.h5")
    for i in range(5):
        store.add(f"cam-{i}", _k(i), {"camera": f"cam-{i}"})
    names = ["cam-3", "cam-0", "cam-4", "cam-1", "cam-2"]
    loaded = list(store.load_many(names, threads=threads))
    assert [fp.camera for fp in loaded] == names
    for fp in loaded:
        expected = store.load(fp.camera)
        np.testing.assert_array_equal(fp.k, expected.k)
        assert fp.sha256 == expected.sha256 and fp.meta == expected.meta
    got = []
    with pytest.raises(StoreError, match="no camera 'cam-9'"):
        for fp in store.load_many(["cam-0", "cam-1", "cam-9", "cam-2"], threads=threads):
            got.append(fp.camera)
    assert got == ["cam-0", "cam-1"]  # the cameras before the missing one, then its error, as load() in turn


def test_corruption_is_reported_not_used(tmp_path):
    store = FingerprintStore(tmp_path / "db.h5")
    store.add("cam", _k(1), {})
    with h5py.File(tmp_path / "db.h5", "r+") as f:
        f["cameras/cam/K"][3, 4] += 1.0
    with pytest.raises(StoreError, match="corrupted"):
        store.load("cam")


def test_not_a_database(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(StoreError, match="not a readable"):
        FingerprintStore(bad).cameras()
    with pytest.raises(StoreError, match="no such database"):
        FingerprintStore(tmp_path / "absent.h5").cameras()


def test_a_database_named_through_a_link_is_refused_and_left_alone(tmp_path):
    """A writer used to rename a new index over the link: a database naming files that are not beside it."""
    real = FingerprintStore(tmp_path / "real" / "db.h5")
    real.add("cam", _k(1), {})
    link = tmp_path / "elsewhere" / "db.h5"
    link.parent.mkdir()
    link.symlink_to(real.path)
    for action in (lambda s: s.cameras(), lambda s: s.add("other", _k(2), {}), lambda s: s.calibration()):
        with pytest.raises(StoreError, match="a symbolic link, not followed"):
            action(FingerprintStore(link))
    assert link.is_symlink() and not (tmp_path / "elsewhere" / "db.h5.d").exists()
    assert real.cameras() == ["cam"] and real.load("cam").camera == "cam"


_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from spncli.store import FingerprintStore
    store = FingerprintStore(sys.argv[1])
    prefix, n = sys.argv[2], int(sys.argv[3])
    for i in range(n):
        k = np.random.default_rng(i).standard_normal((1500, 2000)).astype(np.float32)
        store.add(f"{prefix}-{i}", k, {"i": i})
        print(i, flush=True)
    """
)


def test_concurrent_writers_are_serialized(tmp_path):
    db = tmp_path / "db.h5"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(db), p, "3"]) for p in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    store = FingerprintStore(db)
    assert store.cameras() == [f"{p}-{i}" for p in "ab" for i in range(3)]
    for cam in store.cameras():
        store.load(cam)  # checksums verify


def test_kill_mid_write_keeps_every_earlier_camera(tmp_path):
    db = tmp_path / "db.h5"
    store = FingerprintStore(db)
    for i in range(2):
        store.add(f"before-{i}", _k(i, (1500, 2000)), {})
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db), "during", "50"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "0"  # one camera written, the next one in progress
    time.sleep(0.15)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    names = store.cameras()
    assert {"before-0", "before-1", "during-0"} <= set(names)
    for cam in names:
        store.load(cam)
    np.testing.assert_array_equal(store.load("before-1").k, _k(1, (1500, 2000)))
    store.add("after", _k(9), {})  # the next writer cleans the killed writer's temporary
    assert not list(tmp_path.glob(".db.h5.*.tmp*"))


def test_a_killed_writers_files_are_collected_by_the_next(tmp_path):
    """Adding does not list the folder unless the writers' marker says that the last writer was killed."""
    store = FingerprintStore(tmp_path / "db.h5")
    store.add("a", _k(1), {})
    orphan = store.folder / ("b." + "0" * 64 + ".h5")  # a camera file that no index names
    orphan.write_bytes(b"x")
    store.add("c", _k(2), {})
    assert orphan.exists()  # the last writer finished: the folder was not listed
    (store.folder / ".writing").touch()  # as a writer killed between its camera file and its index leaves it
    store.add("d", _k(3), {})
    assert not orphan.exists() and not (store.folder / ".writing").exists()
    assert store.cameras() == ["a", "c", "d"] and all(store.load(n).camera == n for n in "acd")


def test_a_fifo_or_a_link_at_the_writers_lock_is_refused_not_followed(tmp_path):
    """``<db>.lock`` was opened with open(..., "a"): a FIFO there hung every writer, a link made one create a
    file outside the database's folder."""
    import os

    import numpy as np
    import pytest

    from spncli.store import FingerprintStore, StoreError

    db = tmp_path / "db" / "cams.h5"
    store = FingerprintStore(db)
    k = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    store.add("a", k, {"synthetic": True})
    lock = db.with_name(db.name + ".lock")
    lock.unlink()
    os.mkfifo(lock)
    with pytest.raises(StoreError, match="lock file is not a regular file"):
        store.add("b", k, {"synthetic": True})
    lock.unlink()
    outside = tmp_path / "outside"
    os.symlink(outside, lock)
    with pytest.raises(StoreError, match="symbolic link"):
        store.remove("a")
    assert not outside.exists() and store.cameras() == ["a"]
