"""Restoration time and peak memory for 12 MP and 48 MP images (CPU; CUDA too when present).

Each size runs in a fresh child process so that its peak RSS is its own.
Run: python benchmarks/bench_restore.py [--sizes 3000x4000 6000x8000] [--tile 1024]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from spncli.evidence import decode
from spncli.restoration import load_restorer
from spncli.synthetic import encode_jpeg, synthetic_prnu
rows, cols = map(int, sys.argv[1].split("x")); device, tile, precision = sys.argv[2], int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
base = rng.uniform(60, 200, (rows // 8, cols // 8, 3)).astype(np.float32)
import cv2
img = cv2.resize(base, (cols, rows), interpolation=cv2.INTER_CUBIC)
img = np.clip(img * (1 + synthetic_prnu((rows, cols), rng)[:, :, None]) + rng.normal(0, 2, img.shape), 0, 255)
ev = decode(encode_jpeg(img.astype(np.uint8), 30), "bench.jpg")  # Q30: the network runs
del img, base
r = load_restorer(device=device)
if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
out, info = r.restore(ev, tile=tile, precision=precision)
assert info["network_applied"]
if device == "cuda":
    torch.cuda.synchronize()
sec = time.perf_counter() - t
res = {"size": sys.argv[1], "megapixels": rows * cols / 1e6, "device": device, "tile": tile,
       "precision": info["precision"], "seconds": round(sec, 2),
       "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
if device == "cuda":
    res["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
print(json.dumps(res))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", nargs="+", default=["3000x4000", "6000x8000"])
    ap.add_argument("--tile", type=int, default=1024)
    args = ap.parse_args()
    import torch

    devices = [("cpu", "fp32")] + (
        [("cuda", "fp16"), ("cuda", "bf16"), ("cuda", "fp32")] if torch.cuda.is_available() else []
    )
    print("| size | MP | device | precision | tile | seconds | peak RSS (MiB) | peak GPU (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for device, precision in devices:
            res = subprocess.run(
                [sys.executable, "-c", CHILD, size, device, str(args.tile), precision], capture_output=True, text=True
            )
            if res.returncode:
                print(f"| {size} | | {device} | {precision} | failed: {res.stderr.strip()[-300:]} |")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(
                f"| {r['size']} | {r['megapixels']:.0f} | {r['device']} | {r['precision']} | {r['tile']} | "
                f"{r['seconds']} | {r['peak_rss_mib']} | {r.get('peak_gpu_mib', '-')} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
