"""Pooled versus best single-image PCE on the Dresden natural images, per quality and pool.

Fingerprints from each of the six units' 10 flat-fields, centre 1024x1024 (all six scored: the other
units give the non-matching scores); each unit's natural images re-compressed in memory (nothing
written) at each quality; PCE of each image alone (plain match) and of the pooled statistic of the
unit's images (with ``--subsets``: of every subset of them, single images included), with variance
weighting and without, beside the maximum-likelihood estimate earlier versions pooled
(``Σ W_i I_i/σ_i² / Σ I_i²/σ_i²``, computed here only for the comparison).

The `_0` units chose the statistic and its weighting; the `_1` units (the default) chose nothing.

    PYTHONPATH=$PWD python benchmarks/pool_dresden.py [--units _1] [--qualities 0,70,50,30] [--subsets]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import numpy as np

from spncli.evaluation import degraded_in_memory
from spncli.evidence import load_image
from spncli.fingerprint import saturation_mask
from spncli.identify import Matcher, MatchSettings, build_fingerprint, cropped_pixels
from spncli.pce import score
from spncli.pooling import pooled_statistic
from spncli.residual import denoise_noise, postprocess, rgb_to_grey
from spncli.store import Fingerprint, array_sha256

ROOT = Path(__file__).resolve().parents[1]


def camera_of(path: Path) -> str:
    return path.stem.rsplit("_", 1)[0]


def ml_estimate(evidences, matcher: Matcher) -> np.ndarray:
    """The pooled ML estimate of earlier versions (for the comparison only)."""
    crop, params = matcher.settings.crop, matcher.settings.params
    num = den = None
    for ev in evidences:
        pixels = cropped_pixels(ev, crop)
        if num is None:
            num, den = np.zeros(pixels.shape), np.zeros(pixels.shape)
        for c in range(pixels.shape[2]):
            w = denoise_noise(pixels[:, :, c], params)
            weight = 1.0 / max(float(w.var(dtype=np.float64)), 1e-12)
            kept = np.where(saturation_mask(pixels[:, :, c], ev.saturation), np.float32(0), pixels[:, :, c])
            num[:, :, c] += weight * (w * kept)
            den[:, :, c] += weight * (kept * kept)
    with np.errstate(divide="ignore", invalid="ignore"):
        return postprocess(rgb_to_grey(np.where(den > 0, num / den, 0.0).astype(np.float32)), params)


def scores(k: np.ndarray, matcher: Matcher, own: str) -> tuple[float, float]:
    """PCE against the own camera and the largest against the others."""
    s = matcher.settings
    pce = {c: score(k, matcher.spectra[c], max_shift=s.max_shift, rotations=s.rotations).pce
           for c, _ in matcher.cameras}
    return pce[own], max(v for c, v in pce.items() if c != own)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "dresden-nikon")
    ap.add_argument("--qualities", default="0,50", help="comma-separated; 0: the images as published")
    ap.add_argument("--crop", type=int, default=1024)
    ap.add_argument("--units", default="_1")
    ap.add_argument("--subsets", action="store_true", help="every subset of each unit's images, not only all")
    ap.add_argument("--json", type=Path, help="write every pool's row here")
    args = ap.parse_args()
    start = time.perf_counter()
    crop = (args.crop, args.crop)
    flats = sorted((args.data / "ff-jpg").glob("*"))
    naturals = sorted((args.data / "nat-jpg").glob("*"))
    fps = []
    for cam in sorted({camera_of(p) for p in flats}):
        k, meta = build_fingerprint([p for p in flats if camera_of(p) == cam], cam, crop=crop)
        fps.append(Fingerprint(cam, k, array_sha256(k), meta))
    matcher = Matcher(fps, MatchSettings(crop=crop))
    rows = []
    qualities = [int(q) for q in args.qualities.split(",")]
    for quality in qualities:
        for cam in [fp.camera for fp in fps if fp.camera.endswith(args.units)]:
            probes = [degraded_in_memory(p, quality) if quality else load_image(p) for p in naturals
                      if camera_of(p) == cam]  # fmt: skip
            single = [next(r["pce"] for r in matcher.match(ev) if r["camera"] == cam) for ev in probes]
            sizes = range(1, len(probes) + 1) if args.subsets else [len(probes)] if len(probes) > 1 else []
            for n in sizes:
                for sub in itertools.combinations(range(len(probes)), n):
                    pool = [probes[i] for i in sub]
                    row = {"quality": quality, "camera": cam, "images": [probes[i].path for i in sub],
                           "single_pce": [round(single[i], 1) for i in sub], "best_single": max(single[i] for i in sub)}
                    for name, k in (("variance", pooled_statistic(pool, matcher)[0]),
                                    ("none", pooled_statistic(pool, matcher, weighting="none")[0]),
                                    ("ml_estimate", ml_estimate(pool, matcher))):  # fmt: skip
                        row[name], row[name + "_other_max"] = scores(k, matcher, cam)
                    rows.append(row)
    print(f"units {args.units}, centre {args.crop}x{args.crop}, fingerprints from 10 flat-fields per unit; PCE medians")
    print(f"{'quality':>12} {'images':>6} {'pools':>5} {'best single':>11} {'pooled':>8} {'unweighted':>10} "
          f"{'ML estimate':>11} {'>60 single/pooled/ML':>21} {'pooled>ML':>9} {'other max':>9}")  # fmt: skip
    groups: dict[tuple, list[dict]] = {}
    for r in rows:  # per quality (in the order given), then per pool size
        groups.setdefault((r["quality"], len(r["images"])), []).append(r)
    for (quality, n), group in sorted(groups.items(), key=lambda kv: (qualities.index(kv[0][0]), kv[0][1])):
        med = {k: statistics.median(r[k] for r in group) for k in ("best_single", "variance", "none", "ml_estimate")}
        above = "/".join(str(sum(r[k] > 60 for r in group)) for k in ("best_single", "variance", "ml_estimate"))
        wins = sum(r["variance"] > r["ml_estimate"] for r in group)
        other = max(max(r["variance_other_max"], r["none_other_max"], r["ml_estimate_other_max"]) for r in group)
        print(f"{quality or 'as published':>12} {n:>6} {len(group):>5} {med['best_single']:>11.1f} "
              f"{med['variance']:>8.1f} {med['none']:>10.1f} {med['ml_estimate']:>11.1f} {above:>21} {wins:>9} "
              f"{other:>9.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
