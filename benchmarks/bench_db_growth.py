"""Database growth: what adding the k-th camera costs, in time and in bytes written, for k = 1 .. N.

Each addition goes through :meth:`spncli.store.FingerprintStore.add` (lock,
the camera's own file written and fsync'd, a fresh index renamed into place).
Bytes written are this process's ``write()`` bytes from ``/proc/self/io``
(``wchar``) around the call, and the size of the files the call created
(the camera's file plus the new index). Synthetic fingerprints (Gaussian,
float32); nothing else runs in the process. At the end, the pre-screen records the additions
appended are read back (:meth:`~spncli.store.FingerprintStore.sign_digests`) and one query
ranks every camera (:class:`spncli.prescreen.Prescreen`), timed.

Run: python benchmarks/bench_db_growth.py --cameras 200 --size 512
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from spncli.leaks import Screener
from spncli.prescreen import Prescreen
from spncli.store import SIGNS, FingerprintStore


def wchar() -> int:
    """Bytes this process has passed to write() so far (Linux)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no wchar")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cameras", type=int, default=200)
    ap.add_argument("--size", type=int, default=512, help="fingerprint side (pixels)")
    ap.add_argument("--keep", default=None, help="folder for the database (default: a temporary folder)")
    ap.add_argument(
        "--leak-screen",
        action="store_true",
        help="add as spn fingerprint does: with the leak screen (PCE against every stored camera, O(N) by nature)",
    )
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="spn-dbgrowth-"))
    store = FingerprintStore(work / "db.h5")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(args.cameras):
        k = rng.standard_normal((args.size, args.size)).astype(np.float32)
        before = set(store.folder.glob("*.h5")) if store.folder.is_dir() else set()
        w0, t0 = wchar(), time.perf_counter()
        screen = Screener(store, f"cam-{i:04d}", k) if args.leak_screen else None
        store.add(f"cam-{i:04d}", k, {"camera": f"cam-{i:04d}", "synthetic": True}, screen=screen)
        seconds, written = time.perf_counter() - t0, wchar() - w0
        new = set(store.folder.glob("*.h5")) - before
        rows.append(
            {
                "camera": i + 1,
                "seconds": round(seconds, 4),
                "write_bytes": written,
                "camera_file_bytes": sum(p.stat().st_size for p in new),
                "index_bytes": store.path.stat().st_size,
            }
        )
    first, last = rows[0], rows[-1]
    for r in (first, last):
        print(json.dumps(r))
    early, late = (float(np.median([r["seconds"] for r in part])) for part in (rows[:20], rows[-20:]))
    print("\n| camera | seconds | bytes written (wchar) | camera file | index |")
    print("|---|---|---|---|---|")
    for r in (first, rows[len(rows) // 2 - 1], last):
        print(
            f"| {r['camera']} | {r['seconds']} | {r['write_bytes']} | {r['camera_file_bytes']} | "
            f"{r['index_bytes']} |"
        )
    print(
        f"\n{args.cameras} cameras of {args.size}x{args.size}"
        f"{' with the leak screen' if args.leak_screen else ''}: camera {last['camera']} wrote "
        f"{last['write_bytes'] / first['write_bytes']:.2f}x the bytes of camera 1, took "
        f"{last['seconds'] / first['seconds']:.2f}x its time; median seconds of cameras 1-20 {early:.4f}, of the "
        f"last 20 {late:.4f}; "
        f"total written {sum(r['write_bytes'] for r in rows) / 2**20:.1f} MiB"
    )
    names = store.cameras()
    t0 = time.perf_counter()
    screen = Prescreen(str(store.path), 10)
    screen.load(names)
    t1 = time.perf_counter()
    source = 7 % len(names)
    k = np.random.default_rng(0)
    for _ in range(source + 1):  # the fingerprint of camera `source`, regenerated
        ks = k.standard_normal((args.size, args.size)).astype(np.float32)
    w = (0.05 * ks + np.random.default_rng(99).standard_normal(ks.shape)).astype(np.float32)
    t2 = time.perf_counter()
    keep, z = screen.select(w, names)
    t3 = time.perf_counter()
    print(
        f"pre-screen records: {(store.folder / SIGNS).stat().st_size / 2**20:.1f} MiB for {len(names)} cameras, "
        f"read and checked in {t1 - t0:.3f} s; one query over all of them {t3 - t2:.3f} s; "
        f"source camera ranked first: {max(z, key=z.get) == names[source]} (z {z[names[source]]:.1f}; "
        f"best {max(z, key=z.get)} {max(z.values()):.1f})"
    )


if __name__ == "__main__":
    main()
