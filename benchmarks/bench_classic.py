"""Time and peak memory of the classic pipeline at 2000x3008 (6 MP).

Each measurement runs in a fresh child process so that its peak RSS is its
own. Uses ../shared/data/dresden-nikon when present, else synthetic images
of the same size.

Run: python benchmarks/bench_classic.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRESDEN = ROOT.parent / "shared" / "data" / "dresden-nikon"

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np
from spncli.evidence import load_image
from spncli.residual import extract_residual
from spncli.fingerprint import FingerprintAccumulator
from spncli.pce import FingerprintSpectrum, score
task, files, repeat = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
times = []
if task == "residual":
    for _ in range(repeat):
        t = time.perf_counter()
        w = extract_residual(load_image(files[0]).pixels)
        times.append(time.perf_counter() - t)
elif task == "pce":
    ev = load_image(files[0]); w = extract_residual(ev.pixels)
    k = np.random.default_rng(0).standard_normal(w.shape).astype(np.float32)
    t = time.perf_counter(); spec = FingerprintSpectrum(k); first = time.perf_counter() - t
    for _ in range(repeat):
        t = time.perf_counter(); s = score(w, spec); times.append(time.perf_counter() - t)
    print(json.dumps({"fingerprint_fft_s": first}), file=sys.stderr)
elif task == "fingerprint":
    for _ in range(max(1, repeat // 3)):
        t = time.perf_counter()
        acc = FingerprintAccumulator()
        for f in files:
            acc.add(load_image(f).pixels)
        k = acc.finalize(); times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"task": task, "times": times, "peak_rss_mib": peak}))
"""


def _inputs(tmp: Path) -> list[str]:
    flats = sorted((DRESDEN / "ff-jpg").glob("Nikon_D70_0_*.JPG"))
    if len(flats) >= 10:
        return [str(p) for p in flats[:10]]
    import numpy as np

    from spncli.synthetic import encode_jpeg, expose, flat_field, synthetic_prnu

    rng = np.random.default_rng(0)
    k = synthetic_prnu((2000, 3008), rng)
    out = []
    for i in range(10):
        p = tmp / f"synthetic_{i}.jpg"
        p.write_bytes(encode_jpeg(expose(flat_field((2000, 3008), rng), k, rng), 93))
        out.append(str(p))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = _inputs(Path(tmp))
        source = "Dresden Nikon D70 flat-fields" if "Nikon" in files[0] else "synthetic 2000x3008 JPEGs"
        print(f"inputs: {source}; cpu cores: {os.cpu_count()}")
        targets = {"residual": (1.0, 500), "pce": (0.15, None), "fingerprint": (10.0, None)}
        for task in ("residual", "pce", "fingerprint"):
            res = subprocess.run(
                [sys.executable, "-c", CHILD, task, json.dumps(files), str(args.repeat)],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(res.stdout.strip().splitlines()[-1])
            times = sorted(r["times"])
            t_target, m_target = targets[task]
            label = {
                "residual": "residual of one 2000x3008 image (load + extract)",
                "pce": "one PCE at 2000x3008 (fingerprint FFT cached)",
                "fingerprint": "fingerprint of 10 images at 2000x3008",
            }[task]
            print(
                f"{label}: median {times[len(times) // 2]:.3f} s, best {times[0]:.3f} s "
                f"(target <= {t_target} s); peak RSS {r['peak_rss_mib']:.0f} MiB"
                + (f" (target <= {m_target} MB)" if m_target else "")
            )
            if res.stderr.strip():
                print("   ", res.stderr.strip())


if __name__ == "__main__":
    main()
