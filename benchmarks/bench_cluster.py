"""Blind clustering: recovery of a generated folder of synthetic cameras, and the time beyond the residuals.

Part 1 writes ``--cameras`` x ``--images`` synthetic JPEGs (flat-fields and dead-leaves scenes, PRNU std 0.01,
Q90, ``--small`` px square) into a temporary folder under shuffled names and runs the whole of
``spncli.cluster.cluster_images`` on it. Part 2 times what comes after the residuals (common-peak notch,
normalisation, the two pair matrix products, agglomeration) on ``--n`` synthetic residuals
(``--n/20`` cameras x 20 images, per-image PRNU strength drawn at random) of ``--size`` px square.

    OMP_NUM_THREADS=2 PYTHONPATH=$PWD python benchmarks/bench_cluster.py [--n 1000] [--size 512]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from spncli.cluster import agglomerate, cluster_images, pair_scores, prepare  # noqa: E402

cv2.setNumThreads(int(os.environ["OMP_NUM_THREADS"]))  # OpenCV's DFTs on the same cores as the matrix products
from spncli.synthetic import dead_leaves, encode_jpeg, expose, flat_field, synthetic_prnu  # noqa: E402


def score(labels, truth) -> dict:
    """Clusters that mix cameras, cameras split over clusters, images left alone."""
    labels, truth = np.asarray(labels), np.asarray(truth)
    mixed = sum(len(set(truth[labels == c])) > 1 for c in set(labels.tolist()))
    sizes = np.bincount(labels)
    alone = int((sizes[labels] == 1).sum())
    split = sum(len({lab for lab in labels[truth == t] if sizes[lab] > 1}) > 1 for t in set(truth.tolist()))
    exact = sorted(map(sorted, [np.flatnonzero(labels == c).tolist() for c in set(labels.tolist())])) == sorted(
        map(sorted, [np.flatnonzero(truth == t).tolist() for t in set(truth.tolist())])
    )
    return {"clusters": len(sizes), "mixed": mixed, "split_cameras": split, "alone": alone, "exact": exact}


def folder_recovery(cameras: int, images: int, side: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        order = rng.permutation(cameras * images)
        truth = {}
        t0 = time.perf_counter()
        for cam in range(cameras):
            k = synthetic_prnu((side, side), rng)
            for i in range(images):
                scene = flat_field((side, side), rng) if i % 2 == 0 else dead_leaves((side, side), rng, n=300)
                name = f"img_{order[cam * images + i]:04d}.jpg"
                (Path(tmp) / name).write_bytes(encode_jpeg(expose(scene, k, rng), 90))
                truth[name] = cam
        t1 = time.perf_counter()
        result = cluster_images(sorted(Path(tmp).iterdir()))
        t2 = time.perf_counter()
    labels = [im["cluster"] for im in result.images]
    true = [truth[Path(im["path"]).name] for im in result.images]
    print(
        f"folder: {cameras} cameras x {images} images, {side}x{side} JPEG Q90 (half flat-field, half dead leaves); "
        f"written in {t1 - t0:.1f} s, clustered (residuals included) in {t2 - t1:.1f} s"
    )
    print(f"  {score(labels, true)}  threshold z {result.info['z_threshold']}, null scale {result.info['null_scale']}")


def timing(n: int, side: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    per = 20
    truth = np.repeat(np.arange(n // per), per)[:n]
    ks = rng.standard_normal((n // per + 1, side * side), dtype=np.float32)
    strength = rng.uniform(0.06, 0.2, size=n).astype(np.float32)
    x = rng.standard_normal((n, side * side), dtype=np.float32)
    x += strength[:, None] * ks[truth]
    del ks
    size = (side, side)
    c0, t0 = time.process_time(), time.perf_counter()
    spectra, _ = prepare(x, size)
    t1 = time.perf_counter()
    g, q = pair_scores(x, spectra)
    t2 = time.perf_counter()
    labels, info = agglomerate(g, q, side * side)
    t3, c3 = time.perf_counter(), time.process_time()
    print(
        f"timing: {n} synthetic residuals of {side}x{side} ({n // per} cameras x {per}), "
        f"threads {os.environ.get('OMP_NUM_THREADS')}, opencv threads {cv2.getNumThreads()}"
    )
    print(
        f"  notch+normalise+spectra {t1 - t0:.1f} s, pair products {t2 - t1:.1f} s, agglomeration {t3 - t2:.1f} s"
    )
    print(
        f"  time beyond the residuals for {n:,} images on {os.environ.get('OMP_NUM_THREADS')} cores: "
        f"{t3 - t0:.1f} s wall, {c3 - c0:.1f} s CPU (all threads)"
    )
    print(f"  {score(labels, truth)}  threshold z {info['threshold']:.3f}, null scale {info['null_scale']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", type=int, default=20)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--small", type=int, default=256)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--skip-folder", action="store_true")
    args = ap.parse_args()
    if not args.skip_folder:
        folder_recovery(args.cameras, args.images, args.small, args.seed)
    timing(args.n, args.size, args.seed)


if __name__ == "__main__":
    main()
