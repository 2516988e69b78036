"""Throughput of the classic pipeline, side by side with the reference implementation.

Measures, each in a fresh child process so that its peak memory is its own:

1. the residual of one image at 6, 12 and 48 MP, in-process (load + extract, seconds; peak RSS), set
   up as ``spn``'s in-process runner sets itself up (one malloc arena, freed memory reused, a thread per
   core) and reading the decoded samples as ``spn extract`` does;
2. ``spn extract`` of that image as a whole process (wall seconds, peak RSS from ``wait4``);
3. the reference implementation's process for the same image (``--reference``), run from
   ``../shared/reference/prnu-python`` in its own virtual environment (``--ref-python``);
4. ``spn match`` of 4 Dresden images (2000x3008) against 6 cameras as a whole process, and the
   reference doing the same work in one process (its ``extract_single`` of each image, then its
   cross-correlation and the zero-shift PCE against each of the same 6 fingerprints);
5. one 12 MP residual against 50 synthetic cameras, in-process: the scoring loop's seconds, the
   process's resident memory before it and its peak, and the loop's own peak allocation
   (tracemalloc), for a landscape and a portrait probe; the reference's cross-correlation plus
   zero-shift PCE (Goljan et al. 2009, 11x11 exclusion) for ``--ref-pairs`` pairs, extrapolated.

Images: the Dresden Nikon D70 natural image (2000x3008) and the same content resized to
3000x4000 and 6000x8000 (JPEG quality 92); synthetic content when ../shared/data is absent.
``--root`` times another checkout of the package (e.g. an export of an older commit) with the same
script. Timings on a shared machine are noisy: the script reports the best and median of
``--repeat`` runs, and each process's CPU time (user + system, from ``wait4``) beside its wall time.
The package's children run with their bytecode cached (``PYTHONPYCACHEPREFIX`` in a temporary
folder, warmed once), as an installed package has it: a checkout run with
``PYTHONDONTWRITEBYTECODE=1`` recompiles every module at each start (about 0.15 s).

Run: python benchmarks/bench_throughput.py [--sizes 6,12,48] [--reference] [--ref-sizes 6,12]
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

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DRESDEN_IMAGE = SHARED / "data" / "dresden-nikon" / "nat-jpg" / "Nikon_D70_0_19445.JPG"
REFERENCE = SHARED / "reference" / "prnu-python"
SIZES = {6: (2000, 3008), 12: (3000, 4000), 48: (6000, 8000)}

RESIDUAL_CHILD = r"""
import json, os, resource, sys, time
from spncli.batch import one_malloc_arena, reuse_freed_memory
one_malloc_arena(); reuse_freed_memory()  # as spn's in-process runner
from spncli.evidence import load_image
from spncli.residual import extract_residual, set_channel_threads
set_channel_threads(len(os.sched_getaffinity(0)))
path, repeat = sys.argv[1], int(sys.argv[2])
load, extract = [], []
for _ in range(repeat):
    t = time.perf_counter(); ev = load_image(path, max_pixels=10**9); t1 = time.perf_counter()
    w = extract_residual(ev.denoiser_samples()); t2 = time.perf_counter()
    load.append(t1 - t); extract.append(t2 - t1)
    del ev, w
print(json.dumps({"load": load, "extract": extract}))
"""

REFERENCE_CHILD = r"""
import json, sys, time
import numpy as np
from PIL import Image
import prnu
path = sys.argv[1]
t = time.perf_counter(); im = np.asarray(Image.open(path)); t1 = time.perf_counter()
w = prnu.extract_single(im); t2 = time.perf_counter()
print(json.dumps({"load": [t1 - t], "extract": [t2 - t1]}))
"""

PCE_CHILD = r"""
import json, resource, sys, time, tracemalloc
import numpy as np
from spncli import pce
rows, cols, cameras, repeat = (int(x) for x in sys.argv[1:5])
rng = np.random.default_rng(0)
k0 = rng.standard_normal((rows, cols), dtype=np.float32)
t = time.perf_counter()
spectra = [pce.FingerprintSpectrum(np.roll(k0, 97 * i, axis=1) if i else k0) for i in range(cameras)]
build = time.perf_counter() - t
w = (0.02 * k0 + rng.standard_normal((rows, cols), dtype=np.float32)).astype(np.float32)
out = {"build_s": build}
def loop(probe_w):
    probe = pce.ResidualSpectrum(probe_w) if hasattr(pce, "ResidualSpectrum") else probe_w
    return [pce.score(probe, s) for s in spectra]
for label, probe_w in (("landscape", w), ("portrait", np.ascontiguousarray(np.rot90(w)))):
    rss = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
    times, cpu = [], []
    for _ in range(repeat):  # timed without tracemalloc (it slows many small allocations)
        t, c = time.perf_counter(), time.process_time()
        scores = loop(probe_w)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    tracemalloc.start()
    loop(probe_w)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out[label] = {
        "times": times,
        "cpu": cpu,
        "loop_peak_alloc_mib": peak / 2**20,
        "rss_before_mib": rss / 2**20,
        "pce_first": scores[0].pce,
        "pce_max_other": max(s.pce for s in scores[1:]),
    }
out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""

REFERENCE_PCE_CHILD = r"""
import json, resource, sys, time
import numpy as np
import prnu
rows, cols, pairs = (int(x) for x in sys.argv[1:4])
rng = np.random.default_rng(0)
k = rng.standard_normal((rows, cols)).astype(np.float32)
w = (0.02 * k + rng.standard_normal((rows, cols))).astype(np.float32)
times = []
for i in range(pairs):
    t = time.perf_counter()
    cc = prnu.crosscorr_2d(np.roll(k, 97 * i, axis=1), w.copy())
    # Goljan's PCE at zero shift (the reference README's protocol): the peak of crosscorr_2d's
    # flipped correlation at zero shift is its last element; 11x11 neighbourhood excluded.
    peak = (cc.shape[0] - 1, cc.shape[1] - 1)
    ri = np.arange(peak[0] - 5, peak[0] + 6) % cc.shape[0]
    ci = np.arange(peak[1] - 5, peak[1] + 6) % cc.shape[1]
    near = np.square(cc[np.ix_(ri, ci)].astype(np.float64)).sum()
    energy = (np.square(cc.astype(np.float64)).sum() - near) / (cc.size - 121)
    value = np.sign(cc[peak]) * cc[peak] ** 2 / energy
    times.append(time.perf_counter() - t)
print(json.dumps({"times": times, "pce_first": float(value) if pairs == 1 else None,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


LAST_CPU = [0.0]
"""CPU seconds (user + system) of the last child :func:`run_child` ran."""


def run_child(cmd: list[str], *, cwd: Path | None = None, env: dict | None = None) -> tuple[dict | None, float, float]:
    """Run a process; return (its last stdout line as JSON or None, wall seconds, peak RSS MiB via wait4).

    The child's CPU seconds are left in ``LAST_CPU[0]``.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        LAST_CPU[0] = usage.ru_utime + usage.ru_stime
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, cmd[:4]))}... exit {proc.returncode}: {err.read()[-2000:]}")
        lines = out.read().strip().splitlines()
    try:
        data = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        data = None
    return data, wall, usage.ru_maxrss / 1024


def make_images(tmp: Path, sizes: list[int]) -> dict[int, Path]:
    """JPEGs of 6, 12, 48 MP (Dresden content resized, or synthetic), written into ``tmp``."""
    import cv2
    import numpy as np

    if DRESDEN_IMAGE.exists():
        base = cv2.imread(str(DRESDEN_IMAGE), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    else:
        from spncli.synthetic import dead_leaves

        base = np.clip(dead_leaves(SIZES[6], np.random.default_rng(0)), 0, 255).astype(np.uint8)
    out = {}
    for mp in sizes:
        rows, cols = SIZES[mp]
        if mp == 6 and DRESDEN_IMAGE.exists():
            out[mp] = DRESDEN_IMAGE
            continue
        img = base if base.shape[:2] == (rows, cols) else cv2.resize(base, (cols, rows), interpolation=cv2.INTER_CUBIC)
        path = tmp / f"image_{mp}mp.jpg"
        path.write_bytes(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes())
        out[mp] = path
    return out


def _stats(values: list[float]) -> str:
    v = sorted(values)
    return f"best {v[0]:.3f} s, median {v[len(v) // 2]:.3f} s"


def bench_residuals(args, images: dict[int, Path], env: dict) -> None:
    for mp, path in images.items():
        shape = f"{SIZES[mp][0]}x{SIZES[mp][1]}"
        cmd = [sys.executable, "-c", RESIDUAL_CHILD, str(path), str(args.repeat)]
        r, _, rss = run_child(cmd, env=env, cwd=args.root)
        print(
            f"[spn] residual {mp} MP ({shape}) in-process: extract {_stats(r['extract'])}, "
            f"load {_stats(r['load'])}; peak RSS {rss:.0f} MiB"
        )
        walls, peaks, cpus = [], [], []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as out:
                cmd = [sys.executable, "-m", "spncli", "--max-pixels", str(10**9), "extract", str(path), "-o", out]
                _, wall, peak = run_child(cmd, env=env, cwd=args.root)
            walls.append(wall)
            peaks.append(peak)
            cpus.append(LAST_CPU[0])
        print(f"[spn] `spn extract` {mp} MP as a process: {_stats(walls)}; CPU {_stats(cpus)}; "
              f"peak RSS {max(peaks):.0f} MiB")
        if args.reference and mp in args.ref_sizes:
            ref_walls, ref_peaks, inner, ref_cpus = [], [], [], []
            for _ in range(args.ref_repeat):
                r, wall, peak = run_child([args.ref_python, "-c", REFERENCE_CHILD, str(path)], cwd=REFERENCE)
                ref_walls.append(wall)
                ref_peaks.append(peak)
                ref_cpus.append(LAST_CPU[0])
                inner.append(r["extract"][0])
            print(
                f"[reference] {mp} MP as a process: {_stats(ref_walls)} (extract_single {_stats(inner)}); "
                f"CPU {_stats(ref_cpus)}; peak RSS {max(ref_peaks):.0f} MiB; spn process faster "
                f"x{min(ref_walls) / min(walls):.1f} by wall time, x{min(ref_cpus) / min(cpus):.1f} by CPU time"
            )


MATCH_IMAGES = ("Nikon_D70_0_19445", "Nikon_D70_0_19593", "Nikon_D70_1_20543", "Nikon_D70s_0_21853")

REFERENCE_MATCH_CHILD = r"""
import json, sys, time
import numpy as np
from PIL import Image
import prnu
folder, images = sys.argv[1], sys.argv[2:]
ks = [np.load(f"{folder}/k{i}.npy") for i in range(6)]
out = []
for path in images:
    w = prnu.extract_single(np.asarray(Image.open(path)))
    for k in ks:
        cc = prnu.crosscorr_2d(k, w)
        peak = (cc.shape[0] - 1, cc.shape[1] - 1)  # zero shift (see REFERENCE_PCE_CHILD)
        ri = np.arange(peak[0] - 5, peak[0] + 6) % cc.shape[0]
        ci = np.arange(peak[1] - 5, peak[1] + 6) % cc.shape[1]
        near = np.square(cc[np.ix_(ri, ci)].astype(np.float64)).sum()
        energy = (np.square(cc.astype(np.float64)).sum() - near) / (cc.size - 121)
        out.append(float(np.sign(cc[peak]) * cc[peak] ** 2 / energy))
print(json.dumps({"pce": out}))
"""


def bench_match(args, env: dict) -> None:
    """``spn match`` of 4 Dresden 2000x3008 images against 6 cameras, and the reference's same work."""
    import numpy as np

    images = [DRESDEN_IMAGE.parent / f"{n}.JPG" for n in MATCH_IMAGES]
    if not all(p.exists() for p in images):
        print("[match] skipped: the Dresden images are absent")
        return
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(1)
        ks = [rng.standard_normal((2000, 3008), dtype=np.float32) * np.float32(0.01) for _ in range(6)]
        for i, k in enumerate(ks):
            np.save(f"{tmp}/k{i}.npy", k)
        make = ("import sys, numpy as np; from spncli.store import FingerprintStore; "
                "s = FingerprintStore(sys.argv[1]); "
                "[s.add(f'cam{i}', np.load(f'{sys.argv[2]}/k{i}.npy'), {'synthetic': True}) for i in range(6)]")
        run_child([sys.executable, "-c", make, f"{tmp}/db.h5", tmp], env=env, cwd=args.root)
        cmd = [sys.executable, "-m", "spncli", "match", *map(str, images), "--db", f"{tmp}/db.h5", "-f", "csv"]
        walls, cpus, peaks = [], [], []
        for _ in range(args.repeat):
            _, wall, peak = run_child(cmd, env=env, cwd=args.root)
            walls.append(wall)
            cpus.append(LAST_CPU[0])
            peaks.append(peak)
        print(f"[spn] `spn match` 4 images x 6 cameras (2000x3008) as a process: {_stats(walls)}; "
              f"CPU {_stats(cpus)}; peak RSS {max(peaks):.0f} MiB")
        if args.reference:
            _, wall, peak = run_child([args.ref_python, "-c", REFERENCE_MATCH_CHILD, tmp, *map(str, images)],
                                      cwd=REFERENCE)  # fmt: skip
            cpu = LAST_CPU[0]
            print(f"[reference] the same work as one process: {wall:.1f} s, CPU {cpu:.1f} s, peak RSS {peak:.0f} MiB; "
                  f"spn faster x{wall / min(walls):.1f} by wall time, x{cpu / min(cpus):.1f} by CPU time")


def bench_pce(args, env: dict) -> None:
    rows, cols = SIZES[12]
    cmd = [sys.executable, "-c", PCE_CHILD, str(rows), str(cols), str(args.cameras), str(args.repeat)]
    r, _, _ = run_child(cmd, env=env, cwd=args.root)
    print(f"[spn] {args.cameras} synthetic 12 MP fingerprints: spectra built in {r['build_s']:.1f} s")
    for label in ("landscape", "portrait"):
        p = r[label]
        n = args.cameras
        print(
            f"[spn] one 12 MP {label} residual vs {n} cameras (zero shift): {_stats(p['times'])} "
            f"({min(p['times']) / n * 1e3:.0f} ms per camera; CPU {min(p['cpu']) / n * 1e3:.0f} ms); "
            f"RSS before {p['rss_before_mib']:.0f} MiB, "
            f"loop peak allocation {p['loop_peak_alloc_mib']:.0f} MiB; process peak RSS {r['peak_rss_mib']:.0f} MiB; "
            f"PCE own {p['pce_first']:.0f}, others max {p['pce_max_other']:.1f}"
        )
    if args.reference and args.ref_pairs:
        cmd = [args.ref_python, "-c", REFERENCE_PCE_CHILD, str(rows), str(cols), str(args.ref_pairs)]
        r, _, _ = run_child(cmd, cwd=REFERENCE)
        per = sorted(r["times"])[len(r["times"]) // 2]
        print(
            f"[reference] cross-correlation + zero-shift PCE, 12 MP: median {per:.2f} s per pair over "
            f"{args.ref_pairs} pairs -> {per * args.cameras:.0f} s for {args.cameras} cameras (extrapolated); "
            f"peak RSS {r['peak_rss_mib']:.0f} MiB"
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="6,12,48", help="megapixel sizes of the residual benchmarks (6, 12, 48)")
    ap.add_argument("--cameras", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: residual, match, pce")
    ap.add_argument("--root", type=Path, default=ROOT, help="package checkout to time [default: this one]")
    ap.add_argument("--reference", action="store_true", help="also time the reference implementation")
    ap.add_argument("--ref-python", default="/work/refvenv/bin/python", help="the reference's virtual environment")
    ap.add_argument("--ref-sizes", default="6,12", help="sizes at which the reference runs (48 MP: ~6 GB, minutes)")
    ap.add_argument("--ref-repeat", type=int, default=1)
    ap.add_argument("--ref-pairs", type=int, default=3, help="reference PCE pairs timed (extrapolated to --cameras)")
    args = ap.parse_args()
    args.ref_sizes = {int(x) for x in args.ref_sizes.split(",") if x}
    sizes = [int(x) for x in args.sizes.split(",") if x]
    skip = set(args.skip.split(","))
    args.root = args.root.resolve()
    pycache = tempfile.mkdtemp(prefix="spn-pycache-")  # bytecode cached, as in an installed package
    env = {**os.environ, "PYTHONPATH": str(args.root), "PYTHONPYCACHEPREFIX": pycache}  # children run in --root
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    run_child([sys.executable, "-m", "spncli", "--help"], env=env, cwd=args.root)  # compiles once
    print(f"package: {args.root}; cpu cores: {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}")
    if "residual" not in skip:
        with tempfile.TemporaryDirectory() as tmp:
            bench_residuals(args, make_images(Path(tmp), sizes), env)
    if "match" not in skip:
        bench_match(args, env)
    if "pce" not in skip:
        bench_pce(args, env)
    print(f"load average at the end {os.getloadavg()[0]:.1f} (2 cores shared: timings are noisy)")


if __name__ == "__main__":
    main()
