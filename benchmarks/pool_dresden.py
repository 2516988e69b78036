"""Pooled versus best single-image PCE on the Dresden `_1` units' natural images re-compressed at quality 50.

Fingerprints from each unit's 10 flat-fields, centre 1024x1024; each unit's natural images re-compressed
in memory at JPEG quality 50 (nothing written); PCE of each image alone and of their pooled ML estimate.

    PYTHONPATH=$PWD python benchmarks/pool_dresden.py [--data ../shared/data/dresden-nikon] [--quality 50]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spncli.evaluation import degraded_in_memory
from spncli.evidence import load_image
from spncli.identify import Matcher, MatchSettings, build_fingerprint
from spncli.pooling import pool_match
from spncli.store import Fingerprint, array_sha256

ROOT = Path(__file__).resolve().parents[1]


def camera_of(path: Path) -> str:
    return path.stem.rsplit("_", 1)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "dresden-nikon")
    ap.add_argument("--quality", type=int, default=50, help="0: the images as they are, not re-compressed")
    ap.add_argument("--crop", type=int, default=1024)
    ap.add_argument("--units", default="_1")
    args = ap.parse_args()
    crop = (args.crop, args.crop)
    flats = sorted((args.data / "ff-jpg").glob("*"))
    naturals = sorted((args.data / "nat-jpg").glob("*"))
    cams = sorted({camera_of(p) for p in flats if camera_of(p).endswith(args.units)})
    fps = []
    for cam in cams:
        k, meta = build_fingerprint([p for p in flats if camera_of(p) == cam], cam, crop=crop)
        fps.append(Fingerprint(cam, k, array_sha256(k), meta))
    matcher = Matcher(fps, MatchSettings(crop=crop))
    rows = []
    for cam in cams:
        probes = [
            degraded_in_memory(p, args.quality) if args.quality else load_image(p)
            for p in naturals
            if camera_of(p) == cam
        ]
        if len(probes) < 2:
            print(f"{cam}: {len(probes)} natural image(s), nothing to pool")
            continue
        rec = next(r for r in pool_match(probes, matcher, singles=True) if r["camera"] == cam)
        plain = next(r for r in pool_match(probes, matcher, weighting="none") if r["camera"] == cam)
        rows.append(
            {
                "camera": cam,
                "n_images": rec["n_images"],
                "single_pce": rec["single_pce"],
                "best_single_pce": rec["best_single_pce"],
                "pooled_pce": rec["pce"],
                "pooled_p_fa": rec["p_fa"],
                "pooled_above_best": rec["pce"] > rec["best_single_pce"],
                "pooled_unweighted_pce": plain["pce"],
            }
        )
    quality = args.quality or "as taken"
    print(f"quality {quality}, centre {args.crop}x{args.crop}, fingerprints from 10 flat-fields per unit")
    print(f"{'camera':<14} {'n':>2} {'best single':>12} {'pooled':>10} {'pooled p_fa':>12} {'unweighted':>11}  singles")
    for r in rows:
        singles = ", ".join(f"{v:.1f}" for v in r["single_pce"])
        print(
            f"{r['camera']:<14} {r['n_images']:>2} {r['best_single_pce']:>12.1f} {r['pooled_pce']:>10.1f} "
            f"{r['pooled_p_fa']:>12.3g} {r['pooled_unweighted_pce']:>11.1f}  {singles}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
