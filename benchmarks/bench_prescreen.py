"""Pre-screen recall and query time at 10,000 synthetic cameras, against brute-force exact PCE.

Cameras: i.i.d. Gaussian PRNU of ``--size`` x ``--size`` pixels, regenerated from a seed
per camera (only the pre-screen index is kept: one bit per pixel). Queries: residuals
``a K + noise`` of ``--queries`` random cameras with the PCE drawn log-uniformly in
[30, 3000]; every fourth query is a centre crop (a smaller image).

Brute force: every query against every camera at zero shift. The PCE's lower bound
``c0² (N - 121) / (E - c0²)`` (``c0`` the correlation, ``E`` the total correlation energy
by Parseval; the excluded neighbourhood holds at least ``c0²``) is computed for all pairs
with two matrix products per block of cameras; the exact PCE (:func:`spncli.pce.pce_direct`)
is computed for every pair whose bound exceeds 6, and for every query's source camera.
A pair whose bound is at most 6 can exceed 60 only if the 120 other excluded shifts held
over 5/6 of the correlation energy of all other shifts (the script prints the largest share
seen among the exact pairs). Recall = the share of pairs with exact PCE > 60 whose camera is
among the first ``top`` candidates.

Run: python benchmarks/bench_prescreen.py [--cameras 10000] [--queries 100] [--size 512]
(about 7 CPU minutes, 15 wall minutes on a busy 2-core machine, 1 GB; the brute force dominates:
``--cameras 2000`` for a quick look).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from spncli.geometry import centre_crop, crop_offsets
from spncli.pce import EXCLUDE, FingerprintSpectrum, ResidualSpectrum, pce_direct
from spncli.prescreen import PrescreenIndex

BLOCK = 64


def fingerprint(seed: int, camera: int, shape: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng([seed, camera]).standard_normal(shape, dtype=np.float32)


def make_queries(args, shape):
    rng = np.random.default_rng([args.seed, 1 << 30])
    n = shape[0] * shape[1]
    sources = rng.choice(args.cameras, args.queries, replace=False)
    targets = np.exp(rng.uniform(np.log(30), np.log(3000), args.queries))
    queries = []
    for i, (src, target) in enumerate(zip(sources, targets)):
        w = (np.sqrt(target / n) * fingerprint(args.seed, int(src), shape) + rng.standard_normal(shape)).astype(
            np.float32
        )
        if i % 4 == 3:
            w = np.ascontiguousarray(centre_crop(w, (shape[0] * 3 // 4, shape[1] * 3 // 4)))
        queries.append((int(src), w))
    return queries


def brute_force(args, shape, queries, index: PrescreenIndex):
    """Exact PCE > 60 pairs; builds the index on the way (one pass over the cameras)."""
    rows, cols = shape
    n = rows * cols
    q = len(queries)
    canvas = np.zeros((q, n), np.float32)  # each residual placed where the zero-shift PCE reads it
    weighted_power = np.empty((q, rows * (cols // 2 + 1)), np.float32)
    conj, peaks = [], []
    weights = np.full(cols // 2 + 1, 2.0, np.float32)
    weights[0] = 1
    if cols % 2 == 0:
        weights[-1] = 1
    for i, (_, w) in enumerate(queries):
        peak = crop_offsets(shape, w.shape)
        view = canvas[i].reshape(shape)
        view[peak[0] : peak[0] + w.shape[0], peak[1] : peak[1] + w.shape[1]] = w
        al = ResidualSpectrum(w).aligned(0, shape)
        conj.append(al.conj_spectrum)
        peaks.append(peak)
        weighted_power[i] = (np.abs(al.conj_spectrum) ** 2 * weights).ravel()
    source = {src: i for i, (src, _) in enumerate(queries)}
    exact: dict[tuple[int, int], float] = {}
    share = 0.0
    for b0 in range(0, args.cameras, BLOCK):
        cams = range(b0, min(args.cameras, b0 + BLOCK))
        ks = np.stack([fingerprint(args.seed, c, shape) for c in cams])
        spectra = []
        for c, k in zip(cams, ks):
            index.add(f"cam{c:05d}", k)
            spectra.append(FingerprintSpectrum(k))
        power = np.stack([(np.abs(s.spectrum) ** 2).ravel() for s in spectra])
        c0 = ks.reshape(len(ks), n) @ canvas.T  # (cameras, queries)
        energy = (power @ weighted_power.T).astype(np.float64) / n
        c0 = c0.astype(np.float64)
        bound = np.where(c0 > 0, c0 * c0 * (n - EXCLUDE * EXCLUDE) / np.maximum(energy - c0 * c0, 1e-30), 0.0)
        flagged = set(zip(*np.nonzero(bound > 6)))
        flagged |= {(c - b0, source[c]) for c in cams if c in source}
        for ci, qi in flagged:
            value, peak_value = pce_direct(conj[qi], spectra[ci], peaks[qi])
            exact[(int(cams[ci]), int(qi))] = value
            if value > 0:  # share of the off-peak energy that the excluded shifts held
                off = energy[ci, qi] - peak_value**2
                rest = peak_value**2 * (n - EXCLUDE * EXCLUDE) / value
                share = max(share, 1.0 - rest / off if off > 0 else 0.0)
    return exact, share


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cameras", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--size", type=int, default=512, help="fingerprint side in pixels")
    ap.add_argument("--top", default="10,20,50,100,200", help="candidate list lengths whose recall is reported")
    ap.add_argument("--seed", type=int, default=2010)
    args = ap.parse_args()
    shape = (args.size, args.size)
    tops = [int(t) for t in args.top.split(",")]
    queries = make_queries(args, shape)
    index = PrescreenIndex()
    t = time.perf_counter()
    exact, share = brute_force(args, shape, queries, index)
    print(
        f"{args.cameras} cameras of {args.size}x{args.size}, {args.queries} queries; brute force and index built "
        f"in {time.perf_counter() - t:.0f} s; {len(exact)} pairs computed exactly; "
        f"index {index.nbytes / 2**20:.1f} MiB "
        f"({index.nbytes // args.cameras} bytes per camera; float32 fingerprints: {4 * shape[0] * shape[1]} bytes)"
    )
    print(f"largest share of off-peak energy in the excluded shifts among exact pairs: {share:.4f}")
    times, ranks = [], {}
    for qi, (_, w) in enumerate(queries):
        t = time.perf_counter()
        ranked = index.query(w, top=None)
        times.append(time.perf_counter() - t)
        ranks[qi] = {int(c.camera[3:]): r for r, c in enumerate(ranked)}
    t = time.perf_counter()
    index.query(queries[0][1], top=100)
    t100 = time.perf_counter() - t
    times.sort()
    print(
        f"query time (after the residual): median {times[len(times) // 2]:.3f} s, max {times[-1]:.3f} s "
        f"(full ranking); top=100: {t100:.3f} s"
    )
    above = [(cam, qi, v) for (cam, qi), v in exact.items() if v > 60]
    sources = sum(1 for cam, qi, _ in above if cam == queries[qi][0])
    print(f"pairs with exact PCE > 60: {len(above)} ({sources} query-source pairs, {len(above) - sources} others)")
    bands = [(60, 120), (120, 300), (300, np.inf)]
    for top in tops:
        hit = [ranks[qi][cam] < top for cam, qi, _ in above]
        per_band = []
        for lo, hi in bands:
            sel = [h for h, (_, _, v) in zip(hit, above) if lo < v <= hi]
            per_band.append(f"PCE {lo}-{hi}: {sum(sel)}/{len(sel)}")
        recall = sum(hit) / max(len(hit), 1)
        print(f"top={top} ({top / args.cameras:.2%} of the cameras): recall {recall:.2%}; " + ", ".join(per_band))
    print("top=None: every camera is a candidate (exact by construction)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
