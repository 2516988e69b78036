"""Scale: a generated folder of 12 MP images from synthetic cameras against a database of 50 fingerprints.

Measures images per second and peak memory (the whole process tree: the CLI
and its Dask workers, sampled every 0.2 s; the sum of PSS, which counts the
workers' shared read-only map of the transforms once, and the sum of RSS, which
counts it once per worker) for one worker and for all cores,
with the classic and the restored residual. The workers read the
fingerprints from the database themselves and keep at most --worker-memory of
their transforms each (the client transforms none); several budgets can be
compared in one run (--worker-memory 1536M,3G).

Run: python benchmarks/bench_batch.py --images 2000 --cameras 50
(the full 2,000-image run takes hours on 2 cores; --images sets the size).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from spncli.residual import ResidualParams, postprocess
from spncli.store import FingerprintStore
from spncli.synthetic import dead_leaves, encode_jpeg, expose, synthetic_prnu


def rss_by_pid(proc: psutil.Process) -> dict[int, tuple[int, int, float]]:
    """(RSS, PSS, CPU seconds) of each process of the tree (the CLI, the Dask nannies and workers).

    RSS counts a page shared by several processes (the workers' read-only map of the shared
    fingerprint transforms) once in each of them; PSS divides it among them, so the sum of PSS over
    the tree is the memory the tree holds.
    """
    out = {}
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info, cpu = p.memory_full_info(), p.cpu_times()
            out[p.pid] = (info.rss, info.pss, cpu.user + cpu.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


class _ImageCounter:
    """Images with rows in a case's results.jsonl (one row per image and camera scored), read on from where
    the last poll stopped: polling costs what the case gained, not the whole file each time."""

    def __init__(self, path: Path):
        self.path, self.offset, self.images = path, 0, set()

    def __call__(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # a line being written: read again at the next poll
                    self.offset += len(line)
                    try:
                        self.images.add(json.loads(line)["image"])
                    except (ValueError, KeyError):
                        pass
        except OSError:
            pass
        return len(self.images)


def run(cmd: list[str], results: Path | None = None) -> tuple:
    """Wall seconds; peak RSS (MiB) of the process tree, of the CLI process, of its largest other process;
    peak PSS (MiB) of the tree; CPU seconds (user + system) of the tree, as last sampled (to 0.2 s); and the
    steady rate (images/s between the first and the last image that ``results`` gained, set-up and start-up
    excluded; None with fewer than 3 images); seconds until the first image's rows appeared (start-up, set-up)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak, peak_pss, each, cpu = 0, 0, {}, {}
    seen: list[tuple[float, int]] = []  # (time, images) each time the image count changed
    count = _ImageCounter(results) if results is not None else None
    while proc.poll() is None:
        if count is not None:
            n = count()
            if n and (not seen or n != seen[-1][1]):
                seen.append((time.perf_counter(), n))
        now = rss_by_pid(ps)
        peak = max(peak, sum(r for r, _, _ in now.values()))
        peak_pss = max(peak_pss, sum(p for _, p, _ in now.values()))
        for pid, (rss, _, seconds) in now.items():
            each[pid] = max(each.get(pid, 0), rss)
            cpu[pid] = seconds
        time.sleep(0.2)
    err = proc.stderr.read()
    if proc.returncode not in (0, 1):
        raise RuntimeError(err[-2000:])
    client = each.pop(proc.pid, 0)
    worker = max(each.values(), default=0)
    wall = time.perf_counter() - start
    steady = None
    if len(seen) >= 2 and seen[-1][1] - seen[0][1] >= 2:
        steady = (seen[-1][1] - seen[0][1]) / (seen[-1][0] - seen[0][0])
    first = seen[0][0] - start if seen else None
    return wall, peak / 2**20, client / 2**20, worker / 2**20, peak_pss / 2**20, sum(cpu.values()), steady, first


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--cameras", type=int, default=50)
    ap.add_argument("--size", default="3000x4000", help="rows x cols (12 MP)")
    ap.add_argument("--workers", default=f"1,{os.cpu_count()}")
    ap.add_argument("--worker-memory", default="1536M", help="comma-separated budgets, passed to spn match")
    ap.add_argument("--plain-fingerprints", action="store_true",
                    help="store K plus noise without the Wiener filter (fast to generate; scoring costs the same)")
    ap.add_argument("--restore", action="store_true", help="also time the restored residual")
    ap.add_argument("--keep", default=None, help="folder to keep the generated data in")
    ap.add_argument("--db", default=None, help="reuse this fingerprint database (made by an earlier run)")
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality of the generated images")
    ap.add_argument("--only-restored", action="store_true", help="with --restore: skip the classic runs")
    ap.add_argument("--generate-only", action="store_true",
                    help="make the database and the images (--keep), run nothing")
    ap.add_argument("--prescreen", default="off",
                    help="comma-separated spn match --prescreen settings to compare (off, K, exact)")
    args = ap.parse_args()
    rows, cols = map(int, args.size.split("x"))
    work = Path(args.keep or tempfile.mkdtemp(prefix="spn-bench-"))
    evidence, db = work / "evidence", Path(args.db) if args.db else work / "db.h5"
    rng = np.random.default_rng(0)
    ks = [synthetic_prnu((rows, cols), rng, std=0.008) for _ in range(args.cameras)]  # deterministic
    if not db.exists():
        print(f"storing {args.cameras} fingerprints of {cols}x{rows} in {db} ...", flush=True)
        store = FingerprintStore(db)
        noise = np.random.default_rng(1)
        for c, k in enumerate(ks):
            estimate = k + noise.normal(0, 0.004, k.shape).astype(np.float32)
            if not args.plain_fingerprints:
                estimate = postprocess(estimate, ResidualParams())
            store.add(f"SYN-{c:02d}", estimate, {"camera": f"SYN-{c:02d}", "synthetic": True})
    if not evidence.exists():
        print(f"generating {args.images} images of {cols}x{rows} at quality {args.quality} ...", flush=True)
        import cv2

        evidence.mkdir(parents=True)
        scenes = np.random.default_rng(2)
        for i in range(args.images):
            scene = cv2.resize(dead_leaves((rows // 4, cols // 4), scenes, n=300), (cols, rows))
            cam = int(scenes.integers(args.cameras))
            img = expose(scene, ks[cam], scenes)
            (evidence / f"img_{i:05d}_SYN-{cam:02d}.jpg").write_bytes(encode_jpeg(img, args.quality))
    del ks
    if args.generate_only:
        return
    n = len(list(evidence.glob("*.jpg")))
    spn = [sys.executable, "-m", "spncli"]
    results = []
    for restored in [True] if args.only_restored else [False, True] if args.restore else [False]:
        settings = [(w, b, p) for p in args.prescreen.split(",") for b in args.worker_memory.split(",")
                    for w in map(int, args.workers.split(","))]  # fmt: skip
        for w, budget, pre in settings:
            case = work / f"case-w{w}-{budget}-p{pre}-{'restored' if restored else 'classic'}-{time.time_ns()}"
            cmd = [*spn, "match", str(evidence), "--db", str(db), "--case", str(case), "--workers", str(w),
                   "--worker-memory", budget, "--prescreen", pre]  # fmt: skip
            if restored:
                cmd.append("--restore")
            seconds, peak, client, worker, pss, cpu, steady, first = run(cmd, case / "results.jsonl")
            rows_ = [json.loads(x) for x in (case / "results.jsonl").read_text().splitlines()]
            hits = sum(r["decision"] == "consistent" and r["image"].endswith(f"{r['camera']}.jpg") for r in rows_)
            results.append(
                {
                    "residual": "restored" if restored else "classic",
                    "workers": w,
                    "worker_memory": budget,
                    "prescreen": pre,
                    "images": n,
                    "cameras": args.cameras,
                    "seconds": round(seconds, 1),
                    "images_per_second": round(n / seconds, 3),
                    "steady_images_per_second": None if steady is None else round(steady, 3),
                    "seconds_to_first_image": None if first is None else round(first, 1),
                    "cpu_seconds": round(cpu, 1),
                    "images_per_cpu_second_x2": round(2 * n / cpu, 3),
                    "peak_rss_mib": round(peak),
                    "peak_pss_mib": round(pss),
                    "client_peak_mib": round(client),
                    "largest_worker_peak_mib": round(worker),
                    "true_matches": hits,
                }
            )
            print(json.dumps(results[-1]), flush=True)
    print("\n| residual | workers | --worker-memory | --prescreen | images | cameras | seconds | images/s "
          "| steady images/s (first to last result) | seconds to the first result "
          "| CPU s (all processes) | images per CPU-second x 2 "
          "| peak PSS (MiB, all processes) | peak RSS (MiB, all processes) | client peak RSS "
          "| largest worker peak RSS |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['residual']} | {r['workers']} | {r['worker_memory']} | {r['prescreen']} | {r['images']} | "
            f"{r['cameras']} | {r['seconds']} | {r['images_per_second']} | {r['steady_images_per_second']} | "
            f"{r['seconds_to_first_image']} | "
            f"{r['cpu_seconds']} | {r['images_per_cpu_second_x2']} | "
            f"{r['peak_pss_mib']} | {r['peak_rss_mib']} | "
            f"{r['client_peak_mib']} | "
            f"{r['largest_worker_peak_mib']} |"
        )


if __name__ == "__main__":
    main()
