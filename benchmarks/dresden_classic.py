"""Classic pipeline on ../shared/data/dresden-nikon: PCE matrix, AUC, TPR, timing.

Run: python benchmarks/dresden_classic.py [--data ../shared/data/dresden-nikon]
Prints the zero-shift PCE matrix at centre crops 2000x3008 and 512x512 and
compares it with ../shared/reference/pce-zero-shift.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from spncli.evidence import load_image
from spncli.fingerprint import FingerprintAccumulator
from spncli.geometry import centre_crop
from spncli.pce import FingerprintSpectrum, score
from spncli.residual import extract_residual


def auc(pos, neg):
    pos, neg = np.asarray(pos), np.asarray(neg)
    return float(
        ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/dresden-nikon")
    ap.add_argument("--reference", default="../shared/reference/pce-zero-shift.json")
    args = ap.parse_args()
    data = Path(args.data)
    flats = sorted((data / "ff-jpg").glob("*.JPG"))
    nats = sorted((data / "nat-jpg").glob("*.JPG"))
    cams = sorted({p.stem.rsplit("_", 1)[0] for p in flats})
    big = (2000, 3008)
    t0 = time.perf_counter()
    fps = {}
    for cam in cams:
        acc = FingerprintAccumulator()
        for p in flats:
            if p.stem.rsplit("_", 1)[0] == cam:
                ev = load_image(p)
                acc.add(np.ascontiguousarray(centre_crop(ev.pixels, big)))
        fps[cam] = acc.finalize()
    print(f"fingerprints: {time.perf_counter() - t0:.1f} s")
    ref = json.loads(Path(args.reference).read_text()) if Path(args.reference).exists() else None
    for label, size in (("centre_2000x3008", big), ("centre_512x512", (512, 512))):
        spectra = {c: FingerprintSpectrum(centre_crop(k, size)) for c, k in fps.items()}
        mat = np.zeros((len(cams), len(nats)))
        for j, p in enumerate(nats):
            ev = load_image(p)
            w = extract_residual(np.ascontiguousarray(centre_crop(ev.pixels, size)))
            for i, c in enumerate(cams):
                mat[i, j] = score(w, spectra[c]).pce
        truth = np.array([[p.stem.rsplit("_", 1)[0] == c for p in nats] for c in cams])
        pos, neg = mat[truth], mat[~truth]
        top1 = sum(cams[int(np.argmax(mat[:, j]))] == nats[j].stem.rsplit("_", 1)[0] for j in range(len(nats)))
        print(
            f"\n{label}: AUC {auc(pos, neg):.3f}  top-1 {top1}/{len(nats)}  matching median {np.median(pos):.1f} "
            f"[min {pos.min():.1f}]  non-matching max {neg.max():.1f}  TPR@60 {int((pos > 60).sum())}/{pos.size}  "
            f"FP@60 {int((neg > 60).sum())}/{neg.size}"
        )
        np.set_printoptions(linewidth=200, suppress=True, precision=1)
        print(mat)
        if ref and label in ref:
            r = np.array(ref[label])
            rpos = r[truth]
            print(
                f"reference: AUC {auc(rpos, r[~truth]):.3f}, matching median {np.median(rpos):.1f}; "
                f"ours/reference matching PCE ratio median {np.median(pos / np.where(rpos == 0, np.nan, rpos)):.2f}"
            )


if __name__ == "__main__":
    main()
